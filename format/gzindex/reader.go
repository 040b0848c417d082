package gzindex

import (
	"bytes"
	"compress/flate"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"lazypull/format/internal/spans"
)

// SpanError is the error of a span that cannot be served: its bytes fail to fetch or
// decode, or decode to output that does not match its digest.
type SpanError struct {
	Span             int
	CompOff, CompLen int64
	Err              error
}

func (e *SpanError) Error() string {
	return fmt.Sprintf("gzindex: span %d (compressed bytes %d-%d): %v", e.Span, e.CompOff, e.CompOff+e.CompLen, e.Err)
}

func (e *SpanError) Unwrap() error { return e.Err }

// ErrDigest is wrapped by the SpanError of a span whose output does not match its digest.
var ErrDigest = errors.New("span digest mismatch")

// Reader serves the uncompressed stream of a gzip blob through its index, decoding only
// the spans a read covers and serving none of a span's bytes before its whole output
// matches its digest. A run of spans needs its first span's window: the output before it
// if the reader keeps it, else the window from the window blob, checked against its
// digest. It keeps the most recently used verified spans, up to a number of
// bytes of output. It is safe for concurrent use.
type Reader struct {
	ix      *Index
	blob    io.ReaderAt
	windows io.ReaderAt
	s       *spans.Reader
}

// decodeBudget is the bytes a Reader's concurrent decodes may hold at once: many of
// ordinary spans (128 KiB compressed, a few times that decoded), one of the largest an
// index may claim (MaxSpanIn, MaxSpanOut).
const decodeBudget = 16 << 20

// NewReader returns a reader of the stream ix indexes, fetching compressed bytes from
// blob and windows from the window blob (either may be a range fetcher). A run of spans
// read needs the window of its first span only, and none when the reader keeps the
// output before it. It keeps the output of the spans read last, keep bytes of it at most
// (a span is up to MaxSpanOut; one larger than keep is not kept); keep <= 0 keeps none.
func NewReader(ix *Index, blob, windows io.ReaderAt, keep int64) *Reader {
	r := &Reader{ix: ix, blob: blob, windows: windows}
	r.s = spans.NewReader((*source)(r), keep, decodeBudget)
	return r
}

// ReadAt reads the uncompressed bytes [off, off+len(p)). Spans not kept are fetched in
// one ReadAt of blob per run of consecutive spans.
func (r *Reader) ReadAt(p []byte, off int64) (int, error) {
	return r.s.ReadAt(p, off, "gzindex")
}

// source is a Reader as the spans.Decoder of its spans.Reader.
type source Reader

func (s *source) Size() int64                       { return s.ix.size }
func (s *source) SpanAt(off int64) int              { return s.ix.SpanAt(off) }
func (s *source) Hold(i, j int) int64               { return s.s.RunSize(i, j) }
func (s *source) Decode(i, j int) ([][]byte, error) { return (*Reader)(s).decode(i, j) }
func (s *source) Span(i int) (off, n, compOff, compLen int64) {
	sp := s.ix.Span(i)
	return sp.Off, sp.Len, sp.CompOff, sp.CompLen
}

// decode fetches spans first..last in one read, and the first one's window at the same
// time if it needs one, and returns each one's verified output.
func (r *Reader) decode(first, last int) ([][]byte, error) {
	type result struct {
		w   []byte
		err error
	}
	win := make(chan result, 1)
	go func() {
		w, err := r.window(first)
		win <- result{w, err}
	}()
	src, err := r.s.Fetch(r.blob, first, last)
	w := <-win
	if err == nil && w.err != nil {
		s := r.ix.Span(first)
		return nil, &SpanError{Span: first, CompOff: s.CompOff, CompLen: s.CompLen, Err: w.err}
	}
	if err != nil {
		return nil, &SpanError{Span: first, CompOff: r.ix.Span(first).CompOff, CompLen: r.s.RunLen(first, last), Err: err}
	}
	v := &verifier{ix: r.ix, i: first, last: last}
	err = r.inflate(src, first, w.w, v)
	if errors.Is(err, errStop) {
		return v.done, nil
	}
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	s := r.ix.Span(v.i)
	return nil, &SpanError{Span: v.i, CompOff: s.CompOff, CompLen: s.CompLen, Err: err}
}

// inflate decodes src, the compressed bytes of a run of spans from first, whose window
// is window, into v until v stops it.
func (r *Reader) inflate(src []byte, first int, window []byte, v *verifier) error {
	p := r.ix.points[first]
	var err error
	f := newInflater(src, p.bit/8, nil, v.write)
	f.preset(window)
	if err := f.br.skip(uint(p.bit % 8)); err != nil {
		return err
	}
	v.buf = make([]byte, 0, r.ix.Span(first).Len)
	for {
		for last := false; !last; {
			if last, err = f.block(); err != nil {
				return err
			}
		}
		if _, _, err := f.trailer(); err != nil {
			return err
		}
		if f.br.atEOF() {
			return nil
		}
		if err := f.header(); err != nil {
			return err
		}
	}
}

// verifier is a reader's sink: it cuts output into spans and checks each one's digest.
type verifier struct {
	ix      *Index
	i, last int // span being filled, last span wanted
	buf     []byte
	done    [][]byte
}

func (v *verifier) write(p []byte) error {
	for len(p) > 0 {
		s := v.ix.Span(v.i)
		k := min(len(p), int(s.Len)-len(v.buf))
		v.buf = append(v.buf, p[:k]...)
		p = p[k:]
		if int64(len(v.buf)) < s.Len {
			continue
		}
		if sha256.Sum256(v.buf) != s.Digest {
			return ErrDigest
		}
		v.done = append(v.done, v.buf)
		if v.i == v.last {
			return errStop
		}
		v.i++
		v.buf = make([]byte, 0, v.ix.Span(v.i).Len)
	}
	return nil
}

// errNoWindow is wrapped when a checkpoint's window from the window blob does not match
// its digest or does not inflate to its length.
var errNoWindow = errors.New("bad window")

// window returns checkpoint i's window, uncompressed: the output before the span if the
// reader keeps it, else fetched from the window blob, checked against its digest, and
// inflated.
func (r *Reader) window(i int) ([]byte, error) {
	p := &r.ix.points[i]
	if p.windowLen == 0 {
		return nil, nil
	}
	if w := r.s.Before(i, int64(p.windowLen), nil); w != nil {
		return w, nil
	}
	z, err := spans.ReadFull(r.windows, p.winOff, p.winLen)
	if err != nil {
		return nil, fmt.Errorf("fetching window (bytes %d-%d of the window blob): %w", p.winOff, p.winOff+p.winLen, err)
	}
	if sha256.Sum256(z) != p.winDigest {
		return nil, fmt.Errorf("%w: bytes %d-%d of the window blob do not match their digest", errNoWindow, p.winOff, p.winOff+p.winLen)
	}
	w := make([]byte, p.windowLen)
	zr := flate.NewReader(bytes.NewReader(z))
	defer zr.Close()
	if _, err := io.ReadFull(zr, w); err != nil {
		return nil, fmt.Errorf("%w: %v", errNoWindow, err)
	}
	if n, _ := zr.Read(make([]byte, 1)); n != 0 {
		return nil, fmt.Errorf("%w: longer than %d bytes", errNoWindow, p.windowLen)
	}
	return w, nil
}
