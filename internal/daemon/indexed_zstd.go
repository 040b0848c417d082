package daemon

import (
	"bytes"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/format/zstdindex"
	"lazypull/internal/fetch"
	"lazypull/internal/imageindex"
)

// A zstd layer of an unconverted image is served from its index artifact as a gzip layer
// is (indexed.go), through a zstdindex instead of a gzindex. Both have one more blob: the
// layer's window blob (imageindex.WindowsMediaType), an artifact layer after the index
// blobs, naming the image layer by digest. A read fetches the compressed spans it covers
// by Range from the layer blob, and a window by Range from the window blob only when it
// starts a span inside a frame whose preceding output the reader does not hold (kept, or
// decoded in the same read). Each span's output is checked against its sha256 before any
// of it is served, each file against the table's sha256 (as for gzip), so a corrupt or
// forged window blob fails reads, never serves a wrong byte.

// windowBlobs returns, by image layer position, the window blob the artifact manifest m
// gives each layer (nil: none). m's first len(descs) layers are the index blobs, in image
// layer order; each after them must be a window blob naming one of the image's zstd
// or gzip layers, at most one a layer.
func windowBlobs(m *v1.Manifest, descs []v1.Descriptor) ([]*v1.Descriptor, error) {
	if len(m.Layers) < len(descs) {
		return nil, fmt.Errorf("%d layers for the image's %d", len(m.Layers), len(descs))
	}
	byDigest := map[string]*v1.Descriptor{}
	for i := len(descs); i < len(m.Layers); i++ {
		d := &m.Layers[i]
		name := d.Annotations[imageindex.AnnotationLayer]
		if d.MediaType != imageindex.WindowsMediaType || d.Size <= 0 {
			return nil, fmt.Errorf("layer %d: blob %s of media type %q and %d bytes after the index blobs: not a window blob", i, d.Digest, d.MediaType, d.Size)
		}
		if byDigest[name] != nil {
			return nil, fmt.Errorf("layer %d: a second window blob for layer %q", i, name)
		}
		byDigest[name] = d
	}
	// Several image layers of one digest share one window blob.
	out := make([]*v1.Descriptor, len(descs))
	layers := map[string]bool{}
	for i, desc := range descs {
		out[i] = byDigest[desc.Digest.String()]
		layers[desc.Digest.String()] = true
	}
	for name, d := range byDigest {
		if !layers[name] {
			return nil, fmt.Errorf("window blob %s names layer %q, not one of the image's", d.Digest, name)
		}
	}
	return out, nil
}

// windowBlob returns the window blob wd (nil: the artifact has none for the layer) of a
// layer whose index (what) needs one of size bytes (0: none), and its reader (of no
// bytes for none).
func windowBlob(im *Image, wd *v1.Descriptor, size int64, what string) (*fetch.Blob, io.ReaderAt, error) {
	switch {
	case wd == nil && size > 0:
		return nil, nil, fmt.Errorf("its %s needs a window blob of %d bytes; the artifact has none for the layer", what, size)
	case wd != nil && wd.Size != size:
		return nil, nil, fmt.Errorf("window blob %s of %d bytes, the %s's is %d", wd.Digest, wd.Size, what, size)
	case wd == nil:
		return nil, bytes.NewReader(nil), nil
	}
	// Read by range, never whole: its digest cannot be checked. A gzip window is checked
	// against its digest in the index; a zstd window that is not the index's decodes to a
	// span that fails its digest.
	b := im.Registry.Blob(wd.Digest, wd.Size)
	return b, b.ReaderAt(im.bg), nil
}

// zstdTar returns the uncompressed tar stream of the zstd layer desc, whose blob blob
// reads, through its zstdindex ix and its window blob wd (nil when ix needs none), the
// decoder of runs of its spans (indexed_large.go) and the window blob (nil for none).
func zstdTar(im *Image, desc v1.Descriptor, ix *zstdindex.Index, blob io.ReaderAt, wd *v1.Descriptor) (io.ReaderAt, runDecoder, *fetch.Blob, error) {
	if ix.CompressedSize() != desc.Size {
		return nil, nil, nil, fmt.Errorf("its zstdindex is of a blob of %d bytes, the layer is %d", ix.CompressedSize(), desc.Size)
	}
	wb, windows, err := windowBlob(im, wd, ix.WindowsSize(), "zstdindex")
	if err != nil {
		return nil, nil, nil, err
	}
	dec := func(comp, wins io.ReaderAt) io.ReaderAt { return zstdindex.NewReader(ix, comp, wins, 0) }
	return zstdindex.NewReader(ix, blob, windows, gzSpansKept), dec, wb, nil
}
