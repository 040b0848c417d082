package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/format"
	"lazypull/format/gzindex"
	"lazypull/internal/fetch"
	"lazypull/internal/fusefs"
	"lazypull/internal/imageindex"
	"lazypull/internal/store"
)

// An image that is not converted (no lazypull layer) may still be mounted lazily from its
// index artifact (`lazypull index`, imageindex): one blob per image layer holding its file
// table (each entry's metadata, and where each regular file's content lies in the layer's
// uncompressed tar stream, with its sha256) and, for a gzip layer, its gzindex
// (checkpoints that serve the tar stream by ranges of the blob, each span's output with
// its sha256). The artifact is found as a referrer of the image manifest, as a profile is,
// and is as untrusted: its manifest and blobs are bounded and checked against their
// digests, each blob is decoded as hostile (imageindex.DecodeLayer), and every byte served
// matches the digests the table and the gzindex give (indexedLayer.ReadAt).

// maxIndexManifest bounds the artifact manifest of an image index: one descriptor per
// image layer, with one annotation each.
const maxIndexManifest = 1 << 20

// wholeFileMax is the size up to which an indexed file is read whole and checked against
// its digest before any of it is served.
const wholeFileMax = 4 << 20

// gzSpansKept bounds the bytes of decoded spans a gzip (or zstd) layer keeps, for reads that come
// back to them (small files that share a span, a file read in kernel-sized pieces): a few
// spans of ordinary data (128 KiB compressed, a few times that decoded), not the 64 MiB a
// hostile index may claim for one span (gzindex.MaxSpanOut), which is then not kept.
const gzSpansKept = 8 << 20

// findIndex returns the index artifact of the image manifest subject that policy allows:
// under PolicyReferrers the newest among its referrers (chooseReferrer), under
// PolicyPinned and PolicyOff none, without a request (no index is pinned). Nil: none.
func findIndex(ctx context.Context, reg *fetch.Registry, subject v1.Hash, policy ProfilePolicy) (*v1.Manifest, v1.Descriptor, error) {
	if policy == "" {
		policy = DefaultProfilePolicy
	}
	if policy != PolicyReferrers {
		return nil, v1.Descriptor{}, nil
	}
	refs, err := reg.Referrers(ctx, subject, imageindex.ArtifactType)
	if err != nil {
		return nil, v1.Descriptor{}, fmt.Errorf("look up the index of %s: %w", subject, err)
	}
	if len(refs) == 0 {
		return nil, v1.Descriptor{}, nil
	}
	best, _ := chooseReferrer(refs, time.Now())
	where := fmt.Sprintf("index %s of %s", best.Digest, subject)
	if best.Size > maxIndexManifest {
		return nil, best, fmt.Errorf("%s: manifest of %d bytes, more than %d: refused", where, best.Size, maxIndexManifest)
	}
	raw, err := embedded(best)
	if err != nil {
		return nil, best, fmt.Errorf("%s: manifest: %w", where, err)
	}
	if raw == nil {
		if _, raw, err = reg.Manifest(ctx, best.Digest); err != nil {
			return nil, best, fmt.Errorf("%s: %w", where, err)
		}
	}
	if int64(len(raw)) > maxIndexManifest {
		return nil, best, fmt.Errorf("%s: manifest of %d bytes, more than %d: refused", where, len(raw), maxIndexManifest)
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, best, fmt.Errorf("%s: %w", where, err)
	}
	if m.ArtifactType != imageindex.ArtifactType || m.Subject == nil || m.Subject.Digest != subject {
		return nil, best, fmt.Errorf("%s: artifact type %q, subject %v: not an index of this image", where, m.ArtifactType, m.Subject)
	}
	return m, best, nil
}

// openIndexedLayer reads and decodes the index blob ld of the image layer desc; windows
// is the artifact's window blob for the layer, if it has one (a gzip or zstd layer's,
// indexed_zstd.go).
func openIndexedLayer(ctx context.Context, im *Image, desc, ld v1.Descriptor, windows *v1.Descriptor) (*indexedLayer, error) {
	if got := ld.Annotations[imageindex.AnnotationLayer]; got != desc.Digest.String() {
		return nil, fmt.Errorf("index blob names layer %q", got)
	}
	if ld.MediaType != imageindex.LayerMediaType || ld.Size <= 0 || ld.Size > imageindex.MaxLayerSize {
		return nil, fmt.Errorf("index blob %s of media type %q and %d bytes: refused", ld.Digest, ld.MediaType, ld.Size)
	}
	kind, err := imageindex.KindOf(string(desc.MediaType))
	if err != nil {
		return nil, err
	}
	raw, err := im.Registry.Blob(ld.Digest, ld.Size).ReadAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("index blob %s: %w", ld.Digest, err)
	}
	il, err := imageindex.DecodeLayer(raw, kind)
	if err != nil {
		return nil, fmt.Errorf("index blob %s: %w", ld.Digest, err)
	}
	if windows != nil && kind == imageindex.Tar {
		return nil, fmt.Errorf("window blob %s for a %v layer: refused", windows.Digest, kind)
	}
	blob := im.Registry.Layer(desc)
	// Reads are not canceled one by one: the gzindex and zstdindex readers share decoded
	// spans among readers, and their fetches end with the image.
	var tar io.ReaderAt = blob.ReaderAt(im.bg)
	var spans *spanTable
	var dec runDecoder
	var wb *fetch.Blob
	switch {
	case kind == imageindex.Zstd:
		if tar, dec, wb, err = zstdTar(im, desc, il.ZS, tar, windows); err != nil {
			return nil, fmt.Errorf("index blob %s: %w", ld.Digest, err)
		}
		spans = zstdSpans(il.ZS)
	case kind == imageindex.Gzip && il.GZ.CompressedSize() != desc.Size:
		return nil, fmt.Errorf("index blob %s: its gzindex is of a blob of %d bytes, the layer is %d", ld.Digest, il.GZ.CompressedSize(), desc.Size)
	case kind == imageindex.Gzip:
		var wins io.ReaderAt
		if wb, wins, err = windowBlob(im, windows, il.GZ.WindowsSize(), "gzindex"); err != nil {
			return nil, fmt.Errorf("index blob %s: %w", ld.Digest, err)
		}
		tar, spans = gzindex.NewReader(il.GZ, tar, wins, gzSpansKept), gzSpans(il.GZ)
		dec = func(comp, wins io.ReaderAt) io.ReaderAt { return gzindex.NewReader(il.GZ, comp, wins, 0) }
	case il.Table.TarSize != desc.Size:
		return nil, fmt.Errorf("index blob %s: a tar stream of %d bytes, the layer is %d", ld.Digest, il.Table.TarSize, desc.Size)
	}
	return &indexedLayer{Desc: desc, Index: &format.Index{Entries: il.Table.Entries}, tar: tar, spans: kind != imageindex.Tar, spanTab: spans,
		blob: blob, windows: wb, decoder: dec, log: im.log, files: map[*format.Entry]*indexedFile{}, reading: &im.reading, im: im}, nil
}

// indexedLayer is one layer of an unconverted image, served from its index artifact: its
// tree from the file table (a format.Index of entries only, no frames), its files' bytes
// from the layer's uncompressed tar stream (through the gzindex over Range requests to a
// gzip blob, or the blob itself for a plain tar). It is the fusefs.Content of that layer.
type indexedLayer struct {
	Desc  v1.Descriptor
	Index *format.Index

	tar   io.ReaderAt // the uncompressed tar stream
	spans bool        // tar verifies every span against the gzindex's (zstdindex's) digest
	// spanTab is the gzindex's (zstdindex's) spans, through which large files are
	// stored (indexed_large.go); nil for a plain tar layer.
	spanTab *spanTable
	// blob is the layer blob, from which the store's fetches read runs of spans in
	// parallel, each decoded by a reader decoder makes (indexed_large.go); nil
	// decoder for a plain tar layer. windows is its window blob (nil: none), of which
	// those fetches read the windows of their runs' first spans beside the runs.
	blob    *fetch.Blob
	windows *fetch.Blob
	decoder runDecoder
	log     *slog.Logger

	mu    sync.Mutex
	files map[*format.Entry]*indexedFile

	reading interface{ Add(int64) int64 } // the image's reads in progress (Image.reading)
	// im is the image, whose walk of programs' needs a program's first read starts
	// (indexed_elf.go); nil in tests of the layer alone.
	im *Image

	// store holds the files of up to wholeFileMax bytes read (indexed_store.go), and
	// the spans of larger ones (indexed_large.go), shared by digest with every other
	// layer on the node.
	store *store.Store
	// diffID is the layer's diff ID, which its index was built from; chainID the chain
	// ID of its snapshot (indexed_snapshot.go).
	diffID, chainID string
}

var _ fusefs.Content = (*indexedLayer)(nil)

// indexedFile is what is known of one file's content against its digest.
type indexedFile struct {
	mu       sync.Mutex
	verified bool  // the whole content matched the digest
	bad      error // the content did not match: every read fails with it

	// A large file of a gzip layer is served span by span as the gzindex verifies
	// them; its digest is checked as it is read through in order from its start.
	next int64
	h    hash.Hash
}

// failed returns the error every read of the file fails with, if its content was found
// not to match its digest.
func (f *indexedFile) failed() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bad
}

func (l *indexedLayer) file(e *format.Entry) *indexedFile {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.files[e]
	if f == nil {
		f = &indexedFile{}
		l.files[e] = f
	}
	return f
}

// ReadAt serves verified bytes of a regular file from the layer's tar stream. What is
// checked when:
//   - a file of up to wholeFileMax bytes is read whole through the store (readStored),
//     which checks it against the table's sha256 before any of its bytes is served and
//     keeps it;
//   - a larger file of a gzip (zstd) layer is served span by span through the store
//     (readSpans, indexed_large.go), each span's output checked against the gzindex's
//     digest before any of it is served or stored, and its sha256 checked against the
//     table's once it has been read through in order from its start: the read that ends
//     it fails on a mismatch, and every read of the file after it (a plain tar layer's
//     is refused: its blob has no span digests).
func (l *indexedLayer) ReadAt(ctx context.Context, e *format.Entry, p []byte, off int64) (int, error) {
	n, err := l.read(ctx, e, p, off)
	if off == 0 && (err == nil || errors.Is(err, io.EOF)) {
		l.speculateELF(e, p[:n])
	}
	return n, err
}

// read is ReadAt without the walk of a program's needs it may start (indexed_elf.go).
func (l *indexedLayer) read(ctx context.Context, e *format.Entry, p []byte, off int64) (int, error) {
	if l.reading != nil {
		l.reading.Add(1)
		defer l.reading.Add(-1)
	}
	if e.Sparse {
		return 0, fmt.Errorf("layer %s: %s: sparse files are not served from an image index yet", l.Desc.Digest, e.Name)
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if e.Size <= wholeFileMax {
		return l.readStored(ctx, e, p, off)
	}
	if !l.spans {
		// Its blob has no span digests: each read would have to read the file whole.
		return 0, fmt.Errorf("layer %s: %s: files over %d bytes of an uncompressed layer are not served from an image index yet", l.Desc.Digest, e.Name, wholeFileMax)
	}
	f := l.file(e)
	if err := f.failed(); err != nil {
		return 0, err
	}
	n, served, err := l.readSpans(ctx, e, p, off)
	switch {
	case !served:
		n, err = l.readTar(e, p, off)
	case err == nil && n < len(p):
		err = io.EOF
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return n, err
	}
	if ferr := l.follow(e, f, p[:n], off); ferr != nil {
		return 0, ferr
	}
	return n, err
}

// readTar reads e's content [off, off+len(p)) from the tar stream.
func (l *indexedLayer) readTar(e *format.Entry, p []byte, off int64) (int, error) {
	if off >= e.Size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), e.Size-off)
	n, err := l.tar.ReadAt(p[:want], e.TarOffset+off)
	if int64(n) < want {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return n, fmt.Errorf("layer %s: %s: read %d bytes at %d: %w", l.Desc.Digest, e.Name, want, off, err)
	}
	if want < int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}

// follow hashes the bytes of a large file read in order from its start, and checks the
// digest when the file has been read through.
func (l *indexedLayer) follow(e *format.Entry, f *indexedFile, b []byte, off int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.verified || off != f.next {
		return f.bad
	}
	if f.h == nil {
		f.h = sha256.New()
	}
	f.h.Write(b)
	f.next += int64(len(b))
	if f.next < e.Size {
		return nil
	}
	var sum format.Digest
	f.h.Sum(sum[:0])
	f.h, f.next = nil, 0
	if sum != e.Digest {
		f.bad = fmt.Errorf("layer %s: %s: content does not match the index's digest", l.Desc.Digest, e.Name)
		l.log.Error("image index: file content does not match its digest; no more of it served", "layer", l.Desc.Digest, "file", e.Name)
		return f.bad
	}
	f.verified = true
	return nil
}

// openFromIndex opens an image none of whose layers is a lazypull layer from its index
// artifact, when policy finds one, and says whether it did. An image with a lazypull
// layer, or with no index, is left to the ordinary open (false, nil), with a log line for
// the latter.
func (im *Image) openFromIndex(ctx context.Context, st *store.Store, policy ProfilePolicy) (bool, error) {
	descs := im.Image.Manifest.Layers
	if len(descs) == 0 || slices.ContainsFunc(descs, func(d v1.Descriptor) bool { return format.IsLayer(d.Annotations) }) {
		return false, nil
	}
	m, art, err := findIndex(ctx, im.Registry, im.Image.Descriptor.Digest, policy)
	if err != nil {
		return false, fmt.Errorf("image %s: %w", im.Ref, err)
	}
	if m == nil {
		im.log.Info("image has no lazypull layers and no index artifact", "image", im.Ref, "policy", policy)
		return false, nil
	}
	layers, errs := im.openIndexedLayers(ctx, st, m, art)
	if err := errors.Join(errs...); err != nil {
		return false, err
	}
	im.indexed = layers
	im.Layers = nil
	im.log.Info("image opened from its index artifact", "image", im.Ref, "index", art.Digest, "layers", len(im.indexed))
	return true, nil
}
