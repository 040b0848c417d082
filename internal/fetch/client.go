package fetch

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/prometheus/client_golang/prometheus"
)

// Client is a node's registry client: made once by the composition root (a command, the
// snapshotter) and shared by every image it reads. It owns what images have in common:
// the HTTP transport and its pool of connections, the connections dialed ahead
// (Predial), the bound on requests in flight (WithMaxConcurrency, across all images),
// credentials, metrics, logger, the hosts directory and the plain-HTTP rule (PlainHTTP).
// Each image's repository is read through a Registry it opens (Open). A Client is safe
// for concurrent use.
type Client struct {
	o         options
	base      http.RoundTripper // o.transport, or the client's own (dialing through predial)
	own       *http.Transport   // the client's own transport, nil with WithTransport
	predial   *predialer        // nil with WithTransport
	sem       chan struct{}
	metrics   *Metrics
	log       *slog.Logger
	keychain  authn.Keychain // o.credentials first, then o.keychain
	transport http.RoundTripper
}

// maxIdlePerHost bounds the idle connections the client's transport keeps to one host:
// enough for the requests in flight at the default bound, and a few more.
const maxIdlePerHost = DefaultConcurrency + 2

// NewClient makes a Client. It sends nothing.
func NewClient(opts ...Option) (*Client, error) {
	o := defaultOptions()
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	c := &Client{o: o, sem: make(chan struct{}, o.concurrency), metrics: o.metrics, log: o.logger, base: o.transport}
	if c.metrics == nil {
		c.metrics = NewMetrics()
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.base == nil {
		// One pool of connections per client: every image's requests to a registry
		// share the connections (and TLS sessions) set up to it.
		c.predial = newPredialer()
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.DialContext = c.predial.dialContext(t.DialContext)
		t.MaxIdleConnsPerHost = max(maxIdlePerHost, o.concurrency+2)
		t.ResponseHeaderTimeout = time.Minute
		c.own, c.base = t, t
	}
	c.keychain = o.keychain
	if o.credentials != nil {
		c.keychain = authn.NewMultiKeychain(credentialsKeychain{o.credentials}, o.keychain)
	}
	c.transport = &remoteTransport{c: c}
	return c, nil
}

// Open returns a Registry for the repository a reference names ("host[:port]/path[:tag]"
// or "...@sha256:..."; a tag or digest in it is what Resolve resolves when given none).
// It sends nothing: credentials are looked up, and the token fetched, the first time the
// registry asks for them. Its endpoints are the hosts directory's mirrors for the host,
// then the server (PlainHTTP says over which scheme when no hosts.toml names it).
func (c *Client) Open(ref string) (*Registry, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("fetch: reference %q: %w", ref, err)
	}
	repo := r.Context()
	reg := &Registry{
		host:       repo.RegistryStr(),
		repo:       repo.RepositoryStr(),
		ref:        r,
		sem:        c.sem,
		attempts:   c.o.attempts,
		backoff:    c.o.backoff,
		idle:       c.o.idle,
		maxGap:     c.o.maxGap,
		maxRequest: c.o.maxRequest,
		metrics:    c.metrics,
		flights:    map[flightKey]*flight{},
	}
	reg.log = c.log.With("registry", reg.host, "repo", reg.repo)
	hosts, err := c.endpoints(reg.host, reg.log)
	if err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	scopes := []string{repo.Scope("pull")}
	for _, h := range hosts {
		rt, err := c.transportFor(h)
		if err != nil {
			return nil, err
		}
		nreg, err := name.NewRegistry(h.url.Host)
		if err != nil {
			return nil, fmt.Errorf("fetch: endpoint %s: %w", h.url.Host, err)
		}
		at := &authTransport{
			base:        rt,
			reg:         nreg,
			origin:      canonicalOrigin(h.url),
			credentials: c.credentialsFor(repo, nreg.Repo(reg.repo)),
			scopes:      scopes,
			insecure:    h.url.Scheme == "http" || h.fallback,
			cleartext:   cleartextAllowed(h),
			log:         reg.log.With("endpoint", h.url.Host).Debug,
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

// credentialsFor returns how the requests of an image (repository image) to one of its
// endpoints (endpoint: the endpoint's host and the repository) find their credentials,
// each time a challenge asks: WithCredentials' for the image's own registry and
// repository, whichever endpoint (a mirror too) serves it, for they were given for the
// image; else the keychain's for the endpoint.
func (c *Client) credentialsFor(image name.Repository, endpoint authn.Resource) func(context.Context) (authn.Authenticator, error) {
	return func(ctx context.Context) (authn.Authenticator, error) {
		if c.o.credentials != nil {
			auth, err := credentialsKeychain{c.o.credentials}.ResolveContext(ctx, image)
			if err != nil || auth != authn.Anonymous {
				return auth, err
			}
		}
		return authn.Resolve(ctx, c.o.keychain, endpoint)
	}
}

// transportFor is the transport an endpoint's requests go through: the client's, made to
// skip TLS verification (skip_verify) or to fall back to plain HTTP (a loopback server,
// PlainHTTP) when the endpoint asks for it.
func (c *Client) transportFor(h hostConfig) (http.RoundTripper, error) {
	rt := c.base
	if h.skipVerify {
		t, ok := rt.(*http.Transport)
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
	if h.fallback {
		rt = &httpFallback{next: rt}
	}
	return rt, nil
}

// endpoints returns the endpoints of registry host: its hosts.toml mirrors, then the
// server. log is told of settings the file holds that lazypull does not use.
func (c *Client) endpoints(host string, log *slog.Logger) ([]hostConfig, error) {
	// containerd knows the default registry by its short name (the default without its
	// "index." prefix); ggcr by the long one.
	var aliases []string
	if host == name.DefaultRegistry {
		aliases = []string{strings.TrimPrefix(name.DefaultRegistry, "index.")}
	}
	scheme, fallback := c.PlainHTTP(host)
	return loadHosts(c.o.hostsDir, host, aliases, scheme, fallback, func(file string, keys []string) {
		log.Warn("hosts file: ignoring settings lazypull does not use", "file", file, "keys", strings.Join(keys, ","))
	})
}

// PlainHTTP is the plain-HTTP rule, one for every command: a registry whose server no
// hosts.toml names is reached over plain http when the client was made WithPlainHTTP;
// else over https, except that a registry on loopback (localhost, 127.0.0.0/8, ::1, by
// name) that answers TLS with plain HTTP is spoken to over plain http (as containerd and
// go-containerregistry do). It returns the scheme tried first, and whether a fall back to
// http follows a plain-HTTP answer to TLS.
func (c *Client) PlainHTTP(host string) (scheme string, fallback bool) {
	switch {
	case c.o.plainHTTP:
		return "http", false
	case onLoopback(host):
		return "https", true
	default:
		return "https", false
	}
}

// HostsDir is the hosts directory (WithHostsDir), "" for none.
func (c *Client) HostsDir() string { return c.o.hostsDir }

// AllPlainHTTP reports whether the client was made WithPlainHTTP.
func (c *Client) AllPlainHTTP() bool { return c.o.plainHTTP }

// Keychain returns where the client's credentials come from (WithCredentials first, then
// WithKeychain's), for go-containerregistry's remote (remote.WithAuthFromKeychain).
func (c *Client) Keychain() authn.Keychain { return c.keychain }

// Credentials looks up the credentials for a repository as the client's requests do
// (Keychain): for clients that speak to registries through another library (containerd's
// resolver). ok is false for anonymous access.
func (c *Client) Credentials(ctx context.Context, host, repo string) (user, secret string, ok bool, err error) {
	reg, err := name.NewRegistry(host)
	if err != nil {
		return "", "", false, fmt.Errorf("fetch: registry %q: %w", host, err)
	}
	var res authn.Resource = reg
	if repo != "" {
		res = reg.Repo(repo)
	}
	auth, err := authn.Resolve(ctx, c.keychain, res)
	if err != nil {
		return "", "", false, fmt.Errorf("fetch: credentials for %s: %w", host, err)
	}
	if auth == authn.Anonymous {
		return "", "", false, nil
	}
	cfg, err := authn.Authorization(ctx, auth)
	if err != nil {
		return "", "", false, fmt.Errorf("fetch: credentials for %s: %w", host, err)
	}
	switch {
	case cfg.IdentityToken != "":
		return "", cfg.IdentityToken, true, nil
	case cfg.Username != "" || cfg.Password != "":
		return cfg.Username, cfg.Password, true, nil
	}
	return "", "", false, nil
}

// Transport returns an http.RoundTripper for go-containerregistry's remote
// (remote.WithTransport) that reaches registries as the client's Registries do: over the
// client's transport, to the server the host's hosts.toml names (mirrors are for reads
// through Open only), by the plain-HTTP rule (PlainHTTP), credentials over plain http
// only where they may go (loopback, or a server named with http://).
func (c *Client) Transport() http.RoundTripper { return c.transport }

// Collectors returns the Prometheus collectors the client's registries count into, for
// the caller to register where it likes.
func (c *Client) Collectors() []prometheus.Collector { return c.metrics.Collectors() }

// Close closes the idle connections of the client's own transport, and those dialed
// ahead. Registries opened from it still work (they dial anew).
func (c *Client) Close() {
	if c.own != nil {
		c.own.CloseIdleConnections()
	}
	if c.predial != nil {
		c.predial.closeAll()
	}
}
