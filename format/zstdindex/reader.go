package zstdindex

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"

	"lazypull/format/internal/spans"

	"lazypull/format/internal/wire"
)

// SpanError is the error of a span that cannot be served: its bytes or window fail to
// fetch or decode, or decode to output that does not match its digest.
type SpanError struct {
	Span             int
	CompOff, CompLen int64
	Err              error
}

func (e *SpanError) Error() string {
	return fmt.Sprintf("zstdindex: span %d (compressed bytes %d-%d): %v", e.Span, e.CompOff, e.CompOff+e.CompLen, e.Err)
}

func (e *SpanError) Unwrap() error { return e.Err }

// ErrDigest is wrapped by the SpanError of a span whose output does not match its digest.
var ErrDigest = errors.New("span digest mismatch")

// errWindow is wrapped when a window from the window blob does not decode to its length.
var errWindow = errors.New("bad window")

// Reader serves the uncompressed stream of a zstd blob through its index, decoding only
// the spans a read covers with a stock decoder, and serving none of a span's bytes
// before its whole output matches its digest. A span inside a frame needs its window:
// the output before it if the reader has it (decoded in the same read, or kept), else
// its window fetched from the window blob. It keeps the most recently used verified
// spans, up to a number of bytes of output. It is safe for concurrent use.
type Reader struct {
	ix      *Index
	blob    io.ReaderAt
	windows io.ReaderAt
	s       *spans.Reader
}

// decodeBudget is the bytes a Reader's concurrent decodes may hold at once: a few spans
// with windows of the largest size (MaxWindow), one of the largest an index may claim.
const decodeBudget = 64 << 20

// NewReader returns a reader of the stream ix indexes, fetching compressed bytes from
// blob and windows from the window blob (either may be a range fetcher). It keeps the
// output of the spans read last, keep bytes of it at most; keep <= 0 keeps none.
func NewReader(ix *Index, blob, windows io.ReaderAt, keep int64) *Reader {
	r := &Reader{ix: ix, blob: blob, windows: windows}
	r.s = spans.NewReader((*source)(r), keep, decodeBudget)
	return r
}

// ReadAt reads the uncompressed bytes [off, off+len(p)). Spans not kept are fetched in
// one ReadAt of blob per run of consecutive spans.
func (r *Reader) ReadAt(p []byte, off int64) (int, error) {
	return r.s.ReadAt(p, off, "zstdindex")
}

// source is a Reader as the spans.Decoder of its spans.Reader.
type source Reader

func (s *source) Size() int64                       { return s.ix.size }
func (s *source) SpanAt(off int64) int              { return s.ix.SpanAt(off) }
func (s *source) Hold(i, j int) int64               { return (*Reader)(s).decodeSize(i, j) }
func (s *source) Decode(i, j int) ([][]byte, error) { return (*Reader)(s).decode(i, j) }
func (s *source) Span(i int) (off, n, compOff, compLen int64) {
	sp := s.ix.Span(i)
	return sp.Off, sp.Len, sp.CompOff, sp.CompLen
}

// decodeSize is what decoding spans i..j holds: their compressed bytes and output, and a
// window: twice (the dictionary, and the decoder's copy) and compressed.
func (r *Reader) decodeSize(i, j int) int64 {
	var win int64
	for k := i; k <= j; k++ {
		p := r.ix.points[k]
		win = max(win, 2*p.content+p.winLen)
	}
	return r.s.RunSize(i, j) + win
}

// decode fetches spans first..last in one read and returns each one's verified output.
// Each span is decoded on its own: a window stored for a span holds only the bytes its
// own matches read (the others zeroed), so a span inside a frame takes the output before
// it as its window when the reader has enough of it (decoded in this run, or kept), else
// its stored window.
func (r *Reader) decode(first, last int) ([][]byte, error) {
	s0 := r.ix.Span(first)
	src, err := r.s.Fetch(r.blob, first, last)
	if err != nil {
		return nil, &SpanError{Span: first, CompOff: s0.CompOff, CompLen: r.s.RunLen(first, last), Err: err}
	}
	var done [][]byte
	for k := first; k <= last; k++ {
		s := r.ix.Span(k)
		out, err := r.decodeSpan(k, src[s.CompOff-s0.CompOff:s.CompOff-s0.CompOff+s.CompLen], done)
		if err != nil {
			return nil, &SpanError{Span: k, CompOff: s.CompOff, CompLen: s.CompLen, Err: err}
		}
		done = append(done, out)
	}
	return done, nil
}

// decodeSpan decodes span k from its compressed bytes src with a stock decoder and
// checks its digest; run holds the output of the spans decoded before it in this run.
func (r *Reader) decodeSpan(k int, src []byte, run [][]byte) ([]byte, error) {
	p := &r.ix.points[k]
	s := r.ix.Span(k)
	stream, window, err := p.stream(src)
	if err != nil {
		return nil, err
	}
	win := windowSize(windowDescriptor(window))
	opts := []zstd.DOption{zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(uint64(max(win, minWindow))),
		zstd.WithDecoderMaxMemory(uint64(max(s.Len+1, win, minWindow)))}
	if p.mid {
		content := r.s.Before(k, p.content, run)
		if content == nil {
			if content, err = r.window(k); err != nil {
				return nil, err
			}
		}
		opts = append(opts, zstd.WithDecoderDicts(p.dictionary(content)))
	}
	d, err := zstd.NewReader(nil, opts...)
	if err != nil {
		return nil, fmt.Errorf("dictionary: %w", err)
	}
	defer d.Close()
	out, err := d.DecodeAll(stream, make([]byte, 0, s.Len))
	if err != nil {
		return nil, err
	}
	if int64(len(out)) != s.Len || sha256.Sum256(out) != s.Digest {
		return nil, ErrDigest
	}
	return out[:len(out):len(out)], nil
}

// window returns checkpoint i's window from the window blob: the bytes its span's
// matches read, the others zeroed.
func (r *Reader) window(i int) ([]byte, error) {
	p := &r.ix.points[i]
	z, err := spans.ReadFull(r.windows, p.winOff, p.winLen)
	if err != nil {
		return nil, fmt.Errorf("fetching window (bytes %d-%d of the window blob): %w", p.winOff, p.winOff+p.winLen, err)
	}
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(uint64(max(maxSparse(p.content), minWindow))))
	if err != nil {
		return nil, err
	}
	defer d.Close()
	sparse, err := d.DecodeAll(z, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errWindow, err)
	}
	w, err := unsparse(sparse, p.content)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errWindow, err)
	}
	return w, nil
}

// maxSparse bounds the sparse form of a window of n bytes: its bytes, two varints of at
// most 4 bytes per run (a run and a gap take 2 bytes at least), two more.
func maxSparse(n int64) int64 { return n + 4*(n+1) + 20 }

// unsparse returns the n-byte window a sparse window gives: uvarints of the zeros before
// the first run and of the run count, the uvarints of each run's gap (zeros since the
// last) and length, then the runs' bytes; every byte no run covers is zero.
func unsparse(b []byte, n int64) ([]byte, error) {
	r := wire.Reader{B: b, Corrupt: errWindow}
	pos, runs := r.Int(), r.Int()
	if r.Err != nil || runs > int64(len(r.B)) {
		return nil, errors.New("bad header")
	}
	type run struct{ at, n int64 }
	rs := make([]run, runs)
	var total int64
	for i := range rs {
		pos += r.Int()
		rs[i] = run{pos, r.Int()}
		pos += rs[i].n
		total += rs[i].n
		if r.Err != nil || pos > n {
			return nil, fmt.Errorf("run %d past the window's %d bytes", i, n)
		}
	}
	if total != int64(len(r.B)) {
		return nil, fmt.Errorf("%d bytes of runs, %d given", total, len(r.B))
	}
	w := make([]byte, n)
	for _, x := range rs {
		copy(w[x.at:], r.B[:x.n])
		r.B = r.B[x.n:]
	}
	return w, nil
}
