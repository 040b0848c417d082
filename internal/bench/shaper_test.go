package bench

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"
)

// blobServer serves n bytes at /blob and nothing at /small.
func blobServer(t *testing.T, n int) *httptest.Server {
	t.Helper()
	blob := bytes.Repeat([]byte("lazypull"), n/8+1)[:n]
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/blob" {
			w.Header().Set("Content-Length", strconv.Itoa(n))
			w.Write(blob)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func newTestProxy(t *testing.T, target string, l Link) *Proxy {
	t.Helper()
	p, err := NewProxy(target, l, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
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

func within(t *testing.T, what string, got, want, lo, hi float64) {
	t.Helper()
	r := got / want
	t.Logf("%s: %.4g, expected %.4g: ratio %.2f", what, got, want, r)
	if r < lo || r > hi {
		t.Errorf("%s: %.4g is %.2fx the expected %.4g, want %.2f-%.2fx", what, got, r, want, lo, hi)
	}
}

// TestProxyRate: a 2 MB download through a 20 Mbit/s link takes 2 MB / 2.5 MB/s = 0.8 s
// (plus a few round trips of 2 ms), and the proxy counts the bytes it forwarded.
func TestProxyRate(t *testing.T) {
	const size = 2_000_000
	srv := blobServer(t, size)
	l, _ := ParseLink("20M/2ms")
	p := newTestProxy(t, srv.Listener.Addr().String(), l)
	c := &http.Client{Transport: &http.Transport{}}
	start := time.Now()
	if n := get(t, c, "http://"+p.Addr()+"/blob"); n != size {
		t.Fatalf("got %d bytes, want %d", n, size)
	}
	within(t, "seconds for 2 MB at 20 Mbit/s", time.Since(start).Seconds(), size/2.5e6, 0.9, 1.3)
	cs := p.Counters()
	if cs.Down < size || cs.Down > size+1000 {
		t.Errorf("counted %d bytes down, want the %d of the body plus headers", cs.Down, size)
	}
	if cs.Requests != 1 || cs.Conns != 1 {
		t.Errorf("counted %d requests on %d connections, want 1 on 1", cs.Requests, cs.Conns)
	}
}

// TestProxySharedRate: two downloads at once share the link: together they take as long as
// one download of both.
func TestProxySharedRate(t *testing.T) {
	const size = 1_000_000
	srv := blobServer(t, size)
	l, _ := ParseLink("20M/2ms")
	p := newTestProxy(t, srv.Listener.Addr().String(), l)
	start := time.Now()
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			get(t, &http.Client{Transport: &http.Transport{}}, "http://"+p.Addr()+"/blob")
		})
	}
	wg.Wait()
	within(t, "seconds for 2 x 1 MB at once at 20 Mbit/s", time.Since(start).Seconds(), 2*size/2.5e6, 0.9, 1.3)
}

// TestProxyLatency: a request on a new connection costs two round trips (the handshake,
// then the request and its answer); on a kept-alive connection one.
func TestProxyLatency(t *testing.T) {
	srv := blobServer(t, 0)
	l, _ := ParseLink("1G/100ms")
	p := newTestProxy(t, srv.Listener.Addr().String(), l)
	c := &http.Client{Transport: &http.Transport{}}
	start := time.Now()
	get(t, c, "http://"+p.Addr()+"/small")
	within(t, "first request, s", time.Since(start).Seconds(), 0.2, 0.95, 1.3)
	start = time.Now()
	get(t, c, "http://"+p.Addr()+"/small")
	within(t, "second request on the same connection, s", time.Since(start).Seconds(), 0.1, 0.95, 1.3)
	if cs := p.Counters(); cs.Requests != 2 || cs.Conns != 1 {
		t.Errorf("counted %d requests on %d connections, want 2 on 1", cs.Requests, cs.Conns)
	}
}

// TestProxyBandwidthDelay: a long transfer over a link with a large bandwidth-delay product
// is not slowed by the proxy's queue (it holds enough in flight to fill the link).
func TestProxyBandwidthDelay(t *testing.T) {
	const size = 8_000_000
	srv := blobServer(t, size)
	l, _ := ParseLink("100M/100ms")
	p := newTestProxy(t, srv.Listener.Addr().String(), l)
	start := time.Now()
	get(t, &http.Client{Transport: &http.Transport{}}, "http://"+p.Addr()+"/blob")
	// 8 MB at 12.5 MB/s, plus a handshake and one round trip.
	within(t, "seconds for 8 MB at 100 Mbit/s, 100 ms RTT", time.Since(start).Seconds(), size/12.5e6+0.2, 0.9, 1.3)
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
