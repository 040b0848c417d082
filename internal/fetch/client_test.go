package fetch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"lazypull/internal/testutil"
)

// TestClientBoundsRequestsAcrossImages: the Registries of one Client, one per image, have
// at most WithMaxConcurrency requests in flight together, as the registry (a transport
// that holds every request until the test lets one go) counts them. In a synctest bubble,
// once every goroutine is blocked, every request that can go out is out: the count is
// exact, with no wait for stragglers.
func TestClientBoundsRequestsAcrossImages(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const images, reads, limit = 4, 3, 3
		var inflight atomic.Int64
		gate := make(chan struct{})
		registry := roundTripFunc(func(r *http.Request) (*http.Response, error) {
			inflight.Add(1)
			<-gate
			inflight.Add(-1)
			return &http.Response{StatusCode: http.StatusNotFound, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
		})
		c, err := NewClient(WithTransport(registry), WithMaxConcurrency(limit), WithRetry(1, 0))
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for i := range images {
			reg, err := c.Open(fmt.Sprintf("registry.example/image%d", i))
			if err != nil {
				t.Fatal(err)
			}
			for j := range reads {
				wg.Go(func() {
					d := sha([]byte{byte(i), byte(j)})
					_, _ = reg.Blob(d, 10).ReadAt(make([]byte, 5), 0)
				})
			}
		}
		for left := images * reads; left > 0; left-- {
			synctest.Wait()
			if n, want := inflight.Load(), int64(min(limit, left)); n != want {
				close(gate) // let them all go, so that the bubble ends
				wg.Wait()
				t.Fatalf("%d requests in flight across %d images with %d to go; want %d (the client's bound %d)", n, images, left, want, limit)
			}
			gate <- struct{}{}
		}
		wg.Wait()
	})
}

// TestPlainHTTPRule: one rule for every command. With WithPlainHTTP every registry no
// hosts.toml names is reached over http; without, https, but a registry on loopback (by
// name) that answers TLS with plain HTTP is reached over http. A registry elsewhere that
// does so fails (TestHTTPSToPlainRegistry), and an https registry on loopback stays
// https (TestRedirectDowngradeRefused).
func TestPlainHTTPRule(t *testing.T) {
	plain, err := NewClient(WithPlainHTTP())
	if err != nil {
		t.Fatal(err)
	}
	def, err := NewClient()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		c        *Client
		host     string
		scheme   string
		fallback bool
	}{
		{plain, "registry.example:5000", "http", false},
		{plain, "127.0.0.1:5000", "http", false},
		{def, "registry.example:5000", "https", false},
		{def, "10.0.0.1:5000", "https", false}, // private, not loopback
		{def, "localhost.example:5000", "https", false},
		{def, "127.0.0.1:5000", "https", true},
		{def, "127.1.2.3", "https", true},
		{def, "localhost:5000", "https", true},
		{def, "[::1]:5000", "https", true},
	} {
		if s, fb := tc.c.PlainHTTP(tc.host); s != tc.scheme || fb != tc.fallback {
			t.Errorf("PlainHTTP(%s) (plain %v) = %s, %v; want %s, %v", tc.host, tc.c.AllPlainHTTP(), s, fb, tc.scheme, tc.fallback)
		}
	}

	// A plain registry on loopback, without WithPlainHTTP: the first request finds it
	// plain, the ones after go over http at once.
	f := newFake("r")
	blob := testutil.RandBytes(14, 100)
	d := f.addBlob(blob)
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(f)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	reg, err := def.Open(host + "/r")
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := reg.Blob(d, int64(len(blob))).ReadAt(make([]byte, 10), 0); err != nil {
			t.Fatalf("a plain registry on loopback without --plain-http: %v", err)
		}
	}
	if s := reg.Stats(); s.Requests != 3 || s.Retries != 0 {
		t.Fatalf("stats %+v; want 3 requests, no retry", s)
	}
	if n := f.blobGets.Load(); n != 3 {
		t.Fatalf("%d blob requests reached the registry; want 3", n)
	}
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections; want 2, the TLS try and the plain one", n)
	}
}

// TestClientTransportFollowsTheRule: go-containerregistry's remote, over Client.Transport
// and Client.Keychain, reaches registries as Open's Registries do: the server a hosts.toml
// names, plain http only by the rule.
func TestClientTransportFollowsTheRule(t *testing.T) {
	reg := testutil.NewRegistry(t)
	img, err := random.Image(100, 1)
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(reg.Host)
	elsewhere := "registry.invalid:" + port // not loopback by name; dialed to the registry
	ref, err := name.ParseReference(elsewhere+"/app:1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	remoteOpts := func(c *Client) []remote.Option {
		return []remote.Option{remote.WithTransport(c.Transport()), remote.WithAuthFromKeychain(c.Keychain())}
	}

	// Without WithPlainHTTP, a registry that is not on loopback is https only, whatever
	// the reference's scheme says.
	def, err := NewClient(WithTransport(dialOnly(reg.Host)))
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remoteOpts(def)...); err == nil || !strings.Contains(err.Error(), "HTTP response to HTTPS client") {
		t.Fatalf("push over https to a plain registry: %v", err)
	}
	plain, err := NewClient(WithTransport(dialOnly(reg.Host)), WithPlainHTTP())
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remoteOpts(plain)...); err != nil {
		t.Fatalf("push with WithPlainHTTP: %v", err)
	}

	// A hosts.toml naming the server sends the requests there.
	dir := t.TempDir()
	writeHosts(t, dir, "mirrored.invalid", `server = "http://`+reg.Host+`"`)
	named, err := NewClient(WithHostsDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	got, err := remote.Head(name.MustParseReference("mirrored.invalid/app:1"), remoteOpts(named)...)
	if err != nil || got.Digest != want {
		t.Fatalf("head through the hosts.toml server: %v, %v; want %s", got, err, want)
	}
}

// TestCredentialsFirst: a Client's Credentials are asked before its keychain, for the
// endpoint's host and the repository; without any, the keychain's are used.
func TestCredentialsFirst(t *testing.T) {
	cr := credsFunc(func(_ context.Context, host, repo string) (string, string, bool, error) {
		switch repo {
		case "kubelet/app":
			return "kube", "s3cret", true, nil
		case "broken/app":
			return "", "", false, errors.New("the proxy is gone")
		}
		return "", "", false, nil
	})
	c, err := NewClient(WithCredentials(cr), WithKeychain(staticKeychain{host: "r.example", user: "docker", pass: "cfg"}))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		repo, user, secret string
		ok                 bool
		err                string
	}{
		{"kubelet/app", "kube", "s3cret", true, ""},
		{"other/app", "docker", "cfg", true, ""},
		{"broken/app", "", "", false, "the proxy is gone"},
	} {
		user, secret, ok, err := c.Credentials(context.Background(), "r.example", tc.repo)
		if user != tc.user || secret != tc.secret || ok != tc.ok || (err == nil) != (tc.err == "") || err != nil && !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: %q %q %v %v; want %q %q %v %q", tc.repo, user, secret, ok, err, tc.user, tc.secret, tc.ok, tc.err)
		}
	}
}

type credsFunc func(ctx context.Context, host, repo string) (string, string, bool, error)

func (f credsFunc) Credentials(ctx context.Context, host, repo string) (string, string, bool, error) {
	return f(ctx, host, repo)
}

// TestPredial: connections Predial dials are the ones a Registry made afterwards sends its
// requests on (the server accepts no other), and Predial sends no request of its own.
func TestPredial(t *testing.T) {
	// The two requests overlap: two connections.
	srv, conns, reqs := countingServer(t, 2)
	ref := strings.TrimPrefix(srv.URL, "http://") + "/app:1"
	c, err := NewClient(WithPlainHTTP(), WithRetry(1, 0))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Predial(ref, 2); err != nil {
		t.Fatal(err)
	}
	// Neither the server nor Predial signals a connection: their counts are polled.
	testutil.WaitFor(t, 5*time.Second, "the server to accept two connections", func() bool { return conns.Load() >= 2 })
	// Accepted; now wait until both are in the pool.
	addr := strings.TrimPrefix(srv.URL, "http://")
	pooled := func() int {
		c.predial.mu.Lock()
		defer c.predial.mu.Unlock()
		return len(c.predial.conns[addr])
	}
	testutil.WaitFor(t, 5*time.Second, "two connections in the pool", func() bool { return pooled() >= 2 })
	if n := pooled(); n != 2 {
		t.Fatalf("%d connections dialed ahead; want 2", n)
	}
	if n := reqs.Load(); n != 0 {
		t.Fatalf("Predial sent %d requests", n)
	}
	reg, err := c.Open(ref)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			_, _, err := reg.FetchManifest(context.Background(), "")
			if err == nil {
				t.Error("FetchManifest of a 404 succeeded")
			}
		})
	}
	wg.Wait()
	if n := reqs.Load(); n < 2 {
		t.Fatalf("%d requests reached the server; want 2", n)
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("the server accepted %d connections; want the 2 dialed ahead", n)
	}
	if n := pooled(); n != 0 {
		t.Errorf("%d connections dialed ahead were left unused", n)
	}
}

// TestPredialTake: a connection dialed ahead is taken once, for its own address only, and
// not after predialTTL.
func TestPredialTake(t *testing.T) {
	p := newPredialer()
	a, b := net.Pipe()
	defer b.Close()
	p.put("h:1", a)
	if c := p.take("h:2"); c != nil {
		t.Error("took a connection to another address")
	}
	if c := p.take("h:1"); c != a {
		t.Errorf("take = %v; want the connection put", c)
	}
	if c := p.take("h:1"); c != nil {
		t.Error("took one connection twice")
	}
	old, d := net.Pipe()
	defer d.Close()
	p.mu.Lock()
	p.conns["h:1"] = []predialed{{c: old, at: time.Now().Add(-predialTTL - time.Second)}}
	p.mu.Unlock()
	if c := p.take("h:1"); c != nil {
		t.Error("took an expired connection")
	}
	if _, err := old.Write([]byte("x")); err == nil {
		t.Error("an expired connection was left open")
	}
}

// TestRegistriesShareConnections: two Registries of one registry (a daemon opens one per
// image) send their requests on the same connection, one after the other.
func TestRegistriesShareConnections(t *testing.T) {
	srv, conns, reqs := countingServer(t, 0)
	host := strings.TrimPrefix(srv.URL, "http://")
	c, err := NewClient(WithPlainHTTP(), WithRetry(1, 0))
	if err != nil {
		t.Fatal(err)
	}
	for _, repo := range []string{"/a:1", "/b:1", "/a:1"} {
		reg, err := c.Open(host + repo)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := reg.FetchManifest(context.Background(), ""); err == nil {
			t.Fatal("FetchManifest of a 404 succeeded")
		}
	}
	if n := reqs.Load(); n != 3 {
		t.Fatalf("%d requests; want 3", n)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("three Registries opened %d connections to one registry; want 1", n)
	}
}

// countingServer answers every request 404, counting the connections it accepts and the
// requests it serves. The first together requests are answered only once all of them
// have arrived (so they overlap), or after 5 s.
func countingServer(t *testing.T, together int64) (srv *httptest.Server, conns, reqs *atomic.Int64) {
	t.Helper()
	conns, reqs = new(atomic.Int64), new(atomic.Int64)
	all := make(chan struct{})
	srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := reqs.Add(1)
		if n == together {
			close(all)
		}
		if n <= together {
			select {
			case <-all:
			case <-time.After(5 * time.Second):
			}
		}
		w.WriteHeader(http.StatusNotFound)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, conns, reqs
}
