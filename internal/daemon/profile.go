package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"

	"lazypull/internal/fetch"
	"lazypull/internal/profile"
	"lazypull/internal/store"
)

// maxProfileManifest bounds the artifact manifest of a profile: one config, one layer.
const maxProfileManifest = 64 << 10

// FindProfile looks up the newest prefetch profile of the image manifest subject among its
// referrers (the referrers API, or the tag schema where the registry has none) and reads
// it: its manifest and its document, both checked against their digests, the document
// parsed strictly (profile.Parse). No profile is (nil, empty descriptor, nil).
func FindProfile(ctx context.Context, reg *fetch.Registry, subject v1.Hash) (*profile.Profile, v1.Descriptor, error) {
	f, err := LookupProfile(ctx, reg, subject)
	return f.Profile, f.Desc, err
}

// Found is a profile LookupProfile found.
type Found struct {
	Profile *profile.Profile // the document; nil: none found
	Desc    v1.Descriptor    // the artifact manifest's descriptor
	Pack    *v1.Descriptor   // the pack's, if the profile has one
}

// LookupProfile is FindProfile, and also says whether the profile has a pack.
func LookupProfile(ctx context.Context, reg *fetch.Registry, subject v1.Hash) (Found, error) {
	refs, err := reg.Referrers(ctx, subject, profile.ArtifactType)
	if err != nil {
		return Found{}, fmt.Errorf("look up the profile of %s: %w", subject, err)
	}
	if len(refs) == 0 {
		return Found{}, nil
	}
	// The newest: RFC 3339 UTC times sort as strings; among equals (or none), the last
	// listed, which the tag schema appends.
	best := refs[0]
	for _, d := range refs[1:] {
		if d.Annotations[profile.AnnotationCreated] >= best.Annotations[profile.AnnotationCreated] {
			best = d
		}
	}
	where := fmt.Sprintf("profile %s of %s", best.Digest, subject)
	if best.Size > maxProfileManifest {
		return Found{Desc: best}, fmt.Errorf("%s: manifest of %d bytes, more than %d: refused", where, best.Size, maxProfileManifest)
	}
	// The referrers tag index may carry the manifest itself (profile.Push embeds it there):
	// checked against the descriptor, it saves the round trip to fetch it.
	raw, err := embedded(best)
	if err != nil {
		return Found{Desc: best}, fmt.Errorf("%s: manifest: %w", where, err)
	}
	if raw == nil {
		if _, raw, err = reg.Manifest(ctx, best.Digest); err != nil {
			return Found{Desc: best}, fmt.Errorf("%s: %w", where, err)
		}
	}
	f, err := parseProfile(ctx, reg, raw, where)
	f.Desc = best
	return f, err
}

// ErrNotProfile: a manifest is not a lazypull profile artifact.
var ErrNotProfile = errors.New("not a lazypull profile artifact")

// ReadProfile reads the profile artifact whose manifest has the given digest in reg's
// repository (what `lazypull profile` prints): its manifest and document, both checked
// against their digests, the document parsed strictly. A manifest that is not a profile's
// gives an error wrapping ErrNotProfile.
func ReadProfile(ctx context.Context, reg *fetch.Registry, digest v1.Hash) (*profile.Profile, error) {
	return readProfile(ctx, reg, digest, "profile "+digest.String())
}

func readProfile(ctx context.Context, reg *fetch.Registry, digest v1.Hash, where string) (*profile.Profile, error) {
	_, raw, err := reg.Manifest(ctx, digest)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	f, err := parseProfile(ctx, reg, raw, where)
	return f.Profile, err
}

// parseProfile reads the profile whose artifact manifest is raw (checked against its
// digest already): its document, embedded or from the registry, parsed strictly, and its
// pack's descriptor. The pack is the optional second layer.
func parseProfile(ctx context.Context, reg *fetch.Registry, raw []byte, where string) (Found, error) {
	if len(raw) > maxProfileManifest {
		return Found{}, fmt.Errorf("%s: manifest of %d bytes, more than %d: %w", where, len(raw), maxProfileManifest, ErrNotProfile)
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return Found{}, fmt.Errorf("%s: manifest: %w", where, err)
	}
	if m.ArtifactType != profile.ArtifactType || len(m.Layers) < 1 || len(m.Layers) > 2 || m.Layers[0].MediaType != types.MediaType(profile.MediaType) ||
		len(m.Layers) == 2 && m.Layers[1].MediaType != types.MediaType(profile.PackMediaType) {
		return Found{}, fmt.Errorf("%s: %w (artifactType %q, %d layers)", where, ErrNotProfile, m.ArtifactType, len(m.Layers))
	}
	var pack *v1.Descriptor
	if len(m.Layers) == 2 {
		pack = &m.Layers[1]
		if pack.Size > profile.MaxPack || pack.Size < 0 || pack.Digest.Algorithm != "sha256" {
			return Found{}, fmt.Errorf("%s: pack %s of %d bytes: want a sha256 digest and at most %d bytes; refused", where, pack.Digest, pack.Size, profile.MaxPack)
		}
	}
	doc := m.Layers[0]
	if doc.Size > profile.MaxSize || doc.Size < 0 {
		return Found{}, fmt.Errorf("%s: document of %d bytes, more than %d: %w; refused", where, doc.Size, profile.MaxSize, profile.ErrTooLarge)
	}
	b, err := embedded(doc)
	if err != nil {
		return Found{}, fmt.Errorf("%s: document: %w", where, err)
	}
	if b == nil {
		if b, err = reg.Blob(doc.Digest, doc.Size).ReadAll(ctx); err != nil {
			return Found{}, fmt.Errorf("%s: document: %w", where, err)
		}
	}
	p, err := profile.Parse(b)
	if err != nil {
		return Found{}, fmt.Errorf("%s: %w", where, err)
	}
	return Found{Profile: p, Pack: pack}, nil
}

// embedded returns what d carries in its data field, checked against d's size and digest;
// nil if it carries none: the document in a profile manifest's layer (profile.Manifest
// embeds small ones), the profile manifest in the referrers tag index (profile.Push).
func embedded(d v1.Descriptor) ([]byte, error) {
	if len(d.Data) == 0 || d.Digest.Algorithm != "sha256" {
		return nil, nil // none, or not checkable here: the blob is fetched
	}
	if int64(len(d.Data)) != d.Size {
		return nil, fmt.Errorf("embedded data of %d bytes, the descriptor says %d", len(d.Data), d.Size)
	}
	h, _, err := v1.SHA256(bytes.NewReader(d.Data))
	if err != nil {
		return nil, err
	}
	if h != d.Digest {
		return nil, fmt.Errorf("embedded data has digest %s, the descriptor says %s", h, d.Digest)
	}
	return d.Data, nil
}

// PrefetchStats says what a mount's prefetch did.
type PrefetchStats struct {
	Image   string `json:"image"`
	Profile string `json:"profile,omitempty"` // digest of the profile's manifest; "" if none
	Pack    bool   `json:"pack,omitempty"`    // the layer indexes and chunks came in the profile's pack
	Files   int    `json:"files"`             // profiled files found in the image
	Stale   int    `json:"stale"`             // profiled files no longer in it, skipped
	Bytes   int64  `json:"bytes"`             // bytes the profile's ranges cover
	// LookupRequests went to finding and reading the profile, Requests to fetching its
	// chunks (as the registry counted them: only this image read meanwhile, or they
	// include the workload's).
	LookupRequests int64   `json:"lookup_requests"`
	Requests       int64   `json:"requests"`
	Seconds        float64 `json:"seconds"`
	Done           bool    `json:"done"`
	Err            string  `json:"error,omitempty"`
}

// prefetch is an image's prefetch in progress.
type prefetch struct {
	mu   sync.Mutex
	st   PrefetchStats
	done chan struct{}
}

// PrefetchOptions configures Image.Prefetch.
type PrefetchOptions struct {
	// Wait is how long Prefetch waits for the profiled chunks before returning; 0 returns
	// at once (the fetch goes on in the background). A prefetch that outlasts Wait goes
	// on in the background all the same.
	Wait time.Duration
	Log  *slog.Logger
}

// Prefetch looks up the image's profile and fetches the chunks of its ranges first, all
// layers at once, each layer's chunks in one store.Prefetch (one coalesced Fetch: a few
// large parallel requests). Reads that need a chunk meanwhile wait for its fetch. A
// missing, corrupt or oversized profile is logged and the image works without it. The
// prefetch ends with the image (Close).
func (im *Image) Prefetch(ctx context.Context, o PrefetchOptions) {
	log := o.Log
	if log == nil {
		log = slog.Default()
	}
	pf := &prefetch{st: PrefetchStats{Image: im.Ref}, done: make(chan struct{})}
	im.mu.Lock()
	im.prefetch = pf
	im.mu.Unlock()
	go func() {
		defer close(pf.done)
		start := time.Now()
		err := im.runPrefetch(im.bg, pf, log)
		pf.mu.Lock()
		pf.st.Done, pf.st.Seconds = true, time.Since(start).Seconds()
		if err != nil {
			pf.st.Err = err.Error()
		}
		st := pf.st
		pf.mu.Unlock()
		switch {
		case err != nil && im.bg.Err() == nil:
			log.Warn("prefetch failed; the image is served without it", "image", im.Ref, "err", err)
		case st.Profile != "":
			log.Info("prefetched the profile", "image", im.Ref, "profile", st.Profile, "files", st.Files, "stale", st.Stale,
				"bytes", st.Bytes, "requests", st.Requests, "seconds", st.Seconds)
		}
	}()
	im.WaitPrefetch(ctx, o.Wait, log)
}

// WaitPrefetch waits up to d for the prefetch Prefetch started to end; it returns at once
// if there is none or d is not positive.
func (im *Image) WaitPrefetch(ctx context.Context, d time.Duration, log *slog.Logger) {
	im.mu.Lock()
	pf := im.prefetch
	im.mu.Unlock()
	if pf == nil || d <= 0 {
		return
	}
	if log == nil {
		log = slog.Default()
	}
	if !within(ctx, pf.done, d) && ctx.Err() == nil {
		log.Info("prefetch still running after the wait; going on in the background", "image", im.Ref, "wait", d)
	}
}

// PrefetchStats returns the prefetch's figures, and false if there was none.
func (im *Image) PrefetchStats() (PrefetchStats, bool) {
	im.mu.Lock()
	pf := im.prefetch
	im.mu.Unlock()
	if pf == nil {
		return PrefetchStats{}, false
	}
	pf.mu.Lock()
	defer pf.mu.Unlock()
	return pf.st, true
}

// plan finds the profile's files in the image (profile.Plan): per layer, the ranges of
// their content to fetch first, in the profile's order; the files found, the paths of
// those that were not, and the bytes the ranges cover.
func (im *Image) plan(p *profile.Profile) (per [][]store.Want, wants []profile.Want, stale []string, bytes int64, err error) {
	layers := make([]profile.Layer, len(im.Layers))
	for i, l := range im.Layers {
		layers[i] = profile.Layer{Digest: l.Desc.Digest.String(), Index: l.Index}
	}
	wants, stale = p.Plan(layers)
	per = make([][]store.Want, len(im.Layers))
	for _, w := range wants {
		f, err := im.Layers[w.Layer].file(w.Entry)
		if err != nil {
			return nil, nil, nil, 0, err
		}
		for _, r := range w.Ranges {
			per[w.Layer] = append(per[w.Layer], store.Want{File: f, Off: r.Off, Len: r.Len})
			bytes += r.Len
		}
	}
	return per, wants, stale, bytes, nil
}

// profileLookup is a FindProfile running in the background.
type profileLookup struct {
	done chan struct{}
	Found
	err      error
	requests int64 // the registry's requests while it ran (others' included)
	after    int64 // the registry's requests when it ended
}

func lookupProfile(ctx context.Context, reg *fetch.Registry, subject v1.Hash) *profileLookup {
	l := &profileLookup{done: make(chan struct{})}
	go func() {
		defer close(l.done)
		before := reg.Stats().Requests
		l.Found, l.err = LookupProfile(ctx, reg, subject)
		l.after = reg.Stats().Requests
		l.requests = l.after - before
	}()
	return l
}

func (im *Image) runPrefetch(ctx context.Context, pf *prefetch, log *slog.Logger) error {
	l := im.lookup
	if l == nil {
		l = lookupProfile(ctx, im.Registry, im.Image.Descriptor.Digest)
	}
	select {
	case <-l.done:
	case <-ctx.Done():
		return nil // the image was closed
	}
	looked := im.Registry.Stats().Requests
	if im.pack != nil {
		looked = l.after // the pack's GET went out as the image opened
	} else if l.err == nil && l.Pack != nil {
		// The image opened without waiting for the look-up (its indexes were kept, or the
		// look-up was slow): the pack still brings the chunks, in one request.
		im.pack = newPack(im.bg, im.Registry, *l.Pack, log)
	}
	p, desc, err := l.Profile, l.Desc, l.err
	pf.mu.Lock()
	pf.st.LookupRequests = l.requests
	pf.mu.Unlock()
	if err != nil {
		return err
	}
	if p == nil {
		log.Debug("no prefetch profile", "image", im.Ref)
		return nil
	}
	per, wants, stale, bytes, err := im.plan(p)
	if err != nil {
		return err
	}
	if len(stale) > 0 {
		ex := stale[:min(len(stale), 5)]
		log.Warn("profile names files the image no longer has; skipping them", "image", im.Ref, "profile", desc.Digest,
			"stale", len(stale), "of", len(p.Files), "first", strings.Join(ex, ", "))
	}
	for _, ws := range per {
		for _, w := range ws {
			im.lease.Pin(w.File) // what the workload reads at start stays while the image is mounted
		}
	}
	for _, w := range wants {
		im.Layers[w.Layer].profile(w.Entry, w.Ranges[len(w.Ranges)-1].End())
	}
	pf.mu.Lock()
	pf.st.Profile, pf.st.Files, pf.st.Stale, pf.st.Bytes = desc.Digest.String(), len(wants), len(stale), bytes
	pf.st.Pack = im.pack != nil
	pf.mu.Unlock()
	if im.pack != nil {
		err := im.prefetchPacked(ctx, per)
		pf.mu.Lock()
		pf.st.Requests = im.Registry.Stats().Requests - looked
		pf.mu.Unlock()
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	for i, ws := range per {
		if len(ws) == 0 {
			continue
		}
		l := im.Layers[i]
		g.Go(func() error {
			if err := l.store.Prefetch(gctx, blobSource{l.blob}, ws...); err != nil {
				return fmt.Errorf("layer %s: %w", l.Desc.Digest, err)
			}
			return nil
		})
	}
	err = g.Wait()
	pf.mu.Lock()
	pf.st.Requests = im.Registry.Stats().Requests - looked
	pf.mu.Unlock()
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil // the image was closed
	}
	return err
}
