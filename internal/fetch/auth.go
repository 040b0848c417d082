package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// authTransport authenticates to one endpoint lazily: requests go out without credentials
// until the endpoint answers 401 with a challenge; then it looks the credentials up
// (credentials), sets up the basic or bearer flow (ggcr's token exchange) and sends the
// request again. Anonymous registries thus cost no extra request, and a blob read is one
// request.
//
// An authenticated request that gets 401 again (the token expired, or the credentials
// changed: a later CRI pull with new ones) has the credentials looked up again and a new
// token fetched, once, and is sent once more; what that answers is the answer. Requests
// that ran into the same stale token together share one new token.
//
// Credentials go only to the endpoint's own origin (scheme, host and port): a request
// the client makes to follow a redirect elsewhere (object storage, or the same host over
// plain http) goes out as it is, without them and without the challenge dance. ggcr's
// transports check only the host (not the scheme), and Go's client copies headers it was
// given to the same domain and its subdomains whatever the scheme: neither alone keeps a
// token off a redirect from https://reg to http://reg.
//
// Over plain http (insecure), credentials are only sent where cleartext allows: a
// registry on loopback, or one the operator named with http:// in a hosts.toml. Anywhere
// else the credentials are refused with an error saying so, before any is sent.
type authTransport struct {
	base        http.RoundTripper
	reg         name.Registry // the endpoint's host
	origin      string        // the endpoint's scheme://host:port (canonicalOrigin)
	credentials func(context.Context) (authn.Authenticator, error)
	scopes      []string
	insecure    bool // plain http: the token realm may be http too
	cleartext   bool // credentials may go over plain http (cleartextAllowed)
	log         func(msg string, args ...any)

	mu     sync.Mutex
	authed *authed // nil until a challenge was answered
}

// authed is an answered challenge: requests through rt carry its credentials or token.
type authed struct {
	rt http.RoundTripper
}

func (a *authTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if canonicalOrigin(req.URL) != a.origin {
		return a.base.RoundTrip(req) // a redirect elsewhere: no credentials of ours
	}
	a.mu.Lock()
	cur := a.authed
	a.mu.Unlock()
	var resp *http.Response
	var err error
	if cur != nil {
		// The transports set headers on the request they are given; keep the caller's
		// request as it was.
		resp, err = cur.rt.RoundTrip(req.Clone(req.Context()))
	} else {
		resp, err = a.base.RoundTrip(req)
	}
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	ch, ok := parseChallenge(resp.Header.Values("WWW-Authenticate"))
	if !ok {
		return resp, nil
	}
	again, err := resend(req)
	if err != nil || again == nil {
		return resp, nil // a body that cannot be sent twice: the 401 is the answer
	}
	// The body of a 401 is a short error document; drain it so the connection is reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	next, err := a.setup(req.Context(), ch, cur)
	if err != nil {
		closeBody(again)
		return nil, err
	}
	return next.rt.RoundTrip(again)
}

// resend returns a copy of req to send again, its body got anew; nil when the body
// cannot be (no GetBody).
func resend(req *http.Request) (*http.Request, error) {
	out := req.Clone(req.Context())
	if req.Body == nil || req.Body == http.NoBody {
		return out, nil
	}
	if req.GetBody == nil {
		return nil, nil
	}
	body, err := req.GetBody()
	if err != nil {
		return nil, err
	}
	out.Body = body
	return out, nil
}

// setup answers a challenge that a request sent with stale (nil: without credentials) ran
// into: once for all requests that ran into it together. When another request has
// answered one since, its answer is taken as it is.
func (a *authTransport) setup(ctx context.Context, ch *transport.Challenge, stale *authed) (*authed, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.authed != stale {
		return a.authed, nil
	}
	auth, err := a.credentials(ctx)
	if err != nil {
		return nil, &authError{fmt.Errorf("credentials for %s: %w", a.reg.RegistryStr(), err)}
	}
	if err := a.checkCleartext(ctx, auth, ch); err != nil {
		return nil, &authError{err}
	}
	ch.Insecure = a.insecure
	scheme := strings.ToLower(ch.Scheme)
	var rt http.RoundTripper
	switch scheme {
	case "basic":
		rt, err = transport.FromToken(a.reg, auth, a.base, ch, nil)
	case "bearer":
		rt, err = a.bearer(ctx, auth, ch)
	default:
		return nil, &authError{fmt.Errorf("%s asks for %q authentication, which lazypull does not speak", a.reg.RegistryStr(), ch.Scheme)}
	}
	if err != nil {
		return nil, &authError{fmt.Errorf("authenticate to %s (%s): %w", a.reg.RegistryStr(), scheme, err)}
	}
	a.authed = &authed{rt: rt}
	if stale == nil {
		a.log("authenticated", "scheme", scheme)
	} else {
		a.log("authenticated again: the registry refused the last credentials (token expired, or credentials replaced)", "scheme", scheme)
	}
	return a.authed, nil
}

// bearer gets a token for the credentials from the challenge's token server (a registry
// token given as the credentials is the token itself) and returns the transport that
// sends it. Unlike ggcr's bearer transport, it does not fetch a token again on its own
// when the registry refuses this one: RoundTrip does, with the credentials looked up
// again, once per request.
func (a *authTransport) bearer(ctx context.Context, auth authn.Authenticator, ch *transport.Challenge) (http.RoundTripper, error) {
	cfg, err := authn.Authorization(ctx, auth)
	if err != nil {
		return nil, err
	}
	token := cfg.RegistryToken
	if token == "" {
		tok, err := transport.Exchange(ctx, a.reg, auth, a.base, a.scopes, ch)
		if err != nil {
			return nil, err
		}
		token = tok.Token
		if token == "" {
			token = tok.AccessToken // some token servers fill only access_token
		}
	}
	return &bearerTransport{base: a.base, header: "Bearer " + token}, nil
}

// bearerTransport sends each request with a bearer token. authTransport hands it only
// requests to the endpoint's own origin.
type bearerTransport struct {
	base   http.RoundTripper
	header string
}

func (t *bearerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	req.Header.Set("Authorization", t.header)
	return t.base.RoundTrip(req)
}

// checkCleartext refuses to answer a challenge over plain http with credentials where
// cleartext is not allowed: to the endpoint itself (Basic, or the bearer token that the
// credentials buy), or to a token realm over http on another host that is not on
// loopback. Anonymous access is never refused.
func (a *authTransport) checkCleartext(ctx context.Context, auth authn.Authenticator, ch *transport.Challenge) error {
	if !a.insecure {
		return nil // https; ggcr refuses an http realm for an https registry
	}
	host := a.reg.RegistryStr()
	var realm *url.URL
	if strings.EqualFold(ch.Scheme, "bearer") {
		if u, err := url.Parse(ch.Parameters["realm"]); err == nil && u.Scheme == "http" {
			realm = u
		}
	}
	ok := a.cleartext
	if ok && realm != nil && !onLoopback(realm.Host) && canonicalOrigin(realm) != a.origin {
		ok = false
		host = realm.Host
	}
	if ok {
		return nil
	}
	if secret, err := hasSecret(ctx, auth); err != nil {
		return fmt.Errorf("credentials for %s: %w", a.reg.RegistryStr(), err)
	} else if !secret {
		return nil
	}
	return fmt.Errorf("refusing to send the credentials for %s over plain http to %s, which is not on loopback: "+
		"use https, or, to allow cleartext for this host, name it as http://%s in its hosts.toml (hosts directory)",
		a.reg.RegistryStr(), host, host)
}

// hasSecret reports whether auth holds credentials, as opposed to anonymous access.
func hasSecret(ctx context.Context, auth authn.Authenticator) (bool, error) {
	if auth == authn.Anonymous {
		return false, nil
	}
	cfg, err := authn.Authorization(ctx, auth)
	if err != nil {
		return false, err
	}
	return *cfg != authn.AuthConfig{}, nil
}

// canonicalOrigin is scheme://host:port of u, the port made explicit and the host in
// lower case: two URLs of one origin give the same string.
func canonicalOrigin(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = "443"
		if u.Scheme == "http" {
			port = "80"
		}
	}
	return strings.ToLower(u.Scheme) + "://" + net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

// checkRedirect is the redirect policy of every endpoint's client: at most 10 redirects
// (as Go's default), and none from https to anything else: an answer over TLS may not send
// the request (its URL, perhaps signed) over cleartext.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	if prev := via[len(via)-1]; prev.URL.Scheme == "https" && req.URL.Scheme != "https" {
		return fmt.Errorf("refusing a redirect from https://%s to %s://%s: a downgrade from TLS", prev.URL.Host, req.URL.Scheme, req.URL.Host)
	}
	return nil
}

// authError is a failure to get credentials or a token. It is temporary when the token
// server failed in a way that may pass (5xx, 429, connection).
type authError struct{ err error }

func (e *authError) Error() string { return e.err.Error() }
func (e *authError) Unwrap() error { return e.err }

func (e *authError) temporary() bool {
	var te *transport.Error
	if errors.As(e.err, &te) {
		return te.Temporary()
	}
	return isNetError(e.err)
}

// parseChallenge picks a challenge lazypull can answer from WWW-Authenticate values: the
// first Bearer challenge with a realm, else the first Basic one. The header grammar
// (RFC 9110 11.6.1): scheme, then comma-separated name=value parameters, values tokens or
// quoted strings. (containerd's docker/auth.ParseAuthHeader reads one challenge per header
// line, so a Bearer after a Basic in one value is lost, and takes no '/' or ':' in an
// unquoted value.)
func parseChallenge(values []string) (*transport.Challenge, bool) {
	var basic *transport.Challenge
	for _, v := range values {
		for _, c := range splitChallenges(v) {
			switch strings.ToLower(c.Scheme) {
			case "bearer":
				if c.Parameters["realm"] != "" {
					return c, true
				}
			case "basic":
				if basic == nil {
					basic = c
				}
			}
		}
	}
	return basic, basic != nil
}

// splitChallenges parses one WWW-Authenticate value, which may hold several challenges.
// Malformed input ends the parse; what was parsed before it is returned.
func splitChallenges(s string) []*transport.Challenge {
	var out []*transport.Challenge
	var cur *transport.Challenge
	for {
		s = strings.TrimLeft(s, " \t,")
		if s == "" {
			return out
		}
		tok, rest := cutToken(s)
		if tok == "" {
			return out
		}
		r := strings.TrimLeft(rest, " \t")
		if strings.HasPrefix(r, "=") && cur != nil {
			// A parameter of the current challenge (or token68 padding, which
			// lazypull's schemes do not use).
			r = strings.TrimLeft(r[1:], " \t")
			var val string
			var ok bool
			if strings.HasPrefix(r, `"`) {
				val, rest, ok = cutQuoted(r)
				if !ok {
					return out
				}
			} else {
				val, rest = cutToken(r)
			}
			if cur.Parameters == nil {
				cur.Parameters = map[string]string{}
			}
			k := strings.ToLower(tok)
			if _, dup := cur.Parameters[k]; !dup {
				cur.Parameters[k] = val
			}
			s = rest
			continue
		}
		// A new challenge: its scheme, then perhaps a token68 (ignored) or parameters.
		cur = &transport.Challenge{Scheme: tok, Parameters: map[string]string{}}
		out = append(out, cur)
		s = rest
	}
}

func isTokenChar(c byte) bool {
	if c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' {
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~/:", c) >= 0
}

func cutToken(s string) (tok, rest string) {
	i := 0
	for i < len(s) && isTokenChar(s[i]) {
		i++
	}
	return s[:i], s[i:]
}

// cutQuoted reads a quoted string at the start of s (which begins with a quote).
func cutQuoted(s string) (val, rest string, ok bool) {
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch c := s[i]; c {
		case '"':
			return b.String(), s[i+1:], true
		case '\\':
			if i+1 >= len(s) {
				return "", "", false
			}
			i++
			b.WriteByte(s[i])
		default:
			b.WriteByte(c)
		}
	}
	return "", "", false
}
