package spans

import (
	"fmt"
	"io"
	"sync"
)

// Decoder is an index's side of a Reader.
type Decoder interface {
	// Size is the length of the stream.
	Size() int64
	// SpanAt returns the span holding stream offset off, in [0, Size()).
	SpanAt(off int64) int
	// Span returns span i's range in the stream and its range of compressed bytes.
	Span(i int) (off, n, compOff, compLen int64)
	// Hold returns the bytes decoding spans i..j holds, counted against the budget.
	Hold(i, j int) int64
	// Decode fetches spans i..j in one read and returns each one's verified output; it
	// may read the kept spans through Reader.Cached.
	Decode(i, j int) ([][]byte, error)
}

// MaxRun bounds the compressed bytes one Decode of a run of spans fetches (a run of one
// span may fetch more).
const MaxRun = 64 << 20

// Reader serves a stream through a Decoder. It is safe for concurrent use.
type Reader struct {
	d Decoder

	mu    sync.Mutex
	cache []cached // most recently used last
	kept  int64    // bytes of output in cache
	keep  int64    // at most this many

	// Decodes in flight hold at most budget bytes at once (a decode larger than budget
	// runs alone), whatever spans a hostile index claims. done is signalled when one ends.
	inflight, budget int64
	done             *sync.Cond
}

type cached struct {
	i   int
	out []byte
}

// NewReader returns a reader of d's stream that keeps the output of the spans read last,
// keep bytes of it at most (a span larger than keep is not kept; keep <= 0 keeps none),
// and lets decodes in flight hold budget bytes at most.
func NewReader(d Decoder, keep, budget int64) *Reader {
	r := &Reader{d: d, keep: max(keep, 0), budget: budget}
	r.done = sync.NewCond(&r.mu)
	return r
}

// SetBudget changes the decode budget (for tests).
func (r *Reader) SetBudget(n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.budget = n
}

// Stats returns the spans and bytes of output kept, and the bytes decodes in flight hold.
func (r *Reader) Stats() (spans int, kept, inflight int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.cache), r.kept, r.inflight
}

func (r *Reader) acquire(n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for r.inflight > 0 && r.inflight+n > r.budget {
		r.done.Wait()
	}
	r.inflight += n
}

func (r *Reader) release(n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inflight -= n
	r.done.Broadcast()
}

// ReadAt reads the stream's bytes [off, off+len(p)). Spans not kept are decoded a run
// of consecutive ones at a time, each run at most MaxRun compressed bytes. prefix names
// the package in errors.
func (r *Reader) ReadAt(p []byte, off int64, prefix string) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%s: negative offset %d", prefix, off)
	}
	size := r.d.Size()
	if off >= size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), size-off)
	first, last := r.d.SpanAt(off), r.d.SpanAt(off+want-1)
	n := 0
	for i := first; i <= last; {
		out := r.Cached(i)
		run := [][]byte{out}
		if out == nil {
			j := i
			for j < last && r.Cached(j+1) == nil && r.RunLen(i, j+1) <= MaxRun {
				j++
			}
			var err error
			hold := r.d.Hold(i, j)
			r.acquire(hold)
			run, err = r.d.Decode(i, j)
			r.release(hold)
			if err != nil {
				return n, err
			}
		}
		for k, out := range run {
			s, _, _, _ := r.d.Span(i + k)
			n += copy(p[n:want], out[off+int64(n)-s:])
			r.put(i+k, out)
		}
		i += len(run)
	}
	if int64(n) < int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}

// RunLen returns the compressed length of spans i..j.
func (r *Reader) RunLen(i, j int) int64 {
	_, _, a, _ := r.d.Span(i)
	_, _, b, n := r.d.Span(j)
	return b + n - a
}

// RunSize returns what decoding spans i..j holds at least: their compressed bytes and
// their output.
func (r *Reader) RunSize(i, j int) int64 {
	n := r.RunLen(i, j)
	for k := i; k <= j; k++ {
		_, l, _, _ := r.d.Span(k)
		n += l
	}
	return n
}

// Fetch reads the compressed bytes of spans i..j from blob in one ReadAt.
func (r *Reader) Fetch(blob io.ReaderAt, i, j int) ([]byte, error) {
	_, _, off, _ := r.d.Span(i)
	b, err := ReadFull(blob, off, r.RunLen(i, j))
	if err != nil {
		return nil, fmt.Errorf("fetching: %w", err)
	}
	return b, nil
}

// ReadFull reads bytes [off, off+n) of ra; a short read is io.ErrUnexpectedEOF unless
// ra says why.
func ReadFull(ra io.ReaderAt, off, n int64) ([]byte, error) {
	b := make([]byte, n)
	if k, err := ra.ReadAt(b, off); k < len(b) {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return b, nil
}

// Cached returns span i's output if it is kept, else nil.
func (r *Reader) Cached(i int) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.cache {
		if c.i == i {
			return c.out
		}
	}
	return nil
}

func (r *Reader) put(i int, out []byte) {
	if r.keep == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, c := range r.cache {
		if c.i == i {
			r.cache = append(r.cache[:k], r.cache[k+1:]...)
			r.kept -= int64(len(c.out))
			break
		}
	}
	if int64(len(out)) > r.keep {
		return
	}
	for len(r.cache) > 0 && r.kept+int64(len(out)) > r.keep {
		r.kept -= int64(len(r.cache[0].out))
		r.cache = r.cache[1:]
	}
	r.cache = append(r.cache, cached{i: i, out: out})
	r.kept += int64(len(out))
}

// Before returns the n bytes of output before span k if the spans before it are at hand
// (decoded in the run under way, which started at span k-len(run), or kept), else nil:
// the window a span needs, without fetching it.
func (r *Reader) Before(k int, n int64, run [][]byte) []byte {
	var parts [][]byte
	have := int64(0)
	for i := k - 1; i >= 0 && have < n; i-- {
		out := r.Cached(i)
		if j := i - (k - len(run)); j >= 0 {
			out = run[j]
		}
		if out == nil {
			return nil
		}
		parts = append(parts, out)
		have += int64(len(out))
	}
	if have < n {
		return nil
	}
	b := make([]byte, 0, have)
	for i := len(parts) - 1; i >= 0; i-- {
		b = append(b, parts[i]...)
	}
	return b[have-n:]
}
