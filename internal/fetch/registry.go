package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus"
)

// Registry reads one repository of an OCI distribution registry: its manifests (Resolve)
// and its blobs (Blob). It is safe for concurrent use. Registries come from a Client
// (Client.Open), whose bound on requests in flight all of them share.
type Registry struct {
	host string // as in the reference, e.g. 127.0.0.1:5000
	repo string // repository path, e.g. library/python
	ref  name.Reference

	endpoints  []*endpoint
	sem        chan struct{}
	attempts   int
	backoff    time.Duration
	idle       time.Duration // WithIdleTimeout
	maxGap     int64
	maxRequest int64
	log        *slog.Logger
	metrics    *Metrics
	stats      counters

	mu       sync.Mutex
	flights  map[flightKey]*flight
	listings map[v1.Hash]*listing // referrers listings in progress (Referrers)

	rtts roundTrips // times to response headers (RoundTrip)
}

// endpoint is a mirror or the server, as tried in order.
type endpoint struct {
	host   string // host[:port]
	base   string // scheme://host[:port]/api-root (ends in /v2)
	caps   capability
	mirror bool
	client *http.Client
	single atomic.Bool // refuses multi-range requests: ask range by range
}

// Host is the registry's host[:port] as the reference names it.
func (r *Registry) Host() string { return r.host }

// Repository is the repository path, without the host.
func (r *Registry) Repository() string { return r.repo }

// Stats returns the running totals.
func (r *Registry) Stats() Stats { return r.stats.snapshot() }

// Collectors returns the Prometheus collectors this Registry counts into, for the caller to
// register where it likes.
func (r *Registry) Collectors() []prometheus.Collector { return r.metrics.Collectors() }

// endpointsFor returns the endpoints that may serve a capability, in order.
func (r *Registry) endpointsFor(c capability) []*endpoint {
	var out []*endpoint
	for _, e := range r.endpoints {
		if e.caps&c != 0 {
			out = append(out, e)
		}
	}
	return out
}

// acquire takes a place among the requests in flight.
func (r *Registry) acquire(ctx context.Context) error {
	select {
	case r.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *Registry) release() { <-r.sem }

// tracked is one request in flight: it holds a place among the requests (acquire) and is
// counted; end records it (kind, time, the bytes read through read) and gives the place
// back.
type tracked struct {
	r     *Registry
	kind  string
	start time.Time
	body  *countingReader // nil until read
}

// begin takes a place for one request of kind to e and counts it; the caller defers end.
func (r *Registry) begin(ctx context.Context, e *endpoint, kind string) (*tracked, *reqErr) {
	if err := r.acquire(ctx); err != nil {
		return nil, &reqErr{host: e.host, err: err}
	}
	r.stats.requests.Add(1)
	return &tracked{r: r, kind: kind, start: time.Now()}, nil
}

// read counts the answer's body as it is read.
func (t *tracked) read(body io.Reader) *countingReader {
	t.body = &countingReader{r: body, total: &t.r.stats.bytes}
	return t.body
}

// end records the request and gives its place back.
func (t *tracked) end(rerr *reqErr) {
	t.r.finish(t.kind, t.start, t.body, rerr)
	t.r.release()
}

// wait sleeps before retry number n (1 for the first): the base backoff doubled n-1 times,
// at most 32 times the base, with ±50% jitter, and no less than a server's Retry-After
// (itself capped at a minute).
func (r *Registry) wait(ctx context.Context, n int, retryAfter time.Duration) error {
	d := r.backoff << min(n-1, 5)
	if d > 0 {
		d = d/2 + rand.N(d)
	}
	d = max(d, min(retryAfter, time.Minute))
	if d <= 0 {
		return ctx.Err()
	}
	return Sleep(ctx, d)
}

// Sleep waits d, or until ctx ends: then it returns ctx's error.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// retry calls try until it succeeds (nil), fails in a way a retry would not cure, or the
// Registry's attempts are spent, waiting the backoff between tries; a failure once ctx has
// ended is ctx's. Each retry is logged, as a failed kind request with what attrs returns.
// It returns the last failure.
func (r *Registry) retry(ctx context.Context, kind string, attrs func() []any, try func() *reqErr) *reqErr {
	for attempt := 1; ; attempt++ {
		err := try()
		if err == nil {
			return nil
		}
		if ce := ctxErr(err.host, ctx); ce != nil {
			return ce
		}
		if !err.temporary || attempt >= r.attempts {
			return err
		}
		r.stats.retries.Add(1)
		r.metrics.retries.Inc()
		r.log.Warn(kind+" request failed; retrying", append(attrs(), "endpoint", err.host, "status", err.status,
			"retry", attempt, "of", r.attempts-1, "err", err.err)...)
		if werr := r.wait(ctx, attempt, err.retryAfter); werr != nil {
			return &reqErr{host: err.host, err: werr}
		}
	}
}

// newRequest makes a GET for a path under an endpoint's API root.
func (r *Registry) newRequest(ctx context.Context, e *endpoint, p string) (*http.Request, error) {
	u := e.base + "/" + r.repo + "/" + p
	if _, err := url.Parse(u); err != nil {
		return nil, fmt.Errorf("request URL: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	// Go's client copies it onto the requests that follow redirects.
	req.Header.Set("User-Agent", userAgent)
	return req, nil
}

// countingReader counts the bytes read through it, and notes whether the body ended
// cleanly (io.EOF rather than a cut).
type countingReader struct {
	r     io.Reader
	total *atomic.Int64 // the Registry's, counted as bytes come, before they are handed on
	n     int64
	clean bool
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	c.total.Add(int64(n))
	if err == io.EOF {
		c.clean = true
	}
	return n, err
}

// endedEarly tells a body that ended where its sender meant it to, but before the answer
// in it was complete (a malformed answer), from one cut short in transit (which a retry
// may cure). Go's client reports a framed body (Content-Length or chunked) cut short as
// io.ErrUnexpectedEOF, never io.EOF; a body framed by closing the connection cannot tell.
func endedEarly(resp *http.Response, body *countingReader, err error) error {
	framed := resp.ContentLength >= 0 || len(resp.TransferEncoding) > 0
	if errors.Is(err, io.ErrUnexpectedEOF) && body.clean && framed {
		return malformed("the body ends before the answer does")
	}
	return err
}

// finish records one request: its outcome, bytes and time.
func (r *Registry) finish(kind string, start time.Time, body *countingReader, e *reqErr) {
	outcome := outcomeOK
	switch {
	case e == nil:
	case e.fallback:
		outcome = outcomeFallback
	case e.absent:
		outcome = outcomeNotFound
	default:
		outcome = outcomeError
		r.stats.errors.Add(1)
	}
	var n int64
	if body != nil {
		n = body.n
	}
	d := time.Since(start)
	r.metrics.observe(kind, outcome, n, d)
	if outcome == outcomeError {
		r.log.Debug("request failed", "kind", kind, "endpoint", e.host, "status", e.status, "bytes", n, "seconds", d.Seconds(), "err", e.err)
	} else {
		r.log.Debug("request", "kind", kind, "outcome", outcome, "bytes", n, "seconds", d.Seconds())
	}
}

// toError makes the error a caller sees.
func (r *Registry) toError(e *reqErr, digest string, rg Range) *Error {
	return &Error{Registry: e.host, Repo: r.repo, Digest: digest, Range: rg, StatusCode: e.status, Err: e.err, temporary: e.temporary}
}

// inTurn tries the endpoints in order until one succeeds (try returns nil) or ctx ends, and
// returns their failures joined (joinErrs). With attrs (what they say of the request), a
// failure before the last endpoint is logged.
func (r *Registry) inTurn(ctx context.Context, eps []*endpoint, attrs []any, try func(e *endpoint) *reqErr) *reqErr {
	var errs []*reqErr
	for i, e := range eps {
		err := try(e)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
		if attrs != nil && i+1 < len(eps) && !err.absent {
			r.log.Warn("endpoint failed; trying the next", slices.Concat(attrs, []any{"endpoint", e.host,
				"next", eps[i+1].host, "status", err.status, "err", err.err})...)
		}
	}
	return joinErrs(errs)
}

// joinErrs merges the failures of one try at each endpoint: the last one is reported (the
// server's, when mirrors come first), temporary if any was.
func joinErrs(errs []*reqErr) *reqErr {
	if len(errs) == 0 {
		return nil
	}
	last := *errs[len(errs)-1]
	for _, e := range errs {
		if e.temporary {
			last.temporary = true
			last.retryAfter = max(last.retryAfter, e.retryAfter)
		}
	}
	return &last
}

// ctxErr reports a cancelled context as a reqErr that is not retried.
func ctxErr(host string, ctx context.Context) *reqErr {
	if err := ctx.Err(); err != nil {
		return &reqErr{host: host, err: err}
	}
	return nil
}

var errNoEndpoint = errors.New("no endpoint with that capability in the hosts configuration")
