package daemon

import (
	"context"
	"fmt"
	"iter"

	"golang.org/x/sync/errgroup"

	"lazypull/format"
	"lazypull/format/gzindex"
	"lazypull/format/zstdindex"
	"lazypull/internal/profile"
	"lazypull/internal/store"
)

// A file over wholeFileMax bytes of a gzip or zstd layer served from its index artifact
// has no chunk digests of its own, but the spans of the layer's tar stream that hold it
// do: the gzindex (zstdindex) gives each span's output its sha256. So such a file is read
// through the store span by span: each span of up to wholeFileMax bytes is a one-chunk
// store file whose digest is the span's, kept as the object of that digest like any
// other (verified when it is fetched, the store's invariant across kill -9, its LRU,
// pins, usage and prunes), and shared with every layer on the node whose index has the
// same span. A read of a large file takes the spans it covers from the store; a span the
// store lacks is fetched through tarSource (the gzindex checking it first), spans a read
// or a prefetch needs together in one request. The profile's prefetch fills the spans of
// the profiled ranges of large files beside the small files, coalesced into runs of up
// to tarGroupMax bytes (indexed_prefetch.go). The file's own sha256 is still checked as
// it is read through in order (indexedLayer.follow). A span larger than wholeFileMax (a
// hostile or very compressible layer) is not stored: the file is then read from the tar
// stream as before.

// tarSpan is one span of a layer's tar stream: its range and the sha256 of its bytes.
type tarSpan struct {
	Off, Len int64
	Digest   format.Digest
}

// spanTable is what a layer's gzindex or zstdindex says of its spans.
type spanTable struct {
	n    int
	at   func(off int64) int // the span holding offset off of the tar stream
	span func(i int) tarSpan
}

func gzSpans(ix *gzindex.Index) *spanTable {
	return &spanTable{n: ix.NumSpans(), at: ix.SpanAt, span: func(i int) tarSpan {
		s := ix.Span(i)
		return tarSpan{Off: s.Off, Len: s.Len, Digest: s.Digest}
	}}
}

func zstdSpans(ix *zstdindex.Index) *spanTable {
	return &spanTable{n: ix.NumSpans(), at: ix.SpanAt, span: func(i int) tarSpan {
		s := ix.Span(i)
		return tarSpan{Off: s.Off, Len: s.Len, Digest: s.Digest}
	}}
}

// spanFile is span s as the store knows it: one chunk whose digest is the span's, its
// frame the span's range of the tar stream (tarSource).
func spanFile(s tarSpan) store.File {
	return store.File{Digest: s.Digest, Size: s.Len, Chunks: []format.Chunk{{Size: s.Len, Offset: s.Off, CompSize: s.Len, Digest: s.Digest}}}
}

// stored reports whether s is a span the store keeps.
func (s tarSpan) stored() bool { return s.Len > 0 && s.Len <= wholeFileMax }

// spansOf returns the spans covering the tar stream's [start, end), all of them spans
// the store keeps; false if one is not.
func (t *spanTable) spansOf(start, end int64) ([]tarSpan, bool) {
	if t == nil || end <= start {
		return nil, false
	}
	first, last := t.at(start), t.at(end-1)
	if first < 0 || last < first || last >= t.n {
		return nil, false
	}
	out := make([]tarSpan, 0, last-first+1)
	for i := first; i <= last; i++ {
		s := t.span(i)
		if !s.stored() {
			return nil, false
		}
		out = append(out, s)
	}
	return out, true
}

// readSpans reads e's content [off, off+len(p)) through the store, span by span (the
// spans a read covers fetched at once when missing); false when the layer's spans cannot
// serve it (no store, no span table, a span too large to store): the caller reads the
// tar stream.
func (l *indexedLayer) readSpans(ctx context.Context, e *format.Entry, p []byte, off int64) (int, bool, error) {
	if l.store == nil || off >= e.Size {
		return 0, false, nil
	}
	want := min(int64(len(p)), e.Size-off)
	start := e.TarOffset + off
	ss, ok := l.spanTab.spansOf(start, start+want)
	if !ok {
		return 0, false, nil
	}
	read := func(ctx context.Context, s tarSpan) error {
		lo, hi := max(start, s.Off), min(start+want, s.Off+s.Len)
		n, err := l.store.ReadAt(ctx, tarSource{l}, spanFile(s), p[lo-start:hi-start], lo-s.Off)
		if err == nil && int64(n) < hi-lo {
			err = fmt.Errorf("%d bytes of %d", n, hi-lo)
		}
		if err != nil {
			return fmt.Errorf("layer %s: %s: span %s of its tar stream at %d: %w", l.Desc.Digest, e.Name, s.Digest, s.Off, err)
		}
		return nil
	}
	if len(ss) == 1 {
		if err := read(ctx, ss[0]); err != nil {
			return 0, true, err
		}
	} else {
		// A read across spans: their fetches go out together, not one after another.
		g, gctx := errgroup.WithContext(ctx)
		for _, s := range ss {
			g.Go(func() error { return read(gctx, s) })
		}
		if err := g.Wait(); err != nil {
			return 0, true, err
		}
	}
	return int(want), true, nil
}

// profiledSpans returns the store files of the spans holding the ranges w profiles of a
// large file of the layer, leaving out those seen already (and marking them seen), and
// false when the layer's spans cannot serve the file.
func (l *indexedLayer) profiledSpans(w profile.Want, seen map[format.Digest]bool) ([]store.File, bool) {
	var out []store.File
	for _, r := range w.Ranges {
		start, end := w.Entry.TarOffset+r.Off, w.Entry.TarOffset+min(r.End(), w.Entry.Size)
		if r.Off < 0 || end <= start {
			continue
		}
		ss, ok := l.spanTab.spansOf(start, end)
		if !ok {
			return nil, false
		}
		for _, s := range ss {
			if !seen[s.Digest] {
				seen[s.Digest] = true
				out = append(out, spanFile(s))
			}
		}
	}
	return out, true
}

// largeSpans yields the spans the store keeps that hold the layer's files over
// wholeFileMax bytes, each once (usage, and what a prune keeps).
func (l *indexedLayer) largeSpans() iter.Seq[tarSpan] {
	return func(yield func(tarSpan) bool) {
		if l.spanTab == nil {
			return
		}
		next := 0 // the spans before it have been yielded
		for i := range l.Index.Entries {
			e := &l.Index.Entries[i]
			if !e.IsRegular() || e.Sparse || e.Size <= wholeFileMax {
				continue
			}
			first, last := l.spanTab.at(e.TarOffset), l.spanTab.at(e.TarOffset+e.Size-1)
			for k := max(first, next, 0); k <= last && k < l.spanTab.n; k++ {
				if s := l.spanTab.span(k); s.stored() && !yield(s) {
					return
				}
			}
			next = max(next, last+1)
		}
	}
}
