package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"slices"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/format"
	"lazypull/internal/fetch"
	"lazypull/internal/imageindex"
	"lazypull/internal/store"
)

// The snapshotter's side of an unconverted image with an index artifact (indexed.go): its
// open finds the artifact under the profile policy, as `lazypull mount` does, and each
// layer is then mounted from its index like a converted layer, bound to what containerd
// unpacks by the diff ID.
//
// What binds an index to the layer containerd expects: the image config (covered by the
// manifest digest the pull's labels name) gives each layer its diff ID; the artifact
// layer names the image layer by digest and the diff ID it was built from
// (imageindex.AnnotationDiffID), which must be the config's; and containerd prepares the
// layer's snapshot under its chain ID (label containerd.io/snapshot.ref), the chain of the
// config's diff IDs up to the layer, which must be the chain of the layer's position in
// the image. A layer whose index fails any of these is downloaded whole, after one line
// saying why.

// LabelChainID is the label containerd's unpacker gives Prepare for a layer: the chain ID
// of the snapshot the layer becomes (snapshots.LabelSnapshotRef).
const LabelChainID = "containerd.io/snapshot.ref"

// chainIDs returns the chain ID of each layer of an image whose diff IDs are ids (OCI
// image spec: the first layer's is its diff ID, each next one the sha256 of the chain
// before it, a space and its diff ID).
func chainIDs(ids []v1.Hash) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		if i == 0 {
			out[i] = id.String()
			continue
		}
		out[i] = fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(out[i-1]+" "+id.String())))
	}
	return out
}

// configDiffIDs reads the image config's diff IDs, one per layer: from the store's
// metadata when it keeps the config, else from the registry (then kept, for a mount again
// without the registry: im.kept).
func (im *Image) configDiffIDs(ctx context.Context, st *store.Store) ([]v1.Hash, error) {
	cd := im.Image.Manifest.Config
	raw, fetched, err := im.rawConfig(ctx, st, fetch.MaxReadAll)
	if fetched {
		im.kept = append(im.kept, keepMeta(st, im.log, raw, "cannot keep the image config in the store; the image will need its registry to be mounted again", "image", im.Ref))
	}
	if err != nil {
		return nil, fmt.Errorf("image %s: config %s: %w", im.Ref, cd.Digest, err)
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("image %s: config %s: %w", im.Ref, cd.Digest, err)
	}
	if n := len(cfg.RootFS.DiffIDs); n != len(im.Image.Manifest.Layers) {
		return nil, fmt.Errorf("image %s: the config lists %d diff IDs for %d layers", im.Ref, n, len(im.Image.Manifest.Layers))
	}
	return cfg.RootFS.DiffIDs, nil
}

// openIndexedLayers opens the image's layers from its index artifact m (findIndex), by
// position: layers[i] is image layer i served from its index blob, or nil with errs[i]
// saying why (the artifact's blob for it names another layer or another diff ID than the
// config's, cannot be read or decoded, or its window blob is missing or wrong). indexJobs blobs are read at once, each whole (at
// most imageindex.MaxLayerSize, checked against its digest), while the config is. Files
// are read through st (indexed_store.go, indexed_large.go).
func (im *Image) openIndexedLayers(ctx context.Context, st *store.Store, m *v1.Manifest, art v1.Descriptor) (layers []*indexedLayer, errs []error) {
	descs := im.Image.Manifest.Layers
	layers, errs = make([]*indexedLayer, len(descs)), make([]error, len(descs))
	fail := func(err error) ([]*indexedLayer, []error) {
		for i := range errs {
			errs[i] = err
		}
		return layers, errs
	}
	windows, err := windowBlobs(m, descs)
	if err != nil {
		return fail(fmt.Errorf("image %s: index %s: %w", im.Ref, art.Digest, err))
	}
	// The config is read while the index blobs are: one round trip less before the
	// layers open. A blob whose diff ID is not the config's is then dropped.
	var ids []v1.Hash
	var idsErr error
	idsDone := make(chan struct{})
	go func() {
		defer close(idsDone)
		ids, idsErr = im.configDiffIDs(ctx, st)
	}()
	var wg sync.WaitGroup
	sem := make(chan struct{}, indexJobs)
	for i, desc := range descs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			l, err := openIndexedLayer(ctx, im, desc, m.Layers[i], windows[i])
			if err != nil {
				errs[i] = fmt.Errorf("image %s: index %s: layer %d %s: %w", im.Ref, art.Digest, i, desc.Digest, err)
				return
			}
			layers[i] = l
		}()
	}
	wg.Wait()
	<-idsDone
	if idsErr != nil {
		clear(layers)
		return fail(idsErr)
	}
	chains := chainIDs(ids)
	for i, desc := range descs {
		if got := m.Layers[i].Annotations[imageindex.AnnotationDiffID]; got != ids[i].String() {
			layers[i] = nil
			errs[i] = fmt.Errorf("image %s: index %s: layer %d %s: the index was built from a tar stream of digest %q, the image config's diff ID is %s: not used",
				im.Ref, art.Digest, i, desc.Digest, got, ids[i])
			continue
		}
		if l := layers[i]; l != nil {
			l.store, l.diffID, l.chainID = st, ids[i].String(), chains[i]
		}
	}
	return layers, errs
}

// openFromIndexPartial is the snapshotter's open of an image none of whose layers is a
// lazypull layer (openImage, partial): under policy, its index artifact serves the layers
// it can (im.indexed), and im.Failed keeps why each other layer is downloaded whole. With
// no artifact the layers stay ErrNotLazy (the ordinary path, quietly) after one log line.
func (im *Image) openFromIndexPartial(ctx context.Context, st *store.Store, policy ProfilePolicy) {
	descs := im.Image.Manifest.Layers
	if len(descs) == 0 || slices.ContainsFunc(descs, func(d v1.Descriptor) bool { return format.IsLayer(d.Annotations) }) {
		return
	}
	if policy == "" {
		policy = DefaultProfilePolicy
	}
	m, art, err := findIndex(ctx, im.Registry, im.Image.Descriptor.Digest, policy)
	if err == nil && m == nil {
		im.noIndex = true
		im.log.Info("image has no lazypull layers and no index artifact: its layers are downloaded whole", "image", im.Ref, "policy", policy)
		return
	}
	var layers []*indexedLayer
	errs := make([]error, len(descs))
	if err != nil {
		for i := range errs {
			errs[i] = fmt.Errorf("image %s: %w", im.Ref, err)
		}
	} else {
		layers, errs = im.openIndexedLayers(ctx, st, m, art)
	}
	if im.Failed == nil {
		im.Failed = map[string]error{}
	}
	for i, l := range layers {
		if l != nil {
			im.indexed = append(im.indexed, l)
			delete(im.Failed, descs[i].Digest.String())
		}
	}
	for i, err := range errs {
		if err != nil {
			im.Failed[descs[i].Digest.String()] = err
		}
	}
	if len(im.indexed) > 0 {
		im.log.Info("image opened from its index artifact", "image", im.Ref, "index", art.Digest, "layers", len(im.indexed), "of", len(descs))
	}
}

// indexedLayerOf returns the layer of the image served from its index artifact that has
// the digest and whose chain ID is chain, the one containerd prepares its snapshot as
// (LabelChainID); nil, nil when the image serves no such layer from an index. A layer of
// that digest at another place in the chain is an error: containerd would get the layer
// under another layer's snapshot.
func (im *Image) indexedLayerOf(digest, chain string) (*indexedLayer, error) {
	var other *indexedLayer
	for _, l := range im.indexed {
		if l.Desc.Digest.String() != digest {
			continue
		}
		if l.chainID == chain {
			return l, nil
		}
		other = l
	}
	if other == nil {
		return nil, nil
	}
	return nil, indexError{fmt.Errorf("layer %s: containerd prepares it as the snapshot of chain %q (%s), the image config's diff IDs make its chain %s: not mounted from the index",
		digest, chain, LabelChainID, other.chainID)}
}

// FromIndex reports whether the image's layers are served from its index artifact (an
// unconverted image) rather than lazypull layers.
func (im *Image) FromIndex() bool { return len(im.indexed) > 0 }

// LayerDigests returns the digests of the layers the image serves, lowest first: what a
// profile recorded on it names.
func (im *Image) LayerDigests() []string {
	out := make([]string, 0, im.NumLayers())
	for _, l := range im.Layers {
		out = append(out, l.Desc.Digest.String())
	}
	for _, l := range im.indexed {
		out = append(out, l.Desc.Digest.String())
	}
	return out
}

// noIndexTTL is how long the snapshotter takes an image found without an index artifact
// at its word: the layers of an image none of which is mounted are prepared one after
// another, each opening the image again, and would each look up its referrers again.
const noIndexTTL = failedImageTTL

// maxNoIndex bounds the images noIndexCache remembers.
const maxNoIndex = 256

// noIndexCache remembers, by reference, when images were found without an index
// artifact. Safe for concurrent use.
type noIndexCache struct {
	mu sync.Mutex
	at map[string]time.Time
}

func (c *noIndexCache) add(ref string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.at == nil || len(c.at) >= maxNoIndex {
		c.at = map[string]time.Time{}
	}
	c.at[ref] = time.Now()
}

// known says whether ref was found without an index less than noIndexTTL ago.
func (c *noIndexCache) known(ref string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.at[ref]
	return ok && time.Since(t) < noIndexTTL
}
