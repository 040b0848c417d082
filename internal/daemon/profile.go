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

// ProfilePolicy says where a mount's prefetch profile may come from.
type ProfilePolicy string

// The profile policies (profile_policy in the snapshotter's config, --profile-policy).
const (
	// PolicyReferrers: a pinned profile if the operator gave one, else one found among
	// the image manifest's referrers (the referrers API, or the tag schema), chosen by
	// chooseReferrer.
	PolicyReferrers ProfilePolicy = "referrers"
	// PolicyPinned: only a profile whose digest the operator gave (ProfileChoice.Pin);
	// an image without one gets none, and the registry is not asked.
	PolicyPinned ProfilePolicy = "pinned"
	// PolicyOff: no profile; the registry is not asked.
	PolicyOff ProfilePolicy = "off"
)

// DefaultProfilePolicy is the policy of a mount and of the snapshotter unless configured;
// docs/design.md says why.
const DefaultProfilePolicy = PolicyReferrers

// ParseProfilePolicy reads a policy's name.
func ParseProfilePolicy(s string) (ProfilePolicy, error) {
	switch p := ProfilePolicy(s); p {
	case PolicyReferrers, PolicyPinned, PolicyOff:
		return p, nil
	}
	return "", fmt.Errorf("profile policy %q: want %q, %q or %q", s, PolicyReferrers, PolicyPinned, PolicyOff)
}

// ParseProfileDigest reads a pinned profile's digest: sha256:<64 hex digits>.
func ParseProfileDigest(s string) (v1.Hash, error) {
	h, err := v1.NewHash(s)
	if err != nil || h.Algorithm != "sha256" || len(h.Hex) != 64 {
		return v1.Hash{}, fmt.Errorf("profile digest %q: want sha256:<64 hex digits>", s)
	}
	return h, nil
}

// ProfileChoice is what an image's profile is chosen by: the policy, and the profile the
// operator pinned for the image, if any.
type ProfileChoice struct {
	Policy ProfilePolicy // "" is DefaultProfilePolicy
	Pin    v1.Hash       // zero: none pinned
	// Pins are profiles pinned by image manifest digest (the node's configuration), for
	// an image that Pin does not pin.
	Pins map[v1.Hash]v1.Hash
}

func (c ProfileChoice) policy() ProfilePolicy {
	if c.Policy == "" {
		return DefaultProfilePolicy
	}
	return c.Policy
}

// pinFor returns the profile pinned for the image manifest subject, if any.
func (c ProfileChoice) pinFor(subject v1.Hash) (v1.Hash, bool) {
	if c.Pin != (v1.Hash{}) {
		return c.Pin, true
	}
	p, ok := c.Pins[subject]
	return p, ok
}

// asks reports whether the choice may send the registry a request: off never does,
// pinned only with a pin (given, or among Pins).
func (c ProfileChoice) asks() bool {
	switch c.policy() {
	case PolicyOff:
		return false
	case PolicyPinned:
		return c.Pin != (v1.Hash{}) || len(c.Pins) > 0
	}
	return true
}

// Where a profile came from (Found.Source, PrefetchStats.Source).
const (
	SourcePin       = "pin"       // the operator's pin
	SourceReferrers = "referrers" // found among the image's referrers
)

// ErrProfileSubject: a profile does not refer to the image it was to be used for.
var ErrProfileSubject = errors.New("the profile does not refer to this image")

// FindProfile looks up the prefetch profile of the image manifest subject among its
// referrers (the referrers API, or the tag schema where the registry has none), chosen as
// chooseReferrer does, and reads it: its manifest and its document, both checked against
// their digests, the document parsed strictly (profile.Parse). No profile is (nil, empty
// descriptor, nil).
func FindProfile(ctx context.Context, reg *fetch.Registry, subject v1.Hash) (*profile.Profile, v1.Descriptor, error) {
	f, err := LookupProfile(ctx, reg, subject)
	return f.Profile, f.Desc, err
}

// Found is a profile LookupProfile found.
type Found struct {
	Profile *profile.Profile // the document; nil: none found
	Desc    v1.Descriptor    // the artifact manifest's descriptor
	Pack    *v1.Descriptor   // the pack's, if the profile has one
	// Source is where it came from (SourcePin, SourceReferrers); "" for none.
	Source string
	// Candidates is how many profiles the referrers listed (0 for a pin, or when they
	// were not asked).
	Candidates int
	// Why says how it was chosen, or why there is none, for the log.
	Why string

	subject *v1.Descriptor // its manifest's subject
}

// LookupProfile is FindProfile, and also says whether the profile has a pack.
func LookupProfile(ctx context.Context, reg *fetch.Registry, subject v1.Hash) (Found, error) {
	return ChooseProfile(ctx, reg, subject, ProfileChoice{Policy: PolicyReferrers})
}

// ChooseProfile returns the profile of the image manifest subject that the choice allows:
// under PolicyOff none, without a request; a pinned one, under PolicyPinned or
// PolicyReferrers, fetched by its digest from reg's repository (checked against it) and
// refused unless its subject is the image manifest (ErrProfileSubject); under
// PolicyPinned without a pin none, without a request; under PolicyReferrers without a pin,
// the one chooseReferrer picks among the image's referrers, also refused unless it refers
// to subject (the tag schema's index is a tag, which anyone with push rights can point
// anywhere).
func ChooseProfile(ctx context.Context, reg *fetch.Registry, subject v1.Hash, c ProfileChoice) (Found, error) {
	pin, pinned := c.pinFor(subject)
	switch {
	case c.policy() == PolicyOff:
		return Found{Why: "profile policy off"}, nil
	case pinned:
		where := fmt.Sprintf("pinned profile %s of %s", pin, subject)
		_, raw, err := reg.Manifest(ctx, pin)
		if err != nil {
			return Found{Desc: v1.Descriptor{Digest: pin}, Source: SourcePin}, fmt.Errorf("%s: %w", where, err)
		}
		f, err := parseProfileOf(ctx, reg, raw, subject, where)
		f.Desc = v1.Descriptor{MediaType: types.OCIManifestSchema1, ArtifactType: profile.ArtifactType, Digest: pin, Size: int64(len(raw))}
		f.Source, f.Why = SourcePin, "pinned by the operator"
		return f, err
	case c.policy() == PolicyPinned:
		return Found{Why: "profile policy pinned, and no profile pinned for the image"}, nil
	}
	refs, err := reg.Referrers(ctx, subject, profile.ArtifactType)
	if err != nil {
		return Found{}, fmt.Errorf("look up the profile of %s: %w", subject, err)
	}
	if len(refs) == 0 {
		return Found{Why: "no profile among the image's referrers"}, nil
	}
	best, why := chooseReferrer(refs, time.Now())
	where := fmt.Sprintf("profile %s of %s", best.Digest, subject)
	found := Found{Desc: best, Source: SourceReferrers, Candidates: len(refs), Why: why}
	if best.Size > maxProfileManifest {
		return found, fmt.Errorf("%s: manifest of %d bytes, more than %d: refused", where, best.Size, maxProfileManifest)
	}
	// The referrers tag index may carry the manifest itself (profile.Push embeds it there):
	// checked against the descriptor, it saves the round trip to fetch it.
	raw, err := embedded(best)
	if err != nil {
		return found, fmt.Errorf("%s: manifest: %w", where, err)
	}
	if raw == nil {
		if _, raw, err = reg.Manifest(ctx, best.Digest); err != nil {
			return found, fmt.Errorf("%s: %w", where, err)
		}
	}
	f, err := parseProfileOf(ctx, reg, raw, subject, where)
	f.Desc, f.Source, f.Candidates, f.Why = best, found.Source, found.Candidates, found.Why
	return f, err
}

// maxClockSkew is how far past the node's clock a profile's created time may be and
// still count: a time further ahead is a claim no recording made, and counts as none.
const maxClockSkew = 24 * time.Hour

// chooseReferrer picks one of the profiles the referrers list (at least one), and says
// why. The order is the registry's or the pusher's (the tag schema lists in push order),
// so it does not count: the newest by the created annotation wins, a time more than
// maxClockSkew past now counting as none (a pusher cannot claim a year far ahead to stay
// chosen over later recordings), and among equal times (or none) the greatest digest,
// which no pusher chooses. Every node with the same referrers and a clock within
// maxClockSkew of the truth picks the same.
func chooseReferrer(refs []v1.Descriptor, now time.Time) (v1.Descriptor, string) {
	created := func(d v1.Descriptor) time.Time {
		t, err := time.Parse(time.RFC3339, d.Annotations[profile.AnnotationCreated])
		if err != nil || t.After(now.Add(maxClockSkew)) {
			return time.Time{}
		}
		return t
	}
	best, bt := refs[0], created(refs[0])
	for _, d := range refs[1:] {
		t := created(d)
		if t.After(bt) || t.Equal(bt) && d.Digest.String() > best.Digest.String() {
			best, bt = d, t
		}
	}
	if len(refs) == 1 {
		return best, "the only profile among the image's referrers"
	}
	if bt.IsZero() {
		return best, fmt.Sprintf("%d profiles among the image's referrers, none with a creation time to trust: the greatest digest", len(refs))
	}
	return best, fmt.Sprintf("the newest of %d profiles among the image's referrers by creation time (%s), the greatest digest among equal times",
		len(refs), bt.UTC().Format(time.RFC3339))
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

// parseProfileOf is parseProfile for a profile that must refer to the image manifest
// subject: its manifest's subject must be subject, else ErrProfileSubject.
func parseProfileOf(ctx context.Context, reg *fetch.Registry, raw []byte, subject v1.Hash, where string) (Found, error) {
	f, err := parseProfile(ctx, reg, raw, where)
	switch {
	case err != nil:
		return f, err
	case f.subject == nil:
		return Found{}, fmt.Errorf("%s: %w: it names no subject; refused", where, ErrProfileSubject)
	case f.subject.Digest != subject:
		return Found{}, fmt.Errorf("%s: %w: its subject is %s; refused", where, ErrProfileSubject, f.subject.Digest)
	}
	return f, nil
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
	return Found{Profile: p, Pack: pack, subject: m.Subject}, nil
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
	// Policy is the profile policy the image was opened under; Source where its profile
	// came from (SourcePin, SourceReferrers; "" for none); Candidates how many profiles
	// the referrers listed; Why how it was chosen, or why there is none.
	Policy     ProfilePolicy `json:"policy,omitempty"`
	Source     string        `json:"source,omitempty"`
	Candidates int           `json:"candidates,omitempty"`
	Why        string        `json:"why,omitempty"`
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
	// Metrics, when not nil, counts the look-ups' outcomes.
	Metrics *ProfileMetrics
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
	pf := &prefetch{st: PrefetchStats{Image: im.Ref, Policy: im.choice.policy()}, done: make(chan struct{})}
	im.mu.Lock()
	im.prefetch = pf
	im.mu.Unlock()
	go func() {
		defer close(pf.done)
		start := time.Now()
		err := im.runPrefetch(im.bg, pf, log, o.Metrics)
		pf.mu.Lock()
		pf.st.Done, pf.st.Seconds = true, time.Since(start).Seconds()
		if err != nil {
			pf.st.Err = err.Error()
		}
		st := pf.st
		pf.mu.Unlock()
		switch {
		case err != nil && im.bg.Err() == nil:
			log.Warn("prefetch failed; the image is served without it", "image", im.Ref, "policy", st.Policy, "profile", st.Profile, "err", err)
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

func lookupProfile(ctx context.Context, reg *fetch.Registry, subject v1.Hash, c ProfileChoice) *profileLookup {
	l := &profileLookup{done: make(chan struct{})}
	go func() {
		defer close(l.done)
		before := reg.Stats().Requests
		l.Found, l.err = ChooseProfile(ctx, reg, subject, c)
		l.after = reg.Stats().Requests
		l.requests = l.after - before
	}()
	return l
}

func (im *Image) runPrefetch(ctx context.Context, pf *prefetch, log *slog.Logger, metrics *ProfileMetrics) error {
	l := im.lookup
	if l == nil {
		l = lookupProfile(ctx, im.Registry, im.Image.Descriptor.Digest, im.choice)
	}
	select {
	case <-l.done:
	case <-ctx.Done():
		return nil // the image was closed
	}
	im.reportChoice(l, log, metrics)
	looked := im.Registry.Stats().Requests
	if im.pack != nil {
		looked = l.after // the pack's GET went out as the image opened
	} else if l.err == nil && l.Pack != nil {
		// The image opened without waiting for the look-up (its indexes were kept, or the
		// look-up was slow): the pack still brings the chunks, in one request.
		im.pack = newPack(im.bg, im.Registry, *l.Pack, nil, log) // for its chunks alone
	}
	p, desc, err := l.Profile, l.Desc, l.err
	pf.mu.Lock()
	pf.st.LookupRequests = l.requests
	pf.st.Source, pf.st.Candidates, pf.st.Why = l.Source, l.Candidates, l.Why
	if l.err == nil && l.Profile != nil {
		pf.st.Profile = l.Desc.Digest.String()
	}
	pf.mu.Unlock()
	if err != nil {
		return err
	}
	if p == nil {
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
	runs := im.profiledRuns(wants)
	if im.pack != nil {
		err := im.prefetchPacked(ctx, per, runs)
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
			// The header runs of the profiled files come in the same Fetch, each before
			// its file's first chunk; what that Fetch did not bring (the chunks were
			// local) comes after it.
			if err := l.store.Prefetch(gctx, &checkingSource{l: l, runs: runs[i]}, ws...); err != nil {
				return fmt.Errorf("layer %s: %w", l.Desc.Digest, err)
			}
			l.prefetchRuns(gctx, runs[i])
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

// reportChoice logs, once per image, which profile the look-up l chose, or why there is
// none (a refused one is in Prefetch's warning, with its error), and counts the outcome.
func (im *Image) reportChoice(l *profileLookup, log *slog.Logger, metrics *ProfileMetrics) {
	policy := im.choice.policy()
	outcome := outcomeOf(l.Found, l.err)
	metrics.observe(policy, outcome)
	attrs := []any{"image", im.Ref, "digest", im.Image.Descriptor.Digest.String(), "policy", policy, "outcome", outcome,
		"candidates", l.Candidates, "why", l.Why, "lookup_requests", l.requests}
	switch {
	case l.err != nil:
		// Prefetch warns of it, with the error, once.
	case l.Profile == nil:
		log.Info("no prefetch profile", attrs...)
	default:
		log.Info("profile chosen", append(attrs, "profile", l.Desc.Digest.String(), "source", l.Source)...)
	}
}
