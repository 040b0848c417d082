package fetch

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/prometheus/client_golang/prometheus"
)

// Registry reads one repository of an OCI distribution registry: its manifests (Resolve)
// and its blobs (Blob). It is safe for concurrent use; all its requests share one bound.
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

	mu      sync.Mutex
	flights map[flightKey]*flight
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

// New makes a Registry for the repository a reference names ("host[:port]/path[:tag]" or
// "...@sha256:..."; a tag or digest in it is what Resolve resolves when given none). It
// sends nothing: credentials are looked up, and the token fetched, the first time the
// registry asks for them.
func New(ref string, opts ...Option) (*Registry, error) {
	o := defaultOptions()
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("fetch: reference %q: %w", ref, err)
	}
	repo := r.Context()
	reg := &Registry{
		host:       repo.RegistryStr(),
		repo:       repo.RepositoryStr(),
		ref:        r,
		sem:        make(chan struct{}, o.concurrency),
		attempts:   o.attempts,
		backoff:    o.backoff,
		idle:       o.idle,
		maxGap:     o.maxGap,
		maxRequest: o.maxRequest,
		metrics:    o.metrics,
		flights:    map[flightKey]*flight{},
	}
	if reg.metrics == nil {
		reg.metrics = NewMetrics()
	}
	log := o.logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reg.log = log.With("registry", reg.host, "repo", reg.repo)

	hosts, err := endpointsOf(o, reg.host, func(file string, keys []string) {
		reg.log.Warn("hosts file: ignoring settings lazypull does not use", "file", file, "keys", strings.Join(keys, ","))
	})
	if err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	base := o.transport
	if base == nil {
		base = sharedTransport()
	}
	scopes := []string{repo.Scope("pull")}
	for _, h := range hosts {
		rt := base
		if h.skipVerify {
			t, ok := base.(*http.Transport)
			if !ok {
				return nil, fmt.Errorf("fetch: %s: skip_verify needs the default transport", h.url.Host)
			}
			t = t.Clone()
			if t.TLSClientConfig == nil {
				t.TLSClientConfig = &tls.Config{}
			}
			t.TLSClientConfig.InsecureSkipVerify = true
			rt = t
		}
		nreg, err := name.NewRegistry(h.url.Host)
		if err != nil {
			return nil, fmt.Errorf("fetch: endpoint %s: %w", h.url.Host, err)
		}
		epLog := reg.log.With("endpoint", h.url.Host)
		at := &authTransport{
			base:      rt,
			reg:       nreg,
			origin:    canonicalOrigin(h.url),
			keychain:  o.keychain,
			scopes:    scopes,
			insecure:  h.url.Scheme == "http",
			cleartext: cleartextAllowed(h),
			log:       epLog.Debug,
		}
		reg.endpoints = append(reg.endpoints, &endpoint{
			host:   h.url.Host,
			base:   h.url.String(),
			caps:   h.caps,
			mirror: h.mirror,
			client: &http.Client{Transport: at, CheckRedirect: checkRedirect},
		})
	}
	return reg, nil
}

// endpointsOf returns the endpoints of registry host under the options o: its hosts.toml
// mirrors (warn is told of settings they hold that lazypull does not use), then host.
func endpointsOf(o options, host string, warn func(file string, keys []string)) ([]hostConfig, error) {
	// containerd knows the default registry by its short name (the default without its
	// "index." prefix); ggcr by the long one.
	var aliases []string
	if host == name.DefaultRegistry {
		aliases = []string{strings.TrimPrefix(name.DefaultRegistry, "index.")}
	}
	return loadHosts(o.hostsDir, host, aliases, o.plainHTTP, warn)
}

// maxIdlePerHost bounds the idle connections the shared transport keeps to one host:
// enough for a few images' fetches at the default concurrency.
const maxIdlePerHost = 4*DefaultConcurrency + 2

var (
	sharedOnce sync.Once
	shared     *http.Transport
)

// sharedTransport is the transport of every Registry without one of its own
// (WithTransport): one pool of connections per process. A snapshotter or a mount opens a
// Registry per image; with a transport each, every image set up its own connections (and
// TLS sessions) to a registry the process was already talking to, and left them idle
// until they timed out. It dials through predial.
func sharedTransport() *http.Transport {
	sharedOnce.Do(func() {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.DialContext = predial.dialContext(t.DialContext)
		t.MaxIdleConnsPerHost = maxIdlePerHost
		t.ResponseHeaderTimeout = time.Minute
		shared = t
	})
	return shared
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
	if e != nil {
		outcome = outcomeError
		if e.fallback {
			outcome = outcomeFallback
		} else {
			r.stats.errors.Add(1)
		}
	}
	var n int64
	if body != nil {
		n = body.n
	}
	d := time.Since(start)
	r.metrics.observe(kind, outcome, n, d)
	if e != nil && !e.fallback {
		r.log.Debug("request failed", "kind", kind, "endpoint", e.host, "status", e.status, "bytes", n, "seconds", d.Seconds(), "err", e.err)
	} else {
		r.log.Debug("request", "kind", kind, "outcome", outcome, "bytes", n, "seconds", d.Seconds())
	}
}

// toError makes the error a caller sees.
func (r *Registry) toError(e *reqErr, digest string, rg Range) *Error {
	return &Error{Registry: e.host, Repo: r.repo, Digest: digest, Range: rg, StatusCode: e.status, Err: e.err, temporary: e.temporary}
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
