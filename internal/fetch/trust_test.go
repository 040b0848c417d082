package fetch

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"lazypull/internal/testutil"
)

// testIdle is the idle timeout of these tests: short, so that they take no time, and far
// above what a loopback answer needs.
const testIdle = 300 * time.Millisecond

// stall writes the status and headers of an answer (and prefix of its body), then sends
// nothing more until the client gives up or the test ends.
func stall(w http.ResponseWriter, r *http.Request, stop <-chan struct{}, status int, prefix []byte) {
	w.WriteHeader(status)
	_, _ = w.Write(prefix)
	w.(http.Flusher).Flush()
	select {
	case <-r.Context().Done():
	case <-stop:
	}
}

// Reads that a registry stalls (headers, then no byte) take every place among the requests
// in flight. They are cancelled after the idle timeout, retried, then fail naming the
// registry, the blob, the range and how long nothing came; meanwhile the other reads of the
// blob go through. On ec65bd9 the good read waits for ever behind the stalled ones.
func TestStalledReadsDoNotHoldSlots(t *testing.T) {
	const stalled = DefaultConcurrency
	f := newFake("r")
	blob := testutil.RandBytes(90, 1<<20)
	d := f.addBlob(blob)
	stop := make(chan struct{})
	inflight := make(chan string, 64)
	var mu sync.Mutex
	asked := map[string]int{}
	f.hook = func(_ int, w http.ResponseWriter, r *http.Request) bool {
		rg := r.Header.Get("Range")
		var off int64
		if _, err := fmt.Sscanf(rg, "bytes=%d-", &off); err != nil || off >= 1<<19 {
			return false // the second half of the blob is served
		}
		mu.Lock()
		asked[rg]++
		mu.Unlock()
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, off+99, len(blob)))
		w.Header().Set("Content-Length", "100")
		inflight <- rg
		stall(w, r, stop, http.StatusPartialContent, nil)
		return true
	}
	_, host := serve(t, f)
	t.Cleanup(func() { close(stop) })
	reg, _ := newReg(t, host, "r", WithMaxConcurrency(DefaultConcurrency), WithRetry(3, time.Millisecond), WithIdleTimeout(testIdle))
	b := reg.Blob(d, int64(len(blob)))

	errs := make(chan error, stalled)
	for i := range stalled {
		go func() {
			_, err := b.ReadAt(make([]byte, 100), int64(i)*4096)
			errs <- err
		}()
	}
	for range stalled {
		<-inflight // every place is taken by a stalled request
	}
	// A hang guard only: with the fix the read gets a place within about testIdle.
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	p := make([]byte, 1000)
	if _, err := b.ReadAtContext(ctx, p, 600_000); err != nil {
		t.Fatalf("a read of the image behind %d stalled ones: %v", stalled, err)
	}
	if string(p) != string(blob[600_000:601_000]) {
		t.Fatal("wrong bytes")
	}
	for range stalled {
		err := <-errs
		var fe *Error
		if !errors.As(err, &fe) || !fe.Temporary() {
			t.Fatalf("stalled read: %v, want a temporary *Error", err)
		}
		msg := err.Error()
		for _, want := range []string{host, "/r@" + d.String(), " bytes ", "no bytes for " + testIdle.String()} {
			if !strings.Contains(msg, want) {
				t.Errorf("error %q does not say %q", msg, want)
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(asked) != stalled {
		t.Fatalf("stalled ranges %v", asked)
	}
	for rg, n := range asked {
		if n != 3 {
			t.Errorf("range %s asked %d times, want 3 (retried)", rg, n)
		}
	}
}

// Every kind of request is under the idle timeout: manifests and referrers (headers that
// never come, or a body that stops), multi-range answers and whole-blob streams.
func TestIdleTimeoutEveryBody(t *testing.T) {
	blob := testutil.RandBytes(91, 300_000)
	d := sha(blob)
	manifest := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + d.String() + `","size":300000},"layers":[]}`)
	md := sha(manifest)
	subject := sha([]byte("subject"))
	cases := []struct {
		name    string
		handler func(w http.ResponseWriter, r *http.Request, stop <-chan struct{}) // the stalling answer
		call    func(ctx context.Context, reg *Registry) error
	}{
		{"manifest headers", func(w http.ResponseWriter, r *http.Request, stop <-chan struct{}) {
			if strings.Contains(r.URL.Path, "/manifests/") {
				<-stop // not even headers
			}
		}, func(ctx context.Context, reg *Registry) error {
			_, err := reg.Resolve(ctx, "v1", nil)
			return err
		}},
		{"manifest body", func(w http.ResponseWriter, r *http.Request, stop <-chan struct{}) {
			w.Header().Set("Content-Length", strconv.Itoa(len(manifest)))
			stall(w, r, stop, http.StatusOK, manifest[:10])
		}, func(ctx context.Context, reg *Registry) error {
			_, _, err := reg.Manifest(ctx, md)
			return err
		}},
		{"referrers", func(w http.ResponseWriter, r *http.Request, stop <-chan struct{}) {
			w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
			stall(w, r, stop, http.StatusOK, []byte(`{"schemaVersion":2,`))
		}, func(ctx context.Context, reg *Registry) error {
			_, err := reg.Referrers(ctx, subject, "")
			return err
		}},
		{"multipart", func(w http.ResponseWriter, r *http.Request, stop <-chan struct{}) {
			w.Header().Set("Content-Type", "multipart/byteranges; boundary=XX")
			stall(w, r, stop, http.StatusPartialContent, []byte("--XX\r\nContent-Range: bytes 0-99/300000\r\n\r\n"))
		}, func(ctx context.Context, reg *Registry) error {
			return reg.Blob(d, int64(len(blob))).Fetch(ctx, []Range{{0, 100}, {200_000, 100}}, func(Range, []byte) error { return nil })
		}},
		{"stream", func(w http.ResponseWriter, r *http.Request, stop <-chan struct{}) {
			w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
			stall(w, r, stop, http.StatusOK, blob[:100_000])
		}, func(ctx context.Context, reg *Registry) error {
			rc, err := reg.Blob(d, int64(len(blob))).Open(ctx)
			if err != nil {
				return err
			}
			defer rc.Close()
			got, err := readStream(rc)
			if len(got) > 100_000 {
				return fmt.Errorf("read %d bytes, past the stall at 100000 (%v)", len(got), err)
			}
			return err
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			stop := make(chan struct{})
			var requests atomic.Int64
			_, host := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v2/" {
					return
				}
				requests.Add(1)
				c.handler(w, r, stop)
			}))
			t.Cleanup(func() { close(stop) })
			reg, _ := newReg(t, host, "r", WithRetry(2, time.Millisecond), WithIdleTimeout(testIdle))
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second) // a hang guard
			defer cancel()
			err := c.call(ctx, reg)
			if err == nil || !strings.Contains(err.Error(), "no bytes for "+testIdle.String()) || !strings.Contains(err.Error(), host) {
				t.Fatalf("error %v, want one naming %s and the idle timeout", err, host)
			}
			if ctx.Err() != nil {
				t.Fatal("the hang guard fired")
			}
			if requests.Load() == 0 {
				t.Fatal("no request")
			}
		})
	}
	if _, err := openRef("h/r", WithIdleTimeout(0)); err == nil {
		t.Error("zero idle timeout accepted")
	}
}

// sniffListener serves TLS and plain HTTP on one port, by the first byte of each
// connection: a redirect from https://host:port to http://host:port is a downgrade to the
// very host the credentials are for.
type sniffListener struct {
	net.Listener
	cfg *tls.Config
}

type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (l sniffListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	pc := &peekedConn{Conn: c, r: bufio.NewReader(c)}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := pc.r.Peek(1)
	_ = c.SetReadDeadline(time.Time{})
	if err == nil && b[0] == 0x16 { // a TLS handshake record
		return tls.Server(pc, l.cfg), nil
	}
	return pc, nil
}

// An https registry that redirects a blob to plain http (on its own host and port) is
// refused, and no credentials reach the plain side. On ec65bd9 the redirect is followed
// and ggcr's transport, which checks the host but not the scheme, sends the password in
// cleartext.
func TestRedirectDowngradeRefused(t *testing.T) {
	blob := testutil.RandBytes(92, 5000)
	d := sha(blob)
	ts := httptest.NewTLSServer(http.NotFoundHandler()) // for its certificate and a client trusting it
	t.Cleanup(ts.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host := ln.Addr().String()
	var mu sync.Mutex
	var plain []string // Authorization headers that came over plain http
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			mu.Lock()
			plain = append(plain, r.Header.Get("Authorization"))
			mu.Unlock()
			http.ServeContent(w, r, "", time.Time{}, strings.NewReader(string(blob)))
			return
		}
		if r.Header.Get("Authorization") != "Basic "+b64("alice:pa55word") {
			w.Header().Set("WWW-Authenticate", `Basic realm="registry"`)
			http.Error(w, "auth", http.StatusUnauthorized)
			return
		}
		http.Redirect(w, r, "http://"+host+"/plain/"+d.Hex+"?sig=s3cr3t", http.StatusTemporaryRedirect)
	})}
	go func() { _ = srv.Serve(sniffListener{ln, ts.TLS}) }()
	t.Cleanup(func() { _ = srv.Close() })

	log, lb := testutil.NewLog(t)
	rt := ts.Client().Transport.(*http.Transport).Clone()
	reg, err := openRef(host+"/r", WithTransport(rt), WithRetry(3, time.Millisecond), WithLogger(log),
		WithKeychain(staticKeychain{host: host, user: "alice", pass: "pa55word"}))
	if err != nil {
		t.Fatal(err)
	}
	err = finalError(t, reg, d, int64(len(blob)), "redirect from https") // a refused redirect is not retried
	if strings.Contains(err.Error(), "s3cr3t") || strings.Contains(lb.String(), "s3cr3t") {
		t.Fatal("the redirect's query leaked")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(plain) != 0 {
		t.Fatalf("the plain http side was asked %d times, with Authorization %q", len(plain), plain)
	}
}

// authTransport adds credentials only for its endpoint's origin: not for the same host
// over another scheme or port.
func TestCredentialsStayWithTheirOrigin(t *testing.T) {
	var got []string
	base := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		got = append(got, r.URL.Scheme+"://"+r.URL.Host+" "+r.Header.Get("Authorization"))
		return &http.Response{StatusCode: 200, Body: http.NoBody, Request: r}, nil
	})
	at := &authTransport{base: base, origin: "https://reg.example:443", authed: &authed{rt: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		r.Header.Set("Authorization", "Bearer tok")
		return base(r)
	})}}
	for _, u := range []string{"https://reg.example/v2/", "https://REG.example:443/v2/", "http://reg.example/v2/", "http://reg.example:443/v2/", "https://reg.example:8443/v2/", "https://storage.example/x"} {
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		if _, err := at.RoundTrip(req); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{
		"https://reg.example Bearer tok", "https://REG.example:443 Bearer tok",
		"http://reg.example ", "http://reg.example:443 ", "https://reg.example:8443 ", "https://storage.example ",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got\n%q\nwant\n%q", got, want)
	}
}

func TestOnLoopback(t *testing.T) {
	for host, want := range map[string]bool{
		"127.0.0.1:5000": true, "127.3.2.1": true, "[::1]:5000": true, "::1": true, "localhost:5000": true,
		"LOCALHOST": true, "localhost.": true, "[::ffff:127.0.0.1]:80": true,
		"registry.test:5000": false, "10.0.0.1:5000": false, "192.168.1.1": false, "127.0.0.1.nip.example": false,
		"localhost.example": false, "0.0.0.0": false, "": false,
	} {
		if got := onLoopback(host); got != want {
			t.Errorf("onLoopback(%q) = %v", host, got)
		}
	}
	for _, c := range []struct {
		h    hostConfig
		want bool
	}{
		{hostConfig{url: mustURL("https://reg.example/v2")}, true},
		{hostConfig{url: mustURL("http://reg.example/v2")}, false}, // --plain-http alone
		{hostConfig{url: mustURL("http://reg.example/v2"), named: true}, true},
		{hostConfig{url: mustURL("http://127.0.0.1:5000/v2")}, true},
	} {
		if got := cleartextAllowed(c.h); got != c.want {
			t.Errorf("cleartextAllowed(%s, named %v) = %v", c.h.url, c.h.named, got)
		}
	}
}

// With --plain-http, a registry that is not on loopback and asks for credentials gets an
// error, not the credentials; naming it with http:// in its hosts.toml allows them. The
// name registry.test is dialed on loopback (as a name resolving there would be): what
// counts is the name, not where it leads. On ec65bd9 the password goes in cleartext.
func TestCleartextCredentialsRefused(t *testing.T) {
	f := newFake("r")
	blob := testutil.RandBytes(93, 1000)
	d := f.addBlob(blob)
	var mu sync.Mutex
	var auths []string
	_, addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auths = append(auths, r.Header.Get("Authorization"))
		mu.Unlock()
		if r.Header.Get("Authorization") != "Basic "+b64("alice:pa55word") {
			w.Header().Set("WWW-Authenticate", `Basic realm="registry"`)
			http.Error(w, "auth", http.StatusUnauthorized)
			return
		}
		f.ServeHTTP(w, r)
	}))
	_, port, _ := net.SplitHostPort(addr)
	host := "registry.test:" + port
	rt := http.DefaultTransport.(*http.Transport).Clone()
	rt.DialContext = func(ctx context.Context, network, a string) (net.Conn, error) {
		if a != host {
			return nil, fmt.Errorf("test dialer: unexpected address %s", a)
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	kc := WithKeychain(staticKeychain{host: host, user: "alice", pass: "pa55word"})
	read := func(opts ...Option) error {
		reg, _ := newReg(t, host, "r", append([]Option{WithTransport(rt), kc}, opts...)...)
		_, err := reg.Blob(d, int64(len(blob))).ReadAt(make([]byte, 10), 0)
		return err
	}
	err := read()
	var fe *Error
	if !errors.As(err, &fe) || fe.Temporary() || !strings.Contains(err.Error(), "plain http") || !strings.Contains(err.Error(), "hosts.toml") {
		t.Fatalf("error %v, want a refusal that says how to allow it", err)
	}
	mu.Lock()
	for _, a := range auths {
		if a != "" {
			t.Fatalf("the registry got Authorization %q over plain http", a)
		}
	}
	mu.Unlock()

	dir := t.TempDir()
	writeHosts(t, dir, host, fmt.Sprintf("server = %q\n", "http://"+host))
	if err := read(WithHostsDir(dir)); err != nil {
		t.Fatalf("http:// named in hosts.toml: %v", err)
	}
	// Anonymous access over plain http is not refused.
	if err := read(WithKeychain(staticKeychain{})); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("anonymous: %v, want the registry's 401", err)
	}
}

// A loopback registry over plain http may not send its credentials in cleartext to a token
// realm elsewhere: the realm is the registry's to choose, the network between is not.
func TestCleartextTokenRealmRefused(t *testing.T) {
	var tokenCalls atomic.Int64
	var realm string
	_, addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			tokenCalls.Add(1)
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm+`",service="s"`)
		http.Error(w, "auth", http.StatusUnauthorized)
	}))
	_, port, _ := net.SplitHostPort(addr)
	realm = "http://auth.test:" + port + "/token"
	rt := http.DefaultTransport.(*http.Transport).Clone()
	rt.DialContext = func(ctx context.Context, network, a string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, addr) // auth.test is this server too
	}
	reg, _ := newReg(t, addr, "r", WithTransport(rt), WithKeychain(staticKeychain{host: addr, user: "alice", pass: "pa55word"}))
	_, err := reg.Blob(sha([]byte("x")), 10).ReadAt(make([]byte, 5), 0)
	if err == nil || !strings.Contains(err.Error(), "over plain http to auth.test:"+port) {
		t.Fatalf("error %v, want a refusal naming the realm's host", err)
	}
	if n := tokenCalls.Load(); n != 0 {
		t.Fatalf("%d token requests: the credentials went out", n)
	}
}
