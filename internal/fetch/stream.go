package fetch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
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
	var s *stream
	err := b.r.retry(ctx, "blob", func() []any { return []any{"digest", b.digest.String()} }, func() (err *reqErr) {
		s, err = b.open(ctx)
		return err
	})
	if err != nil {
		return nil, b.r.toError(err, b.digest.String(), Range{Len: b.size})
	}
	return s, nil
}

// open tries the endpoints in order for the blob's GET.
func (b *Blob) open(ctx context.Context) (*stream, *reqErr) {
	r := b.r
	eps := r.endpointsFor(capPull)
	if len(eps) == 0 {
		return nil, &reqErr{host: r.host, err: errNoEndpoint}
	}
	var errs []*reqErr
	for _, e := range eps {
		s, err := b.openAt(ctx, e)
		if err == nil {
			return s, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, joinErrs(errs)
}

func (b *Blob) openAt(ctx context.Context, e *endpoint) (*stream, *reqErr) {
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
		req.Header.Set("Accept-Encoding", "identity")
	})
	if err != nil {
		return fail(classify(e.host, err))
	}
	if resp.StatusCode != http.StatusOK {
		re := statusErr(e.host, resp)
		resp.Body.Close()
		return fail(re)
	}
	if resp.ContentLength >= 0 && resp.ContentLength != b.size {
		resp.Body.Close()
		return fail(&reqErr{host: e.host, status: resp.StatusCode, err: malformed("a body of %d bytes for a blob of %d", resp.ContentLength, b.size)})
	}
	return &stream{b: b, resp: resp, body: &countingReader{r: resp.Body, total: &r.stats.bytes}, sum: sha256.New(), start: start, host: e.host}, nil
}

// stream is an open blob GET (Open).
type stream struct {
	b     *Blob
	resp  *http.Response
	body  *countingReader
	sum   hash.Hash
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
	left := s.b.size - s.body.n
	if int64(len(p)) > left {
		p = p[:left]
	}
	if len(p) == 0 {
		s.err = s.end()
		return 0, s.err
	}
	n, err := s.body.Read(p)
	s.sum.Write(p[:n])
	s.b.r.stats.delivered.Add(int64(n))
	if err == io.EOF && s.body.n < s.b.size {
		err = io.ErrUnexpectedEOF
	}
	if err == io.EOF {
		err = nil // checked on the next Read, at the blob's end
	}
	if err != nil {
		re := classify(s.host, err)
		s.err = s.b.r.toError(re, s.b.digest.String(), Range{Off: s.body.n, Len: s.b.size - s.body.n})
		s.close(re)
	}
	return n, s.err
}

// end checks the digest of the whole blob, read.
func (s *stream) end() error {
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
