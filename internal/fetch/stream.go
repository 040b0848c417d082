package fetch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"mime"
	"net/http"
	"time"
)

// Open reads the whole blob in one GET, handing its bytes on as they arrive: for a blob
// whose parts the caller checks one by one (a profile's pack), so that the first parts are
// used while the last are on the wire. The blob's own digest is checked at its end: the
// reader's last Read returns an error instead of io.EOF when it does not match, or when
// the body is cut short. Only the request is retried (and tried at the next endpoint); a
// body that fails half-way is the caller's to give up on. Until Close, the request holds
// one of the Registry's places among the requests in flight.
func (b *Blob) Open(ctx context.Context) (io.ReadCloser, error) {
	if err := b.check(); err != nil {
		return nil, err
	}
	if b.digest.Algorithm != "sha256" {
		return nil, fmt.Errorf("fetch %s: cannot verify a %s digest", b.digest, b.digest.Algorithm)
	}
	return b.openRange(ctx, Range{Len: b.size}, false)
}

// OpenRange reads the n bytes at off in one Range GET, handing them on as they arrive: for
// a range whose length is a claim the caller cannot trust (a layer's index, whose size is
// the manifest's word), so that what the caller holds grows with the bytes the registry
// sends, not with the bytes claimed. Its Read returns io.EOF after exactly n bytes, and an
// *Error wrapping io.ErrUnexpectedEOF if the body ends before. The answer is a 206 whose
// Content-Range is exactly the range, or a 200 with the whole blob when the range ends
// within the first bytes Fetch would read through (WithCoalescing); anything else fails.
// Nothing is checked against a digest: that is the caller's. The request is retried as
// Fetch's are, and a body that breaks off is asked again for what is left of the range,
// within the Registry's attempts (WithRetry) in all; until Close it holds one of the
// Registry's places among the requests.
func (b *Blob) OpenRange(ctx context.Context, off, n int64) (io.ReadCloser, error) {
	if err := b.check(); err != nil {
		return nil, err
	}
	if off < 0 || n <= 0 || off > b.size-n {
		return nil, fmt.Errorf("fetch %s: range %d+%d outside the %d-byte blob", b.digest, off, n, b.size)
	}
	return b.openRange(ctx, Range{Off: off, Len: n}, true)
}

func (b *Blob) openRange(ctx context.Context, rg Range, ranged bool) (io.ReadCloser, error) {
	var s *stream
	err := b.r.retry(ctx, "blob", func() []any { return []any{"digest", b.digest.String()} }, func() (err *reqErr) {
		s, err = b.open(ctx, rg, ranged)
		return err
	})
	if err != nil {
		return nil, b.r.toError(err, b.digest.String(), rg)
	}
	s.ctx, s.tries = ctx, 1
	return s, nil
}

// open tries the endpoints in order for the blob's GET.
func (b *Blob) open(ctx context.Context, rg Range, ranged bool) (*stream, *reqErr) {
	r := b.r
	eps := r.endpointsFor(capPull)
	if len(eps) == 0 {
		return nil, &reqErr{host: r.host, err: errNoEndpoint}
	}
	var s *stream
	err := r.inTurn(ctx, eps, nil, func(e *endpoint) *reqErr {
		var err *reqErr
		s, err = b.openAt(ctx, e, rg, ranged)
		return err
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// openAt sends the GET of rg to one endpoint: of the whole blob, checked against its
// digest at its end, unless ranged.
func (b *Blob) openAt(ctx context.Context, e *endpoint, rg Range, ranged bool) (*stream, *reqErr) {
	r := b.r
	if err := r.acquire(ctx); err != nil {
		return nil, &reqErr{host: e.host, err: err}
	}
	start := time.Now()
	r.stats.requests.Add(1)
	fail := func(re *reqErr) (*stream, *reqErr) {
		r.finish(kindBlob, start, nil, re)
		r.release()
		return nil, re
	}
	resp, err := r.do(ctx, e, "blobs/"+b.digest.String(), func(req *http.Request) {
		if ranged {
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", rg.Off, rg.End()-1))
		}
		req.Header.Set("Accept-Encoding", "identity")
	})
	if err != nil {
		return fail(classify(e.host, err))
	}
	body := &countingReader{r: resp.Body, total: &r.stats.bytes}
	bad := func(format string, args ...any) (*stream, *reqErr) {
		resp.Body.Close()
		re := &reqErr{host: e.host, status: resp.StatusCode, err: malformed(format, args...)}
		r.finish(kindBlob, start, body, re)
		r.release()
		return nil, re
	}
	switch {
	case resp.StatusCode == http.StatusPartialContent && ranged:
		if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt == "multipart/byteranges" {
			return bad("a multipart answer to the single range %s", rg)
		}
		first, last, err := parseContentRange(resp.Header.Get("Content-Range"), b.size)
		if err != nil {
			return bad("%v", err)
		}
		if first != rg.Off || last != rg.End()-1 {
			return bad("Content-Range %d-%d for the range %s", first, last, rg)
		}
		if resp.ContentLength >= 0 && resp.ContentLength != rg.Len {
			return bad("Content-Length %d for the range %s", resp.ContentLength, rg)
		}
	case resp.StatusCode == http.StatusOK:
		if resp.ContentLength >= 0 && resp.ContentLength != b.size {
			return bad("a body of %d bytes for a blob of %d", resp.ContentLength, b.size)
		}
		if ranged && rg.End() > r.maxRequest {
			return bad("the registry answered a Range request with the whole blob; the range ends at %d, past the %d bytes lazypull reads through", rg.End(), r.maxRequest)
		}
		if _, err := io.CopyN(io.Discard, body, rg.Off); err != nil {
			resp.Body.Close()
			re := classify(e.host, endedEarly(resp, body, unexpected(err)))
			re.status = resp.StatusCode
			r.finish(kindBlob, start, body, re)
			r.release()
			return nil, re
		}
	default:
		re := statusErr(e.host, resp)
		resp.Body.Close()
		return fail(re)
	}
	s := &stream{b: b, rg: rg, resp: resp, body: body, start: start, host: e.host}
	if !ranged {
		s.sum = sha256.New()
	}
	return s, nil
}

// stream is an open blob GET (Open, OpenRange).
type stream struct {
	b     *Blob
	ctx   context.Context
	tries int   // requests sent for a range (resume)
	rg    Range // what it hands on
	n     int64 // of it, handed on
	resp  *http.Response
	body  *countingReader
	sum   hash.Hash // of the whole blob (Open); nil for a range
	start time.Time
	host  string
	err   error // the error every Read returns from now on
	done  bool  // finish and release ran
}

func (s *stream) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if len(p) == 0 {
		return 0, nil // reads nothing; only a Read with room at the blob's end ends it
	}
	left := s.rg.Len - s.n
	if int64(len(p)) > left {
		p = p[:left]
	}
	if len(p) == 0 {
		s.err = s.end()
		return 0, s.err
	}
	// A request whose context ended fails its next Read, even when the transport holds the
	// rest of the body already (a small blob on loopback): what was asked for is over.
	var n int
	err := s.ctx.Err()
	if err == nil {
		n, err = s.body.Read(p)
	}
	s.n += int64(n)
	if s.sum != nil {
		s.sum.Write(p[:n])
	}
	s.b.r.stats.delivered.Add(int64(n))
	if err == io.EOF && s.n < s.rg.Len {
		err = io.ErrUnexpectedEOF
	}
	if err == io.EOF {
		err = nil // checked on the next Read, at the end
	}
	if err == nil && s.sum == nil && s.n == s.rg.Len {
		s.close(nil) // a range read whole: its place goes to the next request now
	}
	if err != nil {
		re := classify(s.host, err)
		re.status = s.resp.StatusCode
		if s.sum == nil && s.resume(re) {
			if n == 0 {
				return s.Read(p)
			}
			return n, nil
		}
		s.err = s.b.r.toError(re, s.b.digest.String(), Range{Off: s.rg.Off + s.n, Len: s.rg.Len - s.n})
		s.close(re)
	}
	return n, s.err
}

// resume asks again, after a range's body broke off in a way a retry may cure (re), for
// what is left of the range, while the Registry's attempts last; the bytes handed on stand.
// It reports whether a new answer took the broken one's place.
func (s *stream) resume(re *reqErr) bool {
	r := s.b.r
	if !re.temporary || s.tries >= r.attempts || s.ctx.Err() != nil {
		return false
	}
	s.close(re)
	for ; s.tries < r.attempts; s.tries++ {
		r.stats.retries.Add(1)
		r.metrics.retries.Inc()
		r.log.Warn("blob request failed; retrying", "digest", s.b.digest.String(), "left", s.rg.Len-s.n, "endpoint", re.host,
			"status", re.status, "retry", s.tries, "of", r.attempts-1, "err", re.err)
		if r.wait(s.ctx, s.tries, re.retryAfter) != nil {
			return false
		}
		ns, err := s.b.open(s.ctx, Range{Off: s.rg.Off + s.n, Len: s.rg.Len - s.n}, true)
		if err == nil {
			s.tries++
			s.resp, s.body, s.start, s.host, s.done = ns.resp, ns.body, ns.start, ns.host, false
			return true
		}
		if !err.temporary {
			return false
		}
		re = err
	}
	return false
}

// end checks the digest of the whole blob, read; a range has none.
func (s *stream) end() error {
	if s.sum == nil {
		s.close(nil)
		return io.EOF
	}
	if got := hex.EncodeToString(s.sum.Sum(nil)); got != s.b.digest.Hex {
		re := &reqErr{host: s.host, status: s.resp.StatusCode, err: fmt.Errorf("content has digest sha256:%s", got)}
		s.close(re)
		return s.b.r.toError(re, s.b.digest.String(), Range{Len: s.b.size})
	}
	s.close(nil)
	return io.EOF
}

// Close ends the request, read to its end or not.
func (s *stream) Close() error {
	if !s.done && s.err == nil {
		s.err = fmt.Errorf("fetch %s: closed", s.b.digest)
	}
	s.close(nil)
	return nil
}

func (s *stream) close(re *reqErr) {
	if s.done {
		return
	}
	s.done = true
	s.resp.Body.Close()
	s.b.r.finish(kindBlob, s.start, s.body, re)
	s.b.r.release()
}
