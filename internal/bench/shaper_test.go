package bench

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// pipeListener is a net.Listener of in-memory connections (net.Pipe): inside a
// testing/synctest bubble a goroutine blocked on one is durably blocked, so the fake clock
// moves on while the proxy sleeps and the client waits.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

// Dial connects to the listener.
func (l *pipeListener) Dial() (net.Conn, error) {
	c, s := net.Pipe()
	select {
	case l.conns <- s:
		return c, nil
	case <-l.done:
		c.Close()
		s.Close()
		return nil, net.ErrClosed
	}
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// blobServer serves n bytes at /blob and nothing at /small, on in-memory connections.
func blobServer(t *testing.T, n int) *pipeListener {
	t.Helper()
	blob := bytes.Repeat([]byte("lazypull"), n/8+1)[:n]
	ln := newPipeListener()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/blob" {
			w.Header().Set("Content-Length", strconv.Itoa(n))
			w.Write(blob)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln
}

// testProxy is a Proxy on in-memory connections, with a client that dials it.
type testProxy struct {
	*Proxy
	ln *pipeListener
}

// newTestProxy starts a proxy over link (as ParseLink reads it) to a blobServer of size
// bytes.
func newTestProxy(t *testing.T, size int, link string) *testProxy {
	t.Helper()
	l, err := ParseLink(link)
	if err != nil {
		t.Fatal(err)
	}
	ln := newPipeListener()
	p := newProxy(ln, "pipe", blobServer(t, size).Dial, l, slog.New(slog.DiscardHandler))
	t.Cleanup(func() { p.Close() })
	return &testProxy{p, ln}
}

// client returns an HTTP client of its own (its own connections) to the proxy.
func (p *testProxy) client(t *testing.T) *http.Client {
	tr := &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) { return p.ln.Dial() }}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func get(t *testing.T, c *http.Client, url string) int64 {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// timed runs f and checks that it took want seconds (of the bubble's clock), lo to hi times.
func timed(t *testing.T, what string, want, lo, hi float64, f func()) {
	t.Helper()
	start := time.Now()
	f()
	got := time.Since(start).Seconds()
	r := got / want
	t.Logf("%s: %.4g, expected %.4g: ratio %.2f", what, got, want, r)
	if r < lo || r > hi {
		t.Errorf("%s: %.4g is %.2fx the expected %.4g, want %.2f-%.2fx", what, got, r, want, lo, hi)
	}
}

// The proxy's tests run in a testing/synctest bubble on in-memory connections: the link's
// delays are the proxy's own time.Sleep calls on the bubble's fake clock, so a test's
// elapsed time is what the link costs, not how loaded the machine is.

// TestProxyRate: a 2 MB download through a 20 Mbit/s link takes 2 MB / 2.5 MB/s = 0.8 s
// (plus a few round trips of 2 ms), and the proxy counts the bytes it forwarded.
func TestProxyRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const size = 2_000_000
		p := newTestProxy(t, size, "20M/2ms")
		timed(t, "seconds for 2 MB at 20 Mbit/s", size/2.5e6, 0.9, 1.3, func() {
			if n := get(t, p.client(t), "http://proxy/blob"); n != size {
				t.Fatalf("got %d bytes, want %d", n, size)
			}
		})
		cs := p.Counters()
		if cs.Down < size || cs.Down > size+1000 {
			t.Errorf("counted %d bytes down, want the %d of the body plus headers", cs.Down, size)
		}
		if cs.Requests != 1 || cs.Conns != 1 {
			t.Errorf("counted %d requests on %d connections, want 1 on 1", cs.Requests, cs.Conns)
		}
	})
}

// TestProxySharedRate: two downloads at once share the link: together they take as long as
// one download of both.
func TestProxySharedRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const size = 1_000_000
		p := newTestProxy(t, size, "20M/2ms")
		timed(t, "seconds for 2 x 1 MB at once at 20 Mbit/s", 2*size/2.5e6, 0.9, 1.3, func() {
			var wg sync.WaitGroup
			for range 2 {
				c := p.client(t)
				wg.Go(func() {
					if n := get(t, c, "http://proxy/blob"); n != size {
						t.Errorf("got %d bytes, want %d", n, size)
					}
				})
			}
			wg.Wait()
		})
		if cs := p.Counters(); cs.Conns != 2 {
			t.Errorf("counted %d connections, want 2", cs.Conns)
		}
	})
}

// TestProxyLatency: a request on a new connection costs two round trips (the handshake,
// then the request and its answer); on a kept-alive connection one.
func TestProxyLatency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newTestProxy(t, 0, "1G/100ms")
		c := p.client(t)
		timed(t, "first request, s", 0.2, 0.95, 1.3, func() { get(t, c, "http://proxy/small") })
		timed(t, "second request on the same connection, s", 0.1, 0.95, 1.3, func() { get(t, c, "http://proxy/small") })
		if cs := p.Counters(); cs.Requests != 2 || cs.Conns != 1 {
			t.Errorf("counted %d requests on %d connections, want 2 on 1", cs.Requests, cs.Conns)
		}
	})
}

// TestProxyBandwidthDelay: a long transfer over a link with a large bandwidth-delay product
// is not slowed by the proxy's queue (it holds enough in flight to fill the link).
func TestProxyBandwidthDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const size = 8_000_000
		p := newTestProxy(t, size, "100M/100ms")
		// 8 MB at 12.5 MB/s, plus a handshake and one round trip.
		timed(t, "seconds for 8 MB at 100 Mbit/s, 100 ms RTT", size/12.5e6+0.2, 0.9, 1.3, func() { get(t, p.client(t), "http://proxy/blob") })
	})
}

func TestParseLink(t *testing.T) {
	for _, c := range []struct {
		in   string
		rate int64
		rtt  time.Duration
	}{
		{"1G/2ms", 1e9, 2 * time.Millisecond},
		{"100M/20ms", 100e6, 20 * time.Millisecond},
		{"20M/50ms", 20e6, 50 * time.Millisecond},
		{"512K/0s", 512e3, 0},
		{"1.5M/1s", 1.5e6, time.Second},
	} {
		l, err := ParseLink(c.in)
		if err != nil || l.Rate != c.rate || l.RTT != c.rtt || l.Name != c.in {
			t.Errorf("ParseLink(%q) = %+v, %v; want rate %d, rtt %v", c.in, l, err, c.rate, c.rtt)
		}
	}
	for _, bad := range []string{"", "100M", "0M/1ms", "-1M/1ms", "xM/1ms", "100M/x", "100M/-1ms", "100T/1ms"} {
		if _, err := ParseLink(bad); err == nil {
			t.Errorf("ParseLink(%q): no error", bad)
		}
	}
}
