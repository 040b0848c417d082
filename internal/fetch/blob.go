package fetch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Blob is a blob of the repository, read by byte ranges. Reads of the same range that
// overlap in time, through any Blob of the same digest, share one request.
type Blob struct {
	r      *Registry
	digest v1.Hash
	size   int64
}

// Blob returns a reader of the blob with the given digest and size (from its descriptor).
// It sends nothing until read.
func (r *Registry) Blob(digest v1.Hash, size int64) *Blob {
	return &Blob{r: r, digest: digest, size: size}
}

// Layer returns a reader of the blob a descriptor names.
func (r *Registry) Layer(desc v1.Descriptor) *Blob { return r.Blob(desc.Digest, desc.Size) }

// Digest is the blob's digest.
func (b *Blob) Digest() v1.Hash { return b.digest }

// Size is the blob's size.
func (b *Blob) Size() int64 { return b.size }

// ReadAt reads len(p) bytes at off in one request (a single Range GET, nothing before it
// when the registry lets anonymous clients read), with io.ReaderAt semantics: fewer bytes
// and io.EOF at the end of the blob. It is ReadAtContext without a deadline.
func (b *Blob) ReadAt(p []byte, off int64) (int, error) {
	return b.ReadAtContext(context.Background(), p, off)
}

// ReadAtContext is ReadAt bounded by ctx.
func (b *Blob) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("fetch %s: negative offset %d", b.digest, off)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if off >= b.size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), b.size-off)
	err := b.Fetch(ctx, []Range{{Off: off, Len: n}}, func(_ Range, data []byte) error {
		copy(p, data)
		return nil
	})
	if err != nil {
		return 0, err
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// ReaderAt returns an io.ReaderAt whose reads are bounded by ctx, to hand to code that
// takes one. Each ReadAt is a request for all of its buffer, allocated by the caller
// before any byte arrives: a range whose length is not the caller's own (an index's, from
// the manifest) is better read with OpenRange.
func (b *Blob) ReaderAt(ctx context.Context) io.ReaderAt { return ctxReaderAt{ctx, b} }

type ctxReaderAt struct {
	ctx context.Context
	b   *Blob
}

func (c ctxReaderAt) ReadAt(p []byte, off int64) (int, error) {
	return c.b.ReadAtContext(c.ctx, p, off)
}

// MaxReadAll bounds the blob ReadAll reads: its size is the descriptor's word, and the
// bytes are allocated before they arrive. It is the bound lazypull convert puts on a
// manifest or config; configs are kilobytes.
const MaxReadAll = 64 << 20

// ReadAll reads the whole blob, of at most MaxReadAll bytes, in one request and checks it
// against its digest: for configs and other small blobs.
func (b *Blob) ReadAll(ctx context.Context) ([]byte, error) {
	if err := b.check(); err != nil {
		return nil, err
	}
	if b.size > MaxReadAll {
		return nil, fmt.Errorf("fetch %s: a blob of %d bytes, over the limit of %d read whole", b.digest, b.size, MaxReadAll)
	}
	if b.digest.Algorithm != "sha256" {
		return nil, fmt.Errorf("fetch %s: cannot verify a %s digest", b.digest, b.digest.Algorithm)
	}
	out := make([]byte, b.size)
	if _, err := b.ReadAtContext(ctx, out, 0); err != nil && !(errors.Is(err, io.EOF) && b.size == 0) {
		return nil, err
	}
	sum := sha256.Sum256(out)
	if got := hex.EncodeToString(sum[:]); got != b.digest.Hex {
		return nil, &Error{Registry: b.r.host, Repo: b.r.repo, Digest: b.digest.String(), Err: fmt.Errorf("content has digest sha256:%s", got)}
	}
	return out, nil
}

func (b *Blob) check() error {
	if b.digest.Algorithm == "" || b.digest.Hex == "" {
		return errors.New("fetch: blob without a digest")
	}
	if b.size < 0 {
		return fmt.Errorf("fetch %s: negative size %d", b.digest, b.size)
	}
	return nil
}

// Fetch reads ranges of the blob and calls fn once per range asked for, with exactly its
// bytes, from the goroutine that called Fetch, in the order the bytes come. The slice is
// valid only during the call and shared with other callers waiting on the same range:
// fn must not change it or keep it. Fetch returns the first error, from fn or from the
// registry (an *Error, after retries), or ctx.Err(); fn may have been called for some
// ranges by then.
//
// Ranges are sorted and merged where they touch, overlap or lie close (see WithCoalescing),
// packed into multi-range requests where the endpoint takes them (else one request per
// range, from the first refusal on), and sent in parallel within the Registry's bound. A
// range that other callers are fetching already is not asked for again: they share the
// request, which goes on while any of them still waits.
func (b *Blob) Fetch(ctx context.Context, ranges []Range, fn func(Range, []byte) error) error {
	if err := b.check(); err != nil {
		return err
	}
	for _, rg := range ranges {
		if rg.Off < 0 || rg.Len < 0 || rg.Off > b.size-rg.Len {
			return fmt.Errorf("fetch %s: range %d+%d outside the %d-byte blob", b.digest, rg.Off, rg.Len, b.size)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	wants, err := distinctWants(ranges, fn)
	if err != nil || len(wants) == 0 {
		return err
	}
	r := b.r
	sub := make(chan *flight, len(wants))
	byFlight := b.join(ctx, wants, sub)
	pending := len(wants)
	defer func() {
		if pending == 0 {
			return
		}
		r.mu.Lock()
		for _, w := range wants {
			r.leaveLocked(w.f, sub)
		}
		r.mu.Unlock()
	}()
	for pending > 0 {
		select {
		case f := <-sub:
			pending--
			if f.err != nil {
				return f.err
			}
			w := byFlight[f]
			for range w.count {
				if err := fn(f.r, f.data); err != nil {
					return err
				}
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// want is a range one Fetch asks for, and the flight that brings it.
type want struct {
	r     Range
	count int // times asked for in this call
	f     *flight
}

// distinctWants returns the distinct non-empty ranges of ranges, in order, counting
// repeats; fn gets empty ranges at once.
func distinctWants(ranges []Range, fn func(Range, []byte) error) ([]*want, error) {
	index := map[Range]*want{}
	var wants []*want
	for _, rg := range ranges {
		if rg.Len == 0 {
			if err := fn(rg, []byte{}); err != nil {
				return nil, err
			}
			continue
		}
		if w := index[rg]; w != nil {
			w.count++
			continue
		}
		w := &want{r: rg, count: 1}
		index[rg] = w
		wants = append(wants, w)
	}
	return wants, nil
}

// join joins the flights for wants that are under way and starts the others, each
// reporting to sub when done; it returns which want each flight brings.
func (b *Blob) join(ctx context.Context, wants []*want, sub chan *flight) map[*flight]*want {
	r := b.r
	byFlight := make(map[*flight]*want, len(wants))
	var mine []*flight
	r.mu.Lock()
	for _, w := range wants {
		k := flightKey{digest: b.digest.String(), off: w.r.Off, len: w.r.Len}
		f := r.flights[k]
		if f == nil {
			f = &flight{key: k, r: w.r}
			r.flights[k] = f
			mine = append(mine, f)
		}
		f.refs++
		f.subs = append(f.subs, sub)
		w.f = f
		byFlight[f] = w
	}
	if len(mine) == 0 {
		r.mu.Unlock()
		return byFlight
	}
	// The requests outlive this caller's ctx while others wait on them; they are
	// cancelled when no one waits any more.
	gctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	g := &group{live: len(mine), cancel: cancel}
	for _, f := range mine {
		f.g = g
	}
	r.mu.Unlock()
	b.launch(gctx, mine)
	return byFlight
}

// flightKey names a range of a blob being fetched.
type flightKey struct {
	digest   string
	off, len int64
}

// flight is a range being fetched, and the callers waiting on it.
type flight struct {
	key       flightKey
	r         Range
	rank      int // its place among the ranges its caller asked for (launch)
	g         *group
	refs      int // callers waiting
	done      bool
	abandoned bool // every caller went away first
	data      []byte
	err       error
	subs      []chan *flight
}

// group is the flights one caller started together; its requests run under a context
// cancelled once none of its flights has anyone waiting.
type group struct {
	live   int // flights neither done nor abandoned
	cancel context.CancelFunc
}

// leaveLocked takes a caller that stopped waiting off a flight. r.mu is held.
func (r *Registry) leaveLocked(f *flight, sub chan *flight) {
	if f.done || f.abandoned {
		return
	}
	f.refs--
	for i, s := range f.subs {
		if s == sub {
			f.subs = append(f.subs[:i], f.subs[i+1:]...)
			break
		}
	}
	if f.refs > 0 {
		return
	}
	f.abandoned = true
	if r.flights[f.key] == f {
		delete(r.flights, f.key)
	}
	f.g.live--
	if f.g.live == 0 {
		f.g.cancel()
	}
}

// complete ends a flight and tells everyone waiting.
func (r *Registry) complete(f *flight, data []byte, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if f.done || f.abandoned {
		return
	}
	f.done, f.data, f.err = true, data, err
	if r.flights[f.key] == f {
		delete(r.flights, f.key)
	}
	f.g.live--
	if f.g.live == 0 {
		f.g.cancel()
	}
	for _, s := range f.subs {
		s <- f // buffered for every flight its caller waits on
	}
	f.subs = nil
	if err == nil {
		r.stats.delivered.Add(f.r.Len)
	}
}

// launch plans the requests for new flights and starts them.
func (b *Blob) launch(ctx context.Context, fs []*flight) {
	r := b.r
	for i, f := range fs {
		f.rank = i
	}
	sortFlights(fs)
	spans := planSpans(fs, r.maxGap, r.maxRequest)
	perRequest := maxRangesPerRequest
	if eps := r.endpointsFor(capPull); len(eps) > 0 && eps[0].single.Load() {
		perRequest = 1
	}
	for _, job := range packRequests(spans, perRequest, r.maxRequest) {
		go b.runJob(ctx, job)
	}
}

// runJob fetches spans, retrying what failed in a way that may pass, and ends every flight
// of them one way or the other.
func (b *Blob) runJob(ctx context.Context, spans []*span) {
	err := b.r.retry(ctx, "blob", func() []any { return []any{"digest", b.digest.String(), "ranges", len(spans)} }, func() *reqErr {
		rest, err := b.tryEndpoints(ctx, spans)
		if err == nil || len(rest) == 0 {
			return nil
		}
		spans = rest
		return err
	})
	if err != nil {
		b.failSpans(spans, err)
	}
}

func (b *Blob) failSpans(spans []*span, e *reqErr) {
	for _, s := range spans {
		for _, f := range s.flights {
			b.r.complete(f, nil, b.r.toError(e, b.digest.String(), f.r))
		}
	}
}

// deliver ends the flights of a span with its bytes.
func (b *Blob) deliver(s *span, data []byte) {
	for _, f := range s.flights {
		lo, hi := f.r.Off-s.Off, f.r.End()-s.Off
		b.r.complete(f, data[lo:hi:hi], nil)
	}
}

// deliverPrefix ends the flights of a span whose bytes are all among the first n of data
// (the span's, still being read): a read waiting for the front of a large span gets it
// while the rest is on its way. deliver later ends the others (and skips these).
func (b *Blob) deliverPrefix(s *span, data []byte, n int64) {
	for _, f := range s.flights {
		lo, hi := f.r.Off-s.Off, f.r.End()-s.Off
		if hi <= n {
			b.r.complete(f, data[lo:hi:hi], nil)
		}
	}
}

// tryEndpoints tries the endpoints in order, each for what the ones before left.
func (b *Blob) tryEndpoints(ctx context.Context, spans []*span) ([]*span, *reqErr) {
	r := b.r
	eps := r.endpointsFor(capPull)
	if len(eps) == 0 {
		return spans, &reqErr{host: r.host, err: errNoEndpoint}
	}
	err := r.inTurn(ctx, eps, []any{"digest", b.digest.String()}, func(e *endpoint) *reqErr {
		rest, err := b.fromEndpoint(ctx, e, spans)
		spans = rest
		return err
	})
	if err == nil {
		return nil, nil
	}
	return spans, err
}

// fromEndpoint fetches spans from one endpoint: in one multi-range request unless the
// endpoint is known to refuse them, else (and for what a refusal left) one request per
// span, in parallel.
func (b *Blob) fromEndpoint(ctx context.Context, e *endpoint, spans []*span) ([]*span, *reqErr) {
	if len(spans) == 1 {
		return b.request(ctx, e, spans)
	}
	if !e.single.Load() {
		rest, err := b.request(ctx, e, spans)
		if err == nil || !err.fallback || len(rest) == 0 {
			return rest, err
		}
		spans = rest
	}
	rests := make([][]*span, len(spans))
	errs := make([]*reqErr, len(spans))
	var wg sync.WaitGroup
	for i, s := range spans {
		wg.Go(func() { rests[i], errs[i] = b.request(ctx, e, []*span{s}) })
	}
	wg.Wait()
	var rest []*span
	var failed []*reqErr
	for i := range spans {
		if errs[i] != nil {
			rest = append(rest, rests[i]...)
			failed = append(failed, errs[i])
		}
	}
	if len(rest) == 0 {
		return nil, nil
	}
	return rest, joinErrs(failed)
}

// markSingle records that an endpoint refuses multi-range requests, for good.
func (r *Registry) markSingle(e *endpoint, why error) {
	if e.single.CompareAndSwap(false, true) {
		r.stats.fallbacks.Add(1)
		r.log.Info("endpoint does not serve several ranges in one request; asking range by range from now on",
			"endpoint", e.host, "why", why)
	}
}

// request sends one GET for spans and delivers each span it answers. It returns the spans
// left and why, nil if none.
func (b *Blob) request(ctx context.Context, e *endpoint, spans []*span) (rest []*span, rerr *reqErr) {
	r := b.r
	tr, rerr := r.begin(ctx, e, kindBlob)
	if rerr != nil {
		return spans, rerr
	}
	defer func() { tr.end(rerr) }()

	resp, err := r.do(ctx, e, "blobs/"+b.digest.String(), func(req *http.Request) {
		req.Header.Set("Range", rangeHeader(byRank(spans)))
		req.Header.Set("Accept-Encoding", "identity") // ranges of the blob, not of a gzip of it
	})
	if err != nil {
		return spans, classify(e.host, err)
	}
	defer resp.Body.Close()
	body := tr.read(resp.Body)

	wants := make([]Range, len(spans))
	for i, s := range spans {
		wants[i] = s.Range
	}
	sink := func(i int, data []byte) { b.deliver(spans[i], data) }
	progress := func(i int, data []byte, n int64) { b.deliverPrefix(spans[i], data, n) }
	multi := len(spans) > 1
	var got []bool
	var perr error
	switch resp.StatusCode {
	case http.StatusPartialContent:
		mt, params, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		if mt == "multipart/byteranges" {
			got, perr = readMultipart(body, params["boundary"], wants, b.size, sink, progress)
		} else {
			got, perr = readSingle(body, resp.Header.Get("Content-Range"), resp.ContentLength, wants, b.size, sink, progress)
		}
	case http.StatusOK:
		// The server ignored the Range header. Use the blob's start when what was
		// asked for lies there; else ask otherwise (or give up).
		if end := wants[len(wants)-1].End(); end > r.maxRequest {
			err := fmt.Errorf("the registry answered a Range request with the whole blob; the range ends at %d, past the %d bytes lazypull reads through", end, r.maxRequest)
			if multi {
				r.markSingle(e, err)
				return spans, &reqErr{host: e.host, status: resp.StatusCode, err: err, fallback: true}
			}
			return spans, &reqErr{host: e.host, status: resp.StatusCode, err: err}
		}
		if multi {
			r.markSingle(e, errors.New("200 with the whole blob"))
		}
		got, perr = readWhole(body, resp.ContentLength, wants, b.size, sink)
	case http.StatusRequestedRangeNotSatisfiable, http.StatusBadRequest:
		se := statusErr(e.host, resp)
		if multi {
			r.markSingle(e, se.err)
			se.fallback = true
		}
		return spans, se
	default:
		return spans, statusErr(e.host, resp)
	}
	for i, ok := range got {
		if !ok {
			rest = append(rest, spans[i])
		}
	}
	if perr != nil {
		re := classify(e.host, endedEarly(resp, body, perr))
		re.status = resp.StatusCode
		if multi && errors.Is(re.err, errMalformed) {
			r.markSingle(e, re.err)
			re.fallback = true
		}
		return rest, re
	}
	if len(rest) > 0 {
		err := fmt.Errorf("answer served %d of %d ranges", len(spans)-len(rest), len(spans))
		if multi {
			r.markSingle(e, err)
			return rest, &reqErr{host: e.host, status: resp.StatusCode, err: err, fallback: true}
		}
		return rest, &reqErr{host: e.host, status: resp.StatusCode, err: malformed("%v", err)}
	}
	return nil, nil
}
