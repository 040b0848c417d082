package daemon

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"slices"

	"lazypull/format"
	"lazypull/internal/fusefs"
	"lazypull/internal/store"
)

// A layer served from an image's index artifact reads its small files through the
// node-wide store, as a converted layer does: a file of up to wholeFileMax bytes is one
// chunk whose digest is the file's (the table's sha256), so the store keeps it as the
// object of that digest, and any layer of any image on the node, converted or indexed,
// that holds the same file reads it from there, through FUSE passthrough once it is
// complete. The store fills its chunks from a Source of frames it decodes and checks
// against the chunk's digest; tarSource hands it the file's bytes from the layer's tar
// stream (through the gzindex, each span checked against its digest) in a zstd frame of
// raw blocks, which decodes with a copy. Larger files are stored by the spans of the tar
// stream that hold them (indexed_large.go).

var (
	_ store.Source      = tarSource{}
	_ fusefs.LocalFiler = (*indexedLayer)(nil)
)

// storeFile is e's content as the store knows it: one chunk, whose frame is the file's
// range of the tar stream (tarSource), or none for an empty file.
func storeFile(e *format.Entry) store.File {
	f := store.File{Digest: e.Digest, Size: e.Size}
	if e.Size > 0 {
		f.Chunks = []format.Chunk{{Size: e.Size, Offset: e.TarOffset, CompSize: e.Size, Digest: e.Digest}}
	}
	return f
}

// readStored serves a read of a file of up to wholeFileMax bytes through the store. A file
// whose content does not match the table's digest is logged once and fails every read.
func (l *indexedLayer) readStored(ctx context.Context, e *format.Entry, p []byte, off int64) (int, error) {
	f := l.file(e)
	if err := f.failed(); err != nil {
		return 0, err
	}
	n, err := l.store.ReadAt(ctx, tarSource{l}, storeFile(e), p, off)
	if errors.Is(err, store.ErrCorrupt) {
		f.mu.Lock()
		if f.bad == nil {
			f.bad = fmt.Errorf("layer %s: %s: content does not match the index's digest: %w", l.Desc.Digest, e.Name, err)
			l.log.Error("image index: file content does not match its digest; not served", "layer", l.Desc.Digest, "file", e.Name, "err", err)
		}
		bad := f.bad
		f.mu.Unlock()
		return 0, bad
	}
	return n, err
}

// LocalFile hands out the store's complete copy of e, for FUSE passthrough: a file of any
// size whose object the store holds (read through this layer, or any other of the node
// with the same content); it is the content of the table's digest, checked as it was
// stored.
func (l *indexedLayer) LocalFile(e *format.Entry) (*os.File, bool) {
	if l.store == nil || e.Sparse || !e.IsRegular() {
		return nil, false
	}
	fd, err := l.store.OpenLocal(store.File{Digest: e.Digest, Size: e.Size})
	if err != nil {
		return nil, false
	}
	return fd, true
}

// held counts what the store holds of the layer's files (Usage).
func (l *indexedLayer) held() store.Held {
	if l.store == nil {
		return store.Held{}
	}
	return l.store.HeldOf(l.storeFiles())
}

// storeFiles yields the store's view of every regular file of the layer, and of the
// spans that hold its large files.
func (l *indexedLayer) storeFiles() iter.Seq[store.File] {
	return func(yield func(store.File) bool) {
		for i := range l.Index.Entries {
			e := &l.Index.Entries[i]
			if e.IsRegular() && !e.Sparse && !yield(store.File{Digest: e.Digest, Size: e.Size}) {
				return
			}
		}
		for s := range l.largeSpans() {
			if !yield(store.File{Digest: s.Digest, Size: s.Len}) {
				return
			}
		}
	}
}

// tarSource is a layer's uncompressed tar stream as the store's Source: a chunk is a
// whole file or a span (indexed_large.go), its Offset where it starts in the stream.
type tarSource struct{ l *indexedLayer }

// Reads of the tar stream for a Fetch: files whose contents lie within tarGroupGap of
// each other are read together, up to tarGroupMax bytes at once (one run of spans, one
// request), tarGroupJobs groups at a time.
const (
	tarGroupGap  = 256 << 10
	tarGroupMax  = 8 << 20
	tarGroupJobs = 4
)

// tarGroup is one read of the tar stream: [start, end), holding chunks.
type tarGroup struct {
	start, end int64
	chunks     []format.Chunk
	buf        []byte
	err        error
	done       chan struct{}
}

// Fetch reads the chunks' files (spans) from the tar stream, close ones together, and
// hands each to fn as a raw frame. Groups of a gzip (zstd) layer are fetched together and
// decoded in parallel when there are several (fetchRuns, indexed_large.go); otherwise
// through the layer's shared reader (whose kept spans spare a zstd layer's next read its
// window), from the calling goroutine, in stream order.
func (s tarSource) Fetch(ctx context.Context, chunks []format.Chunk, fn func(format.Chunk, []byte) error) error {
	groups, err := s.groups(chunks)
	if err != nil {
		return err
	}
	if len(groups) > 1 && s.l.decoder != nil && s.l.spanTab != nil && s.l.blob != nil {
		return s.fetchRuns(ctx, groups, fn)
	}
	sem := make(chan struct{}, tarGroupJobs)
	next := 0 // the first group not started
	start := func() {
		for next < len(groups) {
			select {
			case sem <- struct{}{}:
			default:
				return
			}
			g := groups[next]
			next++
			go func() {
				defer close(g.done)
				g.buf = make([]byte, g.end-g.start)
				n, err := s.l.tar.ReadAt(g.buf, g.start)
				if int64(n) < g.end-g.start {
					if err == nil || errors.Is(err, io.EOF) {
						err = io.ErrUnexpectedEOF
					}
					g.err = fmt.Errorf("layer %s: read %d bytes at %d of its tar stream: %w", s.l.Desc.Digest, g.end-g.start, g.start, err)
				}
			}()
		}
	}
	defer func() {
		for _, g := range groups[:next] {
			<-g.done // no read outlives the call
		}
	}()
	for _, g := range groups {
		start()
		select {
		case <-g.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		<-sem
		if g.err != nil {
			return g.err
		}
		for _, c := range g.chunks {
			if err := fn(c, rawFrame(g.buf[c.Offset-g.start:c.Offset-g.start+c.Size])); err != nil {
				return err
			}
		}
		g.buf = nil
	}
	return nil
}

// groups sorts the chunks by offset into the reads Fetch makes.
func (s tarSource) groups(chunks []format.Chunk) ([]*tarGroup, error) {
	cs := slices.Clone(chunks)
	slices.SortFunc(cs, func(a, b format.Chunk) int { return cmp.Compare(a.Offset, b.Offset) })
	var out []*tarGroup
	for _, c := range cs {
		if c.Size <= 0 || c.Size > wholeFileMax || c.CompSize != c.Size || c.Offset < 0 {
			return nil, fmt.Errorf("layer %s: chunk %s of %d bytes at %d: not a file or span the index serves through the store", s.l.Desc.Digest, c.Digest, c.Size, c.Offset)
		}
		end := c.Offset + c.Size
		if n := len(out); n > 0 && c.Offset-out[n-1].end <= tarGroupGap && max(end, out[n-1].end)-out[n-1].start <= tarGroupMax {
			g := out[n-1]
			g.end = max(g.end, end)
			g.chunks = append(g.chunks, c)
			continue
		}
		out = append(out, &tarGroup{start: c.Offset, end: end, chunks: []format.Chunk{c}, done: make(chan struct{})})
	}
	return out, nil
}

// Raw zstd frames (RFC 8878): magic, a frame header descriptor for a single segment with an
// 8-byte content size, then blocks of at most rawBlockMax bytes stored as they are
// (block type 0), the last one marked.
const (
	zstdMagic       = 0xFD2FB528
	rawFrameHeader  = 3<<6 | 1<<5 // content size in 8 bytes, single segment
	rawBlockMax     = 128 << 10
	rawBlockLastBit = 1
)

// rawFrame wraps b in a zstd frame of raw blocks: what format.DecodeFrame turns back into b
// with a copy, no compression spent on bytes that are only handed over.
func rawFrame(b []byte) []byte {
	out := make([]byte, 0, 13+len(b)+3*(len(b)/rawBlockMax+1))
	out = binary.LittleEndian.AppendUint32(out, zstdMagic)
	out = append(out, rawFrameHeader)
	out = binary.LittleEndian.AppendUint64(out, uint64(len(b)))
	for first := true; first || len(b) > 0; first = false {
		n := min(len(b), rawBlockMax)
		h := uint32(n) << 3 // block type 0: raw
		if n == len(b) {
			h |= rawBlockLastBit
		}
		out = append(out, byte(h), byte(h>>8), byte(h>>16))
		out = append(out, b[:n]...)
		b = b[n:]
	}
	return out
}
