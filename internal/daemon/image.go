package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sync/errgroup"

	"lazypull/format"
	"lazypull/internal/fetch"
	"lazypull/internal/fusefs"
	"lazypull/internal/store"
)

// Image is a lazypull image opened from its registry: manifest and layer indexes read,
// file content still in the registry until something reads it.
type Image struct {
	Ref      string
	Image    *fetch.Image
	Registry *fetch.Registry
	Layers   []*Layer
	// indexed are the layers of an image with no lazypull layer, served from its index
	// artifact (indexed.go); Layers is then empty. noIndex: the snapshotter's open looked
	// for the artifact and found none.
	indexed []*indexedLayer
	noIndex bool
	// Failed holds, by layer digest, the layers an image opened for the snapshotter left
	// out: not lazypull layers, or their index could not be read. See openImage.
	Failed map[string]error

	lease  *store.Lease
	log    *slog.Logger       // OpenOptions.Log
	bg     context.Context    // background work (read-ahead, prefetch); ends with Close
	cancel context.CancelFunc // ends background work

	// prefetch is the image's prefetch: the profile look-up openImage started, the
	// profile's pack, and the prefetch Prefetch starts.
	prefetch *prefetcher
	// kept are the waits for the manifest and indexes openImage fetched to be stored
	// (waitKept).
	kept []func()
	// reading counts the reads of the image's files in progress; a background fill
	// yields to them.
	reading atomic.Int64

	crossOnce sync.Once // linkAcrossLayers, for a merged view (FSLayers)

	noSpeculation bool          // OpenOptions.NoSpeculation
	minRTT        time.Duration // OpenOptions.SpeculateMinRTT
	elf           elfWalk       // what programs read need (elfspec.go)
	helperIx      helperIndex   // the image's executables by name (helpers.go)

	mu   sync.Mutex
	fill *filler // BackgroundFetch's, when it ran
}

// indexJobs bounds the layer indexes read at once when an image is opened.
const indexJobs = 8

// OpenOptions says how an image is opened (OpenImage).
type OpenOptions struct {
	// Platform picks the image manifest when the reference names an index; nil is the
	// node's platform (fetch.Registry.Resolve).
	Platform *v1.Platform
	// Profile, when not nil, is what the image's profile is chosen by (ChooseProfile), for
	// an image Prefetch is to run on: the profile is looked up as the image opens, and
	// its pack, when it has one, brings the layer indexes and the prefetch in one
	// request. Under PolicyOff, or PolicyPinned without a pin, no look-up is made. Nil:
	// none as the image opens (Prefetch then looks up under DefaultProfilePolicy).
	Profile *ProfileChoice
	// Client is the node's registry client, which the image's Registry is opened from
	// (fetch.Client.Open). It must not be nil.
	Client *fetch.Client
	// Log receives the image's log lines: its layers' (refused entries and layers), its
	// prefetch's and its fill's unless their options name another logger. Nil discards
	// them.
	Log *slog.Logger

	// IndexPolicy says where the index artifact of an image with no lazypull layer may
	// come from (indexed.go): PolicyReferrers, among its referrers; PolicyPinned and
	// PolicyOff, nowhere (no index is pinned), without a request. "" is
	// DefaultProfilePolicy. The snapshotter's partial open looks too
	// (openFromIndexPartial), layer by layer.
	IndexPolicy ProfilePolicy

	// NoSpeculation turns off what a read that misses fetches beyond what it asks for:
	// the small files next to it in its directory (speculate.go), what a program needs
	// (elfspec.go) and the rest of a program the walk cannot read (Layer.fetchWhole).
	// Read-ahead of a file read in a row stays.
	NoSpeculation bool
	// SpeculateMinRTT: that speculation applies only while the registry's round trip
	// (fetch.Registry.RoundTrip) is at least this long, or not measured yet. Below it, a
	// round trip costs less than the bytes a guess may waste (a registry on loopback or
	// on the node's LAN): a read fetches what it asks for, and read-ahead. 0: always
	// (DefaultSpeculateMinRTT is the nodes' default).
	SpeculateMinRTT time.Duration

	// noIndex: the image was found to have no index artifact moments ago (the
	// snapshotter's open of its layer before): the partial open does not look again.
	noIndex bool
	// manifest, when not nil, is the reference's image manifest, already verified
	// (warmImage): it is not fetched again, and is kept in the store as a fetched one is
	// once a layer opened; an open of it that opens no layer at all fails.
	manifest *fetch.Image
	// partial: a layer that is not a lazypull layer or whose index cannot be read
	// (missing, corrupt, not matching its annotations) does not fail the image: it is
	// left out of Layers and its error kept in Failed (the snapshotter's open).
	partial bool
}

// OpenImage resolves ref in its registry and reads the index of every layer (one request
// each, in parallel). Every layer must be a lazypull layer. What the image's files need is
// pinned in st until Close.
func OpenImage(ctx context.Context, st *store.Store, ref string, o OpenOptions) (*Image, error) {
	o.manifest, o.partial = nil, false
	im, err := openImage(ctx, st, ref, o)
	if err == nil {
		im.waitKept()
	}
	return im, err
}

// openImage is OpenImage without waiting for what it fetched to be stored (waitKept), and
// with the snapshotter's modes (o.partial, o.manifest). Partially, only a failure of the
// image itself (manifest, registry, credentials) fails the open: the snapshotter unpacks a
// failed layer the ordinary way and still mounts the others. With a choice that asks the
// registry (ProfileChoice.asks), the image's prefetch profile is looked up while the
// manifest and the layer indexes are read (Prefetch uses it): a reference by digest names
// the profile's subject already, and the prefetch needs both.
func openImage(ctx context.Context, st *store.Store, ref string, o OpenOptions) (*Image, error) {
	choice, given, partial := o.Profile, o.manifest, o.partial
	var c ProfileChoice
	if choice != nil {
		c = *choice
	}
	lookup := choice != nil && c.asks()
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.Client == nil {
		return nil, fmt.Errorf("image %s: no registry client", ref)
	}
	reg, err := o.Client.Open(ref)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	bg, cancel := context.WithCancel(context.Background())
	var early *profileLookup
	if lookup {
		early = lookupEarly(bg, reg, ref, c)
	}
	img, fetched, err := given, true, nil
	if given == nil {
		img, fetched, err = resolve(ctx, st, reg, ref, o.Platform)
	}
	if err != nil {
		cancel()
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	var kept []func()
	if fetched && given == nil {
		// A manifest handed in is kept below, once a layer opened: kept, it would let a
		// Prepare after a failed warm open skip the request that reports the failure once.
		kept = append(kept, keepManifest(st, log, img, ref))
	}
	im := &Image{Ref: ref, Image: img, Registry: reg, Layers: make([]*Layer, len(img.Manifest.Layers)), lease: st.NewLease(), log: log, bg: bg, cancel: cancel,
		noSpeculation: o.NoSpeculation, minRTT: o.SpeculateMinRTT}
	pf := &prefetcher{im: im, choice: c}
	im.prefetch = pf
	if lookup {
		pf.lookup = lookupOf(bg, reg, early, img.Descriptor.Digest, c)
	}
	if pf.lookup != nil && !indexesKept(st, img.Manifest.Layers) &&
		slices.ContainsFunc(img.Manifest.Layers, func(d v1.Descriptor) bool { return format.IsLayer(d.Annotations) }) {
		// Layers whose indexes the store keeps open without the registry; only when one
		// does not is the pack worth waiting for. Its chunks serve the prefetch either
		// way (prefetcher.run). An image without lazypull layers has no pack (its
		// layers' indexes are its index artifact's): the look-up of that artifact goes
		// at once, sharing the profile look-up's referrers listing (fetch.Referrers).
		pf.pack = pf.awaitPack(ctx, st)
	}
	im.kept = kept
	if !partial && given == nil {
		ok, err := im.openFromIndex(ctx, st, o.IndexPolicy)
		if err != nil || ok {
			if err != nil {
				im.Close()
			}
			return im, err
		}
	}
	failed, err := im.openLayers(ctx, st, pf.pack, partial)
	if err != nil {
		im.Close()
		return nil, err
	}
	if partial && given != nil && !slices.ContainsFunc(im.Layers, func(l *Layer) bool { return l != nil }) {
		// Not one layer opened, from a manifest handed in (Warm): that is the image's
		// failure (most often its registry refusing the snapshotter), which a Prepare then
		// meets itself when it fetches the manifest, and reports once for all the layers.
		for _, err := range failed {
			if err != nil && !errors.Is(err, ErrNotLazy) {
				im.Close()
				return nil, err
			}
		}
	}
	if given != nil {
		im.kept = append(im.kept, keepManifest(st, log, img, ref))
	}
	if partial {
		im.leaveOut(failed)
		if !o.noIndex {
			im.openFromIndexPartial(ctx, st, o.IndexPolicy)
		}
	}
	return im, nil
}

// openLayers opens the image's layers (openLayer), indexJobs at once, their indexes from
// the store, the pack pk (when not nil) or the registry, into im.Layers. Partially, a
// layer that fails is left nil, its error in failed; else it fails them all.
func (im *Image) openLayers(ctx context.Context, st *store.Store, pk *pack, partial bool) (failed []error, err error) {
	var keptMu sync.Mutex
	descs := im.Image.Manifest.Layers
	failed = make([]error, len(descs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(indexJobs)
	for i, desc := range descs {
		if partial && !format.IsLayer(desc.Annotations) {
			failed[i] = fmt.Errorf("layer %s: %w", desc.Digest, ErrNotLazy)
			continue
		}
		g.Go(func() error {
			l, wait, err := openLayer(gctx, im, st, desc, pk)
			if wait != nil {
				keptMu.Lock()
				im.kept = append(im.kept, wait)
				keptMu.Unlock()
			}
			if err != nil {
				err = fmt.Errorf("image %s: %w", im.Ref, err)
				if partial && ctx.Err() == nil {
					failed[i] = err
					return nil
				}
				return err
			}
			im.Layers[i] = l
			return nil
		})
	}
	return failed, g.Wait()
}

// leaveOut leaves the layers that failed to open out of im.Layers, their errors in
// im.Failed by layer digest.
func (im *Image) leaveOut(failed []error) {
	im.Layers = slices.DeleteFunc(im.Layers, func(l *Layer) bool { return l == nil })
	for i, err := range failed {
		if err != nil {
			if im.Failed == nil {
				im.Failed = map[string]error{}
			}
			im.Failed[im.Image.Manifest.Layers[i].Digest.String()] = err
		}
	}
}

// indexesKept reports whether st keeps the index of every lazypull layer of layers.
func indexesKept(st *store.Store, layers []v1.Descriptor) bool {
	for _, d := range layers {
		if !format.IsLayer(d.Annotations) {
			continue
		}
		loc, err := format.LocationFromAnnotations(d.Annotations)
		if err != nil || !st.HasMeta(loc.Digest) {
			return false
		}
	}
	return true
}

// within waits up to d for done to close, and says whether it did (false: d passed, or
// ctx ended).
func within(ctx context.Context, done <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

// waitKept waits until what openImage fetched (manifest, indexes) is stored.
func (im *Image) waitKept() {
	for _, w := range im.kept {
		w()
	}
	im.kept = nil
}

// FSLayers returns the layers as the filesystem takes them, lowest first.
func (im *Image) FSLayers() []fusefs.Layer {
	im.crossOnce.Do(im.linkAcrossLayers)
	if len(im.indexed) > 0 {
		out := make([]fusefs.Layer, len(im.indexed))
		for i, l := range im.indexed {
			out[i] = fusefs.Layer{Index: l.Index, Content: l}
		}
		return out
	}
	out := make([]fusefs.Layer, len(im.Layers))
	for i, l := range im.Layers {
		out[i] = fusefs.Layer{Index: l.Index, Content: l}
	}
	return out
}

// NumLayers returns the number of layers the image serves: its lazypull layers, or the
// layers served from its index artifact.
func (im *Image) NumLayers() int { return len(im.Layers) + len(im.indexed) }

// FSLayer returns layer i (lowest first) alone, as the filesystem takes it, and false if
// there is no such layer.
func (im *Image) FSLayer(i int) (fusefs.Layer, bool) {
	switch {
	case i < 0 || i >= im.NumLayers():
		return fusefs.Layer{}, false
	case len(im.indexed) > 0:
		return fusefs.Layer{Index: im.indexed[i].Index, Content: im.indexed[i]}, true
	}
	return fusefs.Layer{Index: im.Layers[i].Index, Content: im.Layers[i]}, true
}

// Close stops the image's background work and unpins what its files hold in the store.
func (im *Image) Close() {
	im.cancel()
	im.lease.Release()
}

// LogValue describes the image in one log attribute.
func (im *Image) LogValue() slog.Value {
	files := 0
	for _, l := range im.FSLayers() {
		files += len(l.Index.Entries)
	}
	attrs := []slog.Attr{slog.String("ref", im.Ref), slog.String("digest", im.Image.Descriptor.Digest.String()),
		slog.Int("layers", im.NumLayers()), slog.Int("entries", files)}
	if len(im.indexed) > 0 {
		attrs = append(attrs, slog.Bool("from_index", true))
	}
	if rtt, ok := im.roundTrip(); ok {
		// Whether a miss speculates (OpenOptions.SpeculateMinRTT) goes by it.
		attrs = append(attrs, slog.Duration("registry_rtt", rtt))
	}
	return slog.GroupValue(attrs...)
}

// roundTrip is the registry's measured round trip (fetch.Registry.RoundTrip); not ok
// before one was measured, or without a registry.
func (im *Image) roundTrip() (time.Duration, bool) {
	if im.Registry == nil {
		return 0, false
	}
	return im.Registry.RoundTrip()
}
