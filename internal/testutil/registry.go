package testutil

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
)

// Registry is an in-process OCI registry (go-containerregistry's) over plain HTTP on
// loopback, which logs the requests it gets.
type Registry struct {
	// Host is the registry's host:port.
	Host string
	// Server is the test server it runs on.
	Server *httptest.Server

	mu  sync.Mutex
	log []string
}

// RegistryOption configures NewRegistry.
type RegistryOption func(*registryConfig)

type registryConfig struct {
	opts []registry.Option
	wrap func(http.Handler) http.Handler
}

// WithReferrers makes the registry answer the referrers API.
func WithReferrers() RegistryOption {
	return func(c *registryConfig) { c.opts = append(c.opts, registry.WithReferrersSupport(true)) }
}

// WithHandler wraps the registry's handler (behind the request log), e.g. to answer some
// requests itself. A nil wrap does nothing.
func WithHandler(wrap func(http.Handler) http.Handler) RegistryOption {
	return func(c *registryConfig) { c.wrap = wrap }
}

// EachRegistry runs f in a subtest on a new registry with the referrers API, and in
// another on one without it (where clients list referrers through its tag schema).
func EachRegistry(t *testing.T, f func(t *testing.T, reg *Registry)) {
	t.Run("referrers API", func(t *testing.T) { f(t, NewRegistry(t, WithReferrers())) })
	t.Run("tag schema", func(t *testing.T) { f(t, NewRegistry(t)) })
}

// NewRegistry starts a registry that stops when the test ends.
func NewRegistry(t testing.TB, opts ...RegistryOption) *Registry {
	t.Helper()
	var c registryConfig
	for _, o := range opts {
		o(&c)
	}
	var h http.Handler = registry.New(append([]registry.Option{registry.Logger(log.New(io.Discard, "", 0))}, c.opts...)...)
	if c.wrap != nil {
		h = c.wrap(h)
	}
	r := &Registry{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		line := req.Method + " " + req.URL.Path
		if rg := req.Header.Get("Range"); rg != "" {
			line += " Range: " + rg
		}
		r.mu.Lock()
		r.log = append(r.log, line)
		r.mu.Unlock()
		h.ServeHTTP(w, req)
	}))
	t.Cleanup(r.Server.Close)
	r.Host = strings.TrimPrefix(r.Server.URL, "http://")
	return r
}

// Requests returns the requests so far, in order, one line each: "METHOD path", with
// " Range: RANGE" when the request had one.
func (r *Registry) Requests() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.log...)
}

// Take returns the requests so far, as Requests does, and forgets them.
func (r *Registry) Take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	log := r.log
	r.log = nil
	return log
}
