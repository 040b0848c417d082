package e2e

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"lazypull/internal/store"
)

// faultProxy stands between a mount and the registry and damages blob answers on demand.
type faultProxy struct {
	mode  atomic.Value // string: "", "500", "cut", "flip", "truncate"
	count atomic.Int64
	srv   *http.Server
	ln    net.Listener
	addr  string
}

func newFaultProxy(t *testing.T, registry string) *faultProxy {
	t.Helper()
	target, _ := url.Parse("http://" + registry)
	p := &faultProxy{}
	p.mode.Store("")
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(r *http.Response) error {
		if !strings.Contains(r.Request.URL.Path, "/blobs/") {
			return nil
		}
		n := p.count.Add(1)
		switch p.mode.Load().(string) {
		case "500":
			if n%2 == 1 {
				r.Body.Close()
				r.StatusCode, r.Status = 500, "500 Internal Server Error"
				r.Body = io.NopCloser(strings.NewReader("injected"))
				r.ContentLength = 8
				r.Header.Set("Content-Length", "8")
			}
		case "flip":
			b, _ := io.ReadAll(r.Body)
			r.Body.Close()
			if len(b) > 0 {
				b[len(b)/2] ^= 0x20
			}
			r.Body = io.NopCloser(strings.NewReader(string(b)))
		case "truncate", "cut":
			// Every other answer, so that the mount's retry can succeed.
			if n%2 == 1 {
				r.Body = &shortBody{r: r.Body, left: r.ContentLength / 2}
			}
		}
		return nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.ln, p.addr = ln, ln.Addr().String()
	p.srv = &http.Server{Handler: rp}
	go p.srv.Serve(ln)
	t.Cleanup(func() { p.srv.Close() })
	return p
}

// shortBody ends a body early; the proxy then closes the connection mid-answer.
type shortBody struct {
	r    io.ReadCloser
	left int64
}

func (s *shortBody) Read(p []byte) (int, error) {
	if s.left <= 0 {
		return 0, errors.New("injected: connection cut")
	}
	if int64(len(p)) > s.left {
		p = p[:s.left]
	}
	n, err := s.r.Read(p)
	s.left -= int64(n)
	return n, err
}

func (s *shortBody) Close() error { return s.r.Close() }

// TestMountFaults: through a proxy that cuts, fails, truncates and corrupts the registry's
// answers, every read gives the right bytes (after retries) or EIO, never a wrong byte,
// and the store holds only verified content afterwards.
func TestMountFaults(t *testing.T) {
	e := setup(t)
	ref := e.lazyImage(t, "python")
	want := e.reference(t)
	proxy := newFaultProxy(t, e.registry)
	viaProxy := proxy.addr + strings.TrimPrefix(ref, e.registry)
	storeDir := t.TempDir()
	m := e.mount(t, viaProxy, storeDir)

	// Each mode reads files no earlier mode fetched: distinct directories.
	var files []string
	filepath.WalkDir(filepath.Join(want, "usr/lib/python3.11"), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			rel, _ := filepath.Rel(want, p)
			files = append(files, rel)
		}
		return nil
	})
	sort.Strings(files)
	modes := []string{"500", "cut", "truncate", "flip", "gone", ""}
	per := len(files) / len(modes)
	for i, mode := range modes {
		t.Run("mode="+mode, func(t *testing.T) {
			proxy.mode.Store(mode)
			if mode == "gone" {
				proxy.srv.Close()
			}
			batch := files[i*per : (i+1)*per]
			// A failing read costs the mount's retries with backoff (seconds): a few do.
			if len(batch) > 12 {
				batch = batch[:12]
			}
			var ok, eio int
			for _, f := range batch {
				w, err := os.ReadFile(filepath.Join(want, f))
				if err != nil {
					t.Fatal(err)
				}
				g, err := os.ReadFile(filepath.Join(m.dir, f))
				switch {
				case err == nil && string(g) == string(w):
					ok++
				case err == nil:
					t.Fatalf("%s: WRONG BYTES served under fault %q", f, mode)
				case errors.Is(err, syscall.EIO):
					eio++
				default:
					t.Fatalf("%s: %v; want the right bytes or EIO", f, err)
				}
			}
			t.Logf("fault %q: %d files right, %d EIO", mode, ok, eio)
			switch mode {
			case "500", "cut", "truncate", "":
				if eio > 0 {
					t.Errorf("fault %q: %d reads failed; retries should have served them", mode, eio)
				}
			case "flip", "gone":
				if eio == 0 {
					t.Errorf("fault %q: no read failed", mode)
				}
			}
			if mode == "gone" {
				// Bring the registry path back on the same address for the last mode.
				ln, err := net.Listen("tcp", proxy.addr)
				if err != nil {
					t.Fatalf("re-listen on %s: %v", proxy.addr, err)
				}
				proxy.srv = &http.Server{Handler: proxy.srv.Handler}
				go proxy.srv.Serve(ln)
			}
		})
	}
	// A file that failed under "flip" reads right once the registry answers right.
	proxy.mode.Store("")
	flipped := files[3*per]
	w, _ := os.ReadFile(filepath.Join(want, flipped))
	if g, err := os.ReadFile(filepath.Join(m.dir, flipped)); err != nil || string(g) != string(w) {
		t.Errorf("%s after the fault ended: %v", flipped, err)
	}
	if !strings.Contains(m.log.String(), "level=") {
		t.Errorf("no log lines from the mount")
	}
	m.stop(t)

	st, err := store.Open(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := st.Verify(context.Background())
	st.Close()
	if err != nil || r.Bad != 0 || r.BadChunks != 0 {
		t.Fatalf("store after faults: %+v, %v", r, err)
	}
	t.Logf("store verified: %d objects", r.Objects)
}
