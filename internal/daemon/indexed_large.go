package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"slices"
	"sync"

	"golang.org/x/sync/errgroup"

	"lazypull/format"
	"lazypull/format/gzindex"
	"lazypull/format/zstdindex"
	"lazypull/internal/fetch"
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
// store lacks is fetched through tarSource (the gzindex checking it first), the spans a
// read (fetchTogether) or a prefetch needs together, in one request. The profile's prefetch fills the spans of
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
	n   int
	at  func(off int64) int // the span holding offset off of the tar stream
	get func(i int) (tarSpan, fetch.Range)
	win func(i int) fetch.Range // span i's window in the window blob (Len 0: none)
}

// span returns span i.
func (t *spanTable) span(i int) tarSpan { s, _ := t.get(i); return s }

// comp returns the compressed bytes that decode to span i.
func (t *spanTable) comp(i int) fetch.Range { _, r := t.get(i); return r }

func gzSpans(ix *gzindex.Index) *spanTable {
	return &spanTable{n: ix.NumSpans(), at: ix.SpanAt, get: func(i int) (tarSpan, fetch.Range) {
		s := ix.Span(i)
		return tarSpan{s.Off, s.Len, s.Digest}, fetch.Range{Off: s.CompOff, Len: s.CompLen}
	}, win: func(i int) fetch.Range {
		s := ix.Span(i)
		return fetch.Range{Off: s.WindowOff, Len: s.WindowLen}
	}}
}

func zstdSpans(ix *zstdindex.Index) *spanTable {
	return &spanTable{n: ix.NumSpans(), at: ix.SpanAt, get: func(i int) (tarSpan, fetch.Range) {
		s := ix.Span(i)
		return tarSpan{s.Off, s.Len, s.Digest}, fetch.Range{Off: s.CompOff, Len: s.CompLen}
	}, win: func(i int) fetch.Range {
		s := ix.Span(i)
		return fetch.Range{Off: s.WindowOff, Len: s.WindowLen}
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
	var src store.Source = tarSource{l}
	if len(ss) > 1 {
		// A read across spans: the ones the store lacks are fetched together, in one
		// request, and handed to the store's reads below from memory.
		var err error
		if src, err = l.fetchTogether(ctx, ss); err != nil {
			return 0, true, fmt.Errorf("layer %s: %s: %w", l.Desc.Digest, e.Name, err)
		}
	}
	for _, s := range ss {
		lo, hi := max(start, s.Off), min(start+want, s.Off+s.Len)
		n, err := l.store.ReadAt(ctx, src, spanFile(s), p[lo-start:hi-start], lo-s.Off)
		if err == nil && int64(n) < hi-lo {
			err = fmt.Errorf("%d bytes of %d", n, hi-lo)
		}
		if err != nil {
			return 0, true, fmt.Errorf("layer %s: %s: span %s of its tar stream at %d: %w", l.Desc.Digest, e.Name, s.Digest, s.Off, err)
		}
	}
	return int(want), true, nil
}

// fetchTogether fetches the spans of ss that the store lacks (neither local nor being
// fetched) in one tarSource.Fetch, and returns a Source that hands them over from memory
// (the store checks each against its digest as from any source), and fetches any other.
func (l *indexedLayer) fetchTogether(ctx context.Context, ss []tarSpan) (store.Source, error) {
	var missing []format.Chunk
	for _, s := range ss {
		missing = append(missing, l.store.Missing(spanFile(s))...)
	}
	if len(missing) < 2 {
		return tarSource{l}, nil
	}
	m := &fetchedSource{next: tarSource{l}, frames: map[format.Digest][]byte{}}
	err := tarSource{l}.Fetch(ctx, missing, func(c format.Chunk, frame []byte) error {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.frames[c.Digest] = frame // a frame of its own (rawFrame)
		return nil
	})
	return m, err
}

var _ store.Source = (*fetchedSource)(nil)

// fetchedSource serves chunks fetched already from memory, and fetches the others from next.
type fetchedSource struct {
	next   store.Source
	mu     sync.Mutex
	frames map[format.Digest][]byte
}

func (m *fetchedSource) Fetch(ctx context.Context, chunks []format.Chunk, fn func(format.Chunk, []byte) error) error {
	var rest []format.Chunk
	for _, c := range chunks {
		m.mu.Lock()
		frame, ok := m.frames[c.Digest]
		m.mu.Unlock()
		if !ok {
			rest = append(rest, c)
			continue
		}
		if err := fn(c, frame); err != nil {
			return err
		}
	}
	if len(rest) == 0 {
		return nil
	}
	return m.next.Fetch(ctx, rest, fn)
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

// The store's fetches of several groups (tarSource.groups) of a gzip (zstd) layer's tar
// stream go to the registry as the converted path's do: the compressed bytes of every
// group of the Fetch in one fetch.Blob.Fetch, which merges the ranges that touch (adjacent spans) or lie
// close, packs them into multi-range requests and sends them in parallel, then each
// group decoded on its own from the bytes that came, by a gzindex (zstdindex) reader of
// its own over them, each span checked against its digest. Not through the layer's shared
// reader (indexedLayer.tar), whose decode budget, which the fetch is inside of, would
// send the requests one after another.

// runBatch bounds the compressed bytes one Blob.Fetch of a tarSource.Fetch asks for (and
// holds) at once; tarGroupJobs groups are decoded at a time.
const runBatch = 32 << 20

// runDecoder returns a reader of a layer's tar stream over comp, a reader of (some of) its
// blob's compressed bytes, and wins, of its window blob, that keeps no span: what a
// group's decode reads through.
type runDecoder func(comp, wins io.ReaderAt) io.ReaderAt

// compRange is the compressed bytes holding g, or false when the group's spans would
// decode to more than a group may hold (a hostile or very compressible layer's spans):
// it is then read through the layer's shared reader.
func (s tarSource) compRange(g *tarGroup) (fetch.Range, bool) {
	t := s.l.spanTab
	first, last := t.at(g.start), t.at(g.end-1)
	if first < 0 || last < first || last >= t.n {
		return fetch.Range{}, false
	}
	a, b := t.span(first), t.span(last)
	if b.Off+b.Len-a.Off > tarGroupMax+2*wholeFileMax {
		return fetch.Range{}, false
	}
	ca, cb := t.comp(first), t.comp(last)
	return fetch.Range{Off: ca.Off, Len: cb.Off + cb.Len - ca.Off}, true
}

// fetchRuns is tarSource.Fetch for a layer with spans (indexed_large.go's header).
func (s tarSource) fetchRuns(ctx context.Context, groups []*tarGroup, fn func(format.Chunk, []byte) error) error {
	for len(groups) > 0 {
		var batch []*tarGroup
		var ranges []fetch.Range
		var held int64
		for len(groups) > 0 {
			g := groups[0]
			r, ok := s.compRange(g)
			if !ok {
				r = fetch.Range{Off: -1}
			}
			if len(batch) > 0 && held+max(r.Len, 0) > runBatch {
				break
			}
			batch, ranges, held, groups = append(batch, g), append(ranges, r), held+max(r.Len, 0), groups[1:]
		}
		if err := s.fetchBatch(ctx, batch, ranges, fn); err != nil {
			return err
		}
	}
	return nil
}

// fetchBatch fetches the compressed bytes of groups (ranges[i] holds groups[i]; an Off
// of -1: read through the shared reader) and decodes each as it comes.
func (s tarSource) fetchBatch(ctx context.Context, groups []*tarGroup, ranges []fetch.Range, fn func(format.Chunk, []byte) error) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(tarGroupJobs)
	byRange := map[fetch.Range][]*tarGroup{}
	var want []fetch.Range
	var fetched []*tarGroup
	for i, gr := range groups {
		if ranges[i].Off < 0 {
			g.Go(func() error { return s.decodeGroup(gr, s.l.tar, fn) })
			continue
		}
		if byRange[ranges[i]] == nil {
			want = append(want, ranges[i])
		}
		byRange[ranges[i]] = append(byRange[ranges[i]], gr)
		fetched = append(fetched, gr)
	}
	wins := s.fetchWindows(gctx, fetched)
	err := s.l.blob.Fetch(gctx, want, func(r fetch.Range, b []byte) error {
		comp := &offsetReader{b: slices.Clone(b), off: r.Off} // b is the fetch's, shared
		for _, gr := range byRange[r] {
			g.Go(func() error { return s.decodeGroup(gr, s.l.decoder(comp, wins), fn) })
		}
		return nil
	})
	// A decode's error cancels the fetch: it is the one to report.
	if werr := g.Wait(); werr != nil && (err == nil || errors.Is(err, context.Canceled)) {
		err = werr
	}
	if err != nil {
		return fmt.Errorf("layer %s: %w", s.l.Desc.Digest, err)
	}
	return nil
}

// decodeGroup reads g from tar, a reader of the tar stream, and hands each of its chunks
// to fn as a raw frame.
func (s tarSource) decodeGroup(g *tarGroup, tar io.ReaderAt, fn func(format.Chunk, []byte) error) error {
	buf := make([]byte, g.end-g.start)
	if n, err := tar.ReadAt(buf, g.start); n < len(buf) {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("read %d bytes at %d of its tar stream: %w", len(buf), g.start, err)
	}
	for _, c := range g.chunks {
		if err := fn(c, rawFrame(buf[c.Offset-g.start:c.Offset-g.start+c.Size])); err != nil {
			return err
		}
	}
	return nil
}

// offsetReader reads the bytes b, which lie at off in a larger stream.
type offsetReader struct {
	b   []byte
	off int64
}

func (r *offsetReader) ReadAt(p []byte, off int64) (int, error) {
	if off < r.off || off-r.off+int64(len(p)) > int64(len(r.b)) {
		return 0, fmt.Errorf("bytes %d-%d: outside the %d fetched at %d", off, off+int64(len(p)), len(r.b), r.off)
	}
	return copy(p, r.b[off-r.off:]), nil
}

// fetchWindows starts fetching, beside the compressed bytes of groups, the windows that
// decoding them needs: each group's first span's, in one Blob.Fetch of the window blob
// (adjacent windows merge, as the groups' ranges do). It returns the reader of the window blob
// the decodes read through: the windows fetched, once they are in; any other range (a
// window that failed to come, a zstd span's after the first) by a request of its own.
func (s tarSource) fetchWindows(ctx context.Context, groups []*tarGroup) io.ReaderAt {
	l := s.l
	if l.windows == nil {
		return bytes.NewReader(nil)
	}
	w := &fetchedWindows{done: make(chan struct{}), got: map[fetch.Range][]byte{}, rest: l.windows.ReaderAt(ctx)}
	var want []fetch.Range
	seen := map[fetch.Range]bool{}
	for _, g := range groups {
		if wr := l.spanTab.win(l.spanTab.at(g.start)); wr.Len > 0 && !seen[wr] {
			seen[wr] = true
			want = append(want, wr)
		}
	}
	go func() {
		defer close(w.done)
		err := l.windows.Fetch(ctx, want, func(r fetch.Range, b []byte) error {
			w.got[r] = slices.Clone(b)
			return nil
		})
		if err != nil && ctx.Err() == nil {
			l.log.Debug("window prefetch failed; windows read one by one", "layer", l.Desc.Digest, "error", err)
		}
	}()
	return w
}

// fetchedWindows is the window blob as fetchWindows fetched it.
type fetchedWindows struct {
	done chan struct{} // closed once got is complete
	got  map[fetch.Range][]byte
	rest io.ReaderAt
}

func (w *fetchedWindows) ReadAt(p []byte, off int64) (int, error) {
	<-w.done
	if b, ok := w.got[fetch.Range{Off: off, Len: int64(len(p))}]; ok {
		return copy(p, b), nil
	}
	return w.rest.ReadAt(p, off)
}
