package daemon

import (
	"bytes"
	"context"
	"fmt"
	"iter"
	"slices"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/format"
	"lazypull/internal/jsonlimit"
	"lazypull/internal/store"
)

// What the store holds for the layers in use: a snapshot's Usage (kubelet's image GC,
// `ctr snapshot usage`), and what a prune keeps (KeepInUse).

// LayerUse names a layer that a remote snapshot holds: the digest of the image manifest
// it was pulled with, and its own.
type LayerUse struct {
	Manifest, Layer string
}

// UseOf reads from a remote snapshot's labels the layer it holds; false when they do not
// say (no manifest digest: a reference by tag that CRI gave without one).
func UseOf(labels map[string]string) (LayerUse, bool) {
	u := LayerUse{Manifest: labels[LabelManifestDigest], Layer: labels[LabelLayerDigest]}
	if u.Manifest == "" || u.Layer == "" {
		u = LayerUse{Manifest: labels[LabelCRIManifestDigest], Layer: labels[LabelCRILayerDigest]}
	}
	return u, u.Manifest != "" && u.Layer != ""
}

// usageCache is a layer's last count of what the store holds for it, and the store's
// Changes then: Usage is polled for every snapshot (containerd's CRI every few seconds),
// and counts again only when the store changed.
type usageCache struct {
	mu      sync.Mutex
	changes uint64
	held    store.Held
	ok      bool
}

func (c *usageCache) get(st *store.Store, count func() (store.Held, error)) (store.Held, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := st.Changes()
	if c.ok && c.changes == now {
		return c.held, nil
	}
	h, err := count()
	if err != nil {
		return h, err
	}
	c.held, c.changes, c.ok = h, now, true
	return h, nil
}

// indexFiles yields the files of a layer's index whose content is in chunks (regular
// files and hard links to them; sparse files are not in the store).
func indexFiles(ix *format.Index) iter.Seq[store.File] {
	return func(yield func(store.File) bool) {
		for i := range ix.Entries {
			f, err := store.FileOf(ix, &ix.Entries[i])
			if err != nil {
				continue // not a regular file, or sparse
			}
			if !yield(f) {
				return
			}
		}
	}
}

// held counts what the store holds of the layer: its files' content, and its index.
func (l *Layer) held() store.Held {
	h, _ := l.usage.get(l.store, func() (store.Held, error) {
		var meta []format.Digest
		if loc, err := format.LocationFromAnnotations(l.Desc.Annotations); err == nil {
			meta = append(meta, loc.Digest)
		}
		return l.store.HeldOf(indexFiles(l.Index), meta...), nil
	})
	return h
}

// Usage is what the store holds for the layer mounted at mountpoint, which labels name:
// the bytes of its files' content that are local, and of its index; objects counts the
// complete files, chunk objects and index. A layer not mounted by this process (after a
// restart, before its first use) is read from the store, through the manifest it keeps.
func (f *SnapshotFS) Usage(ctx context.Context, mountpoint string, labels map[string]string) (bytes, objects int64, err error) {
	_, digest, err := layerOf(labels)
	if err != nil {
		return 0, 0, err
	}
	f.mu.Lock()
	im := f.mountImage[mountpoint]
	f.mu.Unlock()
	if im != nil {
		for _, l := range im.Layers {
			if l.Desc.Digest.String() == digest {
				h := l.held()
				return h.Bytes, int64(h.Objects), nil
			}
		}
		for _, l := range im.indexed {
			if l.Desc.Digest.String() == digest {
				h := l.held()
				return h.Bytes, int64(h.Objects), nil
			}
		}
	}
	u, ok := UseOf(labels)
	if !ok {
		return 0, 0, fmt.Errorf("layer %s is not mounted, and its labels name no manifest to find it by in the store", digest)
	}
	f.mu.Lock()
	c := f.stored[mountpoint]
	if c == nil {
		c = &usageCache{}
		f.stored[mountpoint] = c
	}
	f.mu.Unlock()
	h, err := c.get(f.store, func() (store.Held, error) {
		desc, ix, err := storedLayer(f.store, u)
		if err != nil {
			return store.Held{}, err
		}
		loc, _ := format.LocationFromAnnotations(desc.Annotations)
		return f.store.HeldOf(indexFiles(ix), loc.Digest), nil
	})
	return h.Bytes, int64(h.Objects), err
}

// KeepInUse is what a prune of st leaves for the layers in use (uses: the remote
// snapshots') and the images open: their manifests, their layers' indexes and the content
// of their files; layers counts the layers kept. problems lists, one line each, what could
// not be read, and so is not kept beyond what a lease pins.
func KeepInUse(st *store.Store, uses []LayerUse, images []*Image) (keep store.Keep, layers int, problems []string) {
	seenMeta := map[format.Digest]bool{}
	addMeta := func(d format.Digest) {
		if !seenMeta[d] {
			seenMeta[d] = true
			keep.Meta = append(keep.Meta, d)
		}
	}
	seenLayer := map[string]bool{}
	addLayer := func(desc v1.Descriptor, ix *format.Index) {
		if seenLayer[desc.Digest.String()] {
			return
		}
		seenLayer[desc.Digest.String()] = true
		if loc, err := format.LocationFromAnnotations(desc.Annotations); err == nil {
			addMeta(loc.Digest)
		}
		for f := range indexFiles(ix) {
			keep.Files = append(keep.Files, f)
		}
	}
	for _, im := range images {
		if d, err := format.ParseDigest(im.Image.Descriptor.Digest.String()); err == nil {
			addMeta(d)
		}
		for _, l := range im.Layers {
			addLayer(l.Desc, l.Index)
		}
		if d, err := format.ParseDigest(im.Image.Manifest.Config.Digest.String()); err == nil && len(im.indexed) > 0 {
			addMeta(d) // the diff IDs an indexed layer is bound by (indexed_snapshot.go)
		}
		for _, l := range im.indexed { // their files, by digest (indexed_store.go)
			if !seenLayer[l.Desc.Digest.String()] {
				seenLayer[l.Desc.Digest.String()] = true
				keep.Files = slices.AppendSeq(keep.Files, l.storeFiles())
			}
		}
	}
	for _, u := range uses {
		if d, err := format.ParseDigest(u.Manifest); err == nil {
			addMeta(d)
		}
		if seenLayer[u.Layer] {
			continue
		}
		desc, ix, err := storedLayer(st, u)
		if err != nil {
			problems = append(problems, fmt.Sprintf("layer %s of %s: %v", u.Layer, u.Manifest, err))
			continue
		}
		addLayer(desc, ix)
	}
	return keep, len(seenLayer), problems
}

// storedLayer reads u's layer descriptor from its image manifest, and its index, from the
// store's metadata alone.
func storedLayer(st *store.Store, u LayerUse) (v1.Descriptor, *format.Index, error) {
	m, err := storedManifest(st, u.Manifest)
	if err != nil {
		return v1.Descriptor{}, nil, err
	}
	for _, desc := range m.Layers {
		if desc.Digest.String() != u.Layer {
			continue
		}
		loc, err := format.LocationFromAnnotations(desc.Annotations)
		if err != nil {
			return desc, nil, fmt.Errorf("layer %s: %w", u.Layer, err)
		}
		b, err := st.Meta(loc.Digest)
		if err != nil {
			return desc, nil, fmt.Errorf("layer %s: index: %w", u.Layer, err)
		}
		ix, err := format.ReadIndexBytes(b, desc.Size, loc)
		if err != nil {
			return desc, nil, fmt.Errorf("layer %s: index: %w", u.Layer, err)
		}
		return desc, ix, nil
	}
	return v1.Descriptor{}, nil, fmt.Errorf("image manifest %s has no layer %s", u.Manifest, u.Layer)
}

// storedManifest reads the image manifest of digest d from the store's metadata.
func storedManifest(st *store.Store, d string) (*v1.Manifest, error) {
	md, err := format.ParseDigest(d)
	if err != nil {
		return nil, fmt.Errorf("manifest %q: %w", d, err)
	}
	raw, err := st.Meta(md)
	if err != nil {
		return nil, err
	}
	if err := jsonlimit.Check(raw, "manifest "+d); err != nil {
		return nil, err
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", d, err)
	}
	return m, nil
}
