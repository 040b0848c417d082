package fetch

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

// Credentials supplies registry credentials from somewhere other than the Docker config
// (WithCredentials): a CRI proxy, for one, will hand over in memory the credentials
// kubelet has for an image. A Client asks it first, each time a registry's challenge
// needs credentials (the first, and again whenever the registry refuses those it sent:
// a token expired, credentials replaced), for the image's own registry (host[:port] as
// the reference names it, whichever endpoint, a mirror too, serves the request) and
// repository path; ok false (with a nil error) means it has none for them, and the
// Docker config is asked next, for the endpoint's host. user "" with a secret is an identity token; otherwise
// user and secret are a user name and password (or token). An error fails the request
// that needed them.
type Credentials interface {
	Credentials(ctx context.Context, host, repo string) (user, secret string, ok bool, err error)
}

// credentialsKeychain is a Credentials as go-containerregistry's keychain.
type credentialsKeychain struct{ c Credentials }

func (k credentialsKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	return k.ResolveContext(context.Background(), r)
}

func (k credentialsKeychain) ResolveContext(ctx context.Context, r authn.Resource) (authn.Authenticator, error) {
	var repo string
	if rp, ok := r.(name.Repository); ok {
		repo = rp.RepositoryStr()
	}
	user, secret, ok, err := k.c.Credentials(ctx, r.RegistryStr(), repo)
	switch {
	case err != nil:
		return nil, fmt.Errorf("credentials for %s: %w", r.RegistryStr(), err)
	case !ok:
		return authn.Anonymous, nil // the next keychain is asked
	case user == "":
		return authn.FromConfig(authn.AuthConfig{IdentityToken: secret}), nil
	}
	return authn.FromConfig(authn.AuthConfig{Username: user, Password: secret}), nil
}

// httpFallback sends a request over https and, when the server answers TLS with plain
// HTTP, again over http; from then on its requests go over http at once. It serves one
// endpoint the plain-HTTP rule lets fall back (a registry on loopback, Client.PlainHTTP).
// A request with a body it cannot get again (no GetBody) is not sent twice.
type httpFallback struct {
	next  http.RoundTripper
	plain atomic.Bool
}

func (f *httpFallback) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" {
		return f.next.RoundTrip(req)
	}
	if !f.plain.Load() {
		if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
			return f.next.RoundTrip(req)
		}
		resp, err := f.next.RoundTrip(req)
		var rh tls.RecordHeaderError
		if !errors.As(err, &rh) || rh.Conn == nil || string(rh.RecordHeader[:]) != "HTTP/" {
			return resp, err
		}
		f.plain.Store(true)
	}
	out := req.Clone(req.Context())
	out.URL.Scheme = "http"
	if req.GetBody != nil {
		body, err := req.GetBody()
		if err != nil {
			return nil, err
		}
		out.Body = body
	}
	return f.next.RoundTrip(out)
}

// remoteTransport is Client.Transport: registry API requests (paths under /v2) go to the
// server the host's configuration names, by the plain-HTTP rule; anything else (token
// realms, redirects to storage) goes out as it is.
type remoteTransport struct {
	c *Client

	mu    sync.Mutex
	hosts map[string]*remoteHost // by the host requests name
}

type remoteHost struct {
	server hostConfig
	rt     http.RoundTripper
}

func (t *remoteTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if p := req.URL.Path; p != "/v2" && !strings.HasPrefix(p, "/v2/") {
		return t.c.base.RoundTrip(req)
	}
	h, err := t.host(req.URL.Host)
	if err != nil {
		closeBody(req)
		return nil, err
	}
	out := req.Clone(req.Context())
	u := h.server.url
	out.URL.Scheme, out.URL.Host, out.Host = u.Scheme, u.Host, u.Host
	out.URL.Path, out.URL.RawPath = u.Path+strings.TrimPrefix(req.URL.Path, "/v2"), ""
	if u.Scheme == "http" && out.Header.Get("Authorization") != "" && !cleartextAllowed(h.server) {
		closeBody(req)
		return nil, fmt.Errorf("fetch: refusing to send credentials over plain http to %s, which is not on loopback: "+
			"use https, or, to allow cleartext for this host, name it as http://%s in its hosts.toml (hosts directory)", u.Host, u.Host)
	}
	return h.rt.RoundTrip(out)
}

// host returns the server of a registry host, as its configuration names it.
func (t *remoteTransport) host(host string) (*remoteHost, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if h, ok := t.hosts[host]; ok {
		return h, nil
	}
	hosts, err := t.c.endpoints(host, t.c.log.With("registry", host))
	if err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	server := hosts[len(hosts)-1]
	if server.mirror {
		return nil, fmt.Errorf("fetch: %s: the hosts configuration names no server with the pull or resolve capability", host)
	}
	rt, err := t.c.transportFor(server)
	if err != nil {
		return nil, err
	}
	h := &remoteHost{server: server, rt: rt}
	if t.hosts == nil {
		t.hosts = map[string]*remoteHost{}
	}
	t.hosts[host] = h
	return h, nil
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}
