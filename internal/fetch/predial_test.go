package fetch

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"lazypull/internal/testutil"
)

// TestPredial: connections Predial dials are the ones a Registry made afterwards sends its
// requests on (the server accepts no other), and Predial sends no request of its own.
func TestPredial(t *testing.T) {
	// The two requests overlap: two connections.
	srv, conns, reqs := countingServer(t, 20*time.Millisecond)
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

// countingServer answers every request 404 after delay, counting the connections it
// accepts and the requests it serves.
func countingServer(t *testing.T, delay time.Duration) (srv *httptest.Server, conns, reqs *atomic.Int64) {
	t.Helper()
	conns, reqs = new(atomic.Int64), new(atomic.Int64)
	srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqs.Add(1)
		time.Sleep(delay)
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
