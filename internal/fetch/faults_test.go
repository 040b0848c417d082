package fetch

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"lazypull/internal/testutil"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// failFirst answers the first n blob requests with status.
func failFirst(n, status int) func(int, http.ResponseWriter, *http.Request) bool {
	return func(i int, w http.ResponseWriter, _ *http.Request) bool {
		if i <= n {
			http.Error(w, `{"errors":[{"code":"UNAVAILABLE","message":"try later"}]}`, status)
			return true
		}
		return false
	}
}

func TestRetryOn5xxAnd429(t *testing.T) {
	for _, status := range []int{500, 502, 503, 504, 429} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			f := newFake("r")
			blob := testutil.RandBytes(20, 100000)
			d := f.addBlob(blob)
			f.hook = failFirst(2, status)
			_, host := serve(t, f)
			reg, lb := newReg(t, host, "r")
			ranges := []Range{{0, 100}, {50000, 100}}
			collectChecked(t, reg.Blob(d, int64(len(blob))), blob, ranges, ranges)
			if s := reg.Stats(); s.Requests != 3 || s.Retries != 2 || s.Errors != 2 {
				t.Fatalf("stats %+v; want 3 requests, 2 retries", s)
			}
			if !strings.Contains(lb.String(), "retrying") {
				t.Fatal("no retry logged")
			}
		})
	}
}

func TestNoRetryOnClientErrors(t *testing.T) {
	for _, status := range []int{404, 403, 401, 501} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			f := newFake("r")
			f.hook = failFirst(100, status)
			_, host := serve(t, f)
			reg, _ := newReg(t, host, "r")
			d := sha([]byte("x"))
			_, err := reg.Blob(d, 1000).ReadAt(make([]byte, 10), 20)
			var fe *Error
			if !errors.As(err, &fe) {
				t.Fatalf("error %v (%T), want *Error", err, err)
			}
			if fe.StatusCode != status || fe.Temporary() || fe.Registry != host || fe.Repo != "r" ||
				fe.Digest != d.String() || fe.Range != (Range{20, 10}) {
				t.Fatalf("error %+v", fe)
			}
			if f.blobGets.Load() != 1 {
				t.Fatalf("%d requests", f.blobGets.Load())
			}
			msg := err.Error()
			for _, want := range []string{host + "/r@" + d.String(), "bytes 20-29", strconv.Itoa(status)} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q lacks %q", msg, want)
				}
			}
		})
	}
}

// The registry going away: a clear, temporary error after the retries, quickly.
func TestRegistryGone(t *testing.T) {
	srv, host := serve(t, newFake("r"))
	srv.Close()
	reg, _ := newReg(t, host, "r", WithRetry(3, time.Millisecond))
	d := sha([]byte("gone"))
	start := time.Now()
	_, err := reg.Blob(d, 1<<20).ReadAt(make([]byte, 100), 4096)
	var fe *Error
	if !errors.As(err, &fe) || !fe.Temporary() || fe.StatusCode != 0 {
		t.Fatalf("error %v", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("took %v", el)
	}
	if s := reg.Stats(); s.Requests != 3 || s.Retries != 2 {
		t.Fatalf("stats %+v", s)
	}
	for _, want := range []string{host, d.String(), "bytes 4096-4195", "connection refused"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	// Resolve says as much.
	_, err = reg.Resolve(t.Context(), "latest", nil)
	if !errors.As(err, &fe) || !fe.Temporary() || !strings.Contains(err.Error(), host+"/r:latest") {
		t.Fatalf("Resolve: %v", err)
	}
}

// A connection dropped in the middle of a body is retried, for what is missing only.
func TestConnectionCutMidBody(t *testing.T) {
	f, blob, d, reg, _ := blobRegistry(t, 21, 300000)
	f.hook = func(n int, w http.ResponseWriter, r *http.Request) bool {
		if n != 1 {
			return false
		}
		// Serve the real answer into a buffer and send only half of it.
		rec := httptest.NewRecorder()
		rec.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(rec, r, "", time.Time{}, bytes.NewReader(blob))
		body := rec.Body.Bytes()
		cutConn(w, rec.Code, rec.Header(), body[:len(body)/2])
		return true
	}
	ranges := []Range{{0, 1000}, {100000, 50000}, {250000, 1000}}
	collectChecked(t, reg.Blob(d, int64(len(blob))), blob, ranges, ranges)
	h := f.rangeLog()
	if len(h) != 2 || h[0] != "bytes=0-999,100000-149999,250000-250999" || h[1] != "bytes=100000-149999,250000-250999" {
		t.Fatalf("Range headers %q: the retry should ask only for what the cut lost", h)
	}
	if s := reg.Stats(); s.Retries != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// A body shorter than its Content-Length, on a single range.
func TestTruncatedBody(t *testing.T) {
	f, blob, d, reg, _ := blobRegistry(t, 22, 100000)
	f.hook = func(n int, w http.ResponseWriter, r *http.Request) bool {
		if n > 2 {
			return false
		}
		w.Header().Set("Content-Range", "bytes 500-1499/100000")
		w.Header().Set("Content-Length", "1000")
		w.WriteHeader(http.StatusPartialContent)
		_, _ = w.Write(blob[500:900]) // the server closes the connection: short body
		return true
	}
	p := make([]byte, 1000)
	if _, err := reg.Blob(d, int64(len(blob))).ReadAt(p, 500); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, blob[500:1500]) {
		t.Fatal("wrong bytes")
	}
	if s := reg.Stats(); s.Requests != 3 || s.Retries != 2 {
		t.Fatalf("stats %+v", s)
	}
}

// A body that keeps being cut short ends in a temporary error naming the range.
func TestTruncatedBodyGivesUp(t *testing.T) {
	f, blob, d, reg, _ := blobRegistry(t, 23, 10000, WithRetry(2, 0))
	f.hook = func(n int, w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Range", "bytes 0-999/10000")
		w.Header().Set("Content-Length", "1000")
		w.WriteHeader(http.StatusPartialContent)
		_, _ = w.Write(blob[:10])
		return true
	}
	_, err := reg.Blob(d, int64(len(blob))).ReadAt(make([]byte, 1000), 0)
	var fe *Error
	if !errors.As(err, &fe) || !fe.Temporary() || !errors.Is(err, io.ErrUnexpectedEOF) || fe.Range != (Range{0, 1000}) {
		t.Fatalf("error %v", err)
	}
}

// multiRefusal answers multi-range requests some way other than multipart; single ranges
// are served.
func multiRefusal(answer func(w http.ResponseWriter, r *http.Request)) func(int, http.ResponseWriter, *http.Request) bool {
	return func(_ int, w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.Header.Get("Range"), ",") {
			answer(w, r)
			return true
		}
		return false
	}
}

func TestMultiRangeFallback(t *testing.T) {
	blob := testutil.RandBytes(24, 200000)
	cases := map[string]struct {
		answer   func(w http.ResponseWriter, r *http.Request)
		requests int64 // for the first Fetch
	}{
		"416": {func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
		}, 4},
		"400": {func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "bad range", http.StatusBadRequest)
		}, 4},
		// The whole blob: small enough to serve from, so no more requests.
		"200 whole": {func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
			_, _ = w.Write(blob)
		}, 1},
		// The first range only, as a plain 206 (what a server that reads one range does).
		"206 first only": {func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", "bytes 0-99/200000")
			w.WriteHeader(http.StatusPartialContent)
			_, _ = w.Write(blob[:100])
		}, 3},
		// A multipart body whose second part claims bytes nobody asked for.
		"mangled multipart": {func(w http.ResponseWriter, r *http.Request) {
			mw := multipart.NewWriter(w)
			w.Header().Set("Content-Type", "multipart/byteranges; boundary="+mw.Boundary())
			w.WriteHeader(http.StatusPartialContent)
			p, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Range": {"bytes 0-99/200000"}})
			_, _ = p.Write(blob[:100])
			p, _ = mw.CreatePart(textproto.MIMEHeader{"Content-Range": {"bytes 7-16/200000"}})
			_, _ = p.Write(blob[7:17])
			_ = mw.Close()
		}, 3},
		// Garbage where multipart should be.
		"not multipart at all": {func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "multipart/byteranges; boundary=XYZ")
			w.WriteHeader(http.StatusPartialContent)
			_, _ = w.Write([]byte("<html>oops</html>"))
		}, 4},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			f := newFake("r")
			d := f.addBlob(blob)
			f.hook = multiRefusal(c.answer)
			_, host := serve(t, f)
			reg, lb := newReg(t, host, "r")
			ranges := []Range{{0, 100}, {50000, 100}, {150000, 100}}
			collectChecked(t, reg.Blob(d, int64(len(blob))), blob, ranges, ranges)
			s := reg.Stats()
			if s.Requests != c.requests || s.Fallbacks != 1 {
				t.Fatalf("stats %+v, want %d requests and a fallback", s, c.requests)
			}
			if !strings.Contains(lb.String(), "range by range") {
				t.Fatal("fallback not logged")
			}
			// For good: the next Fetch asks range by range from the start.
			n := len(f.rangeLog())
			more := []Range{{1000, 10}, {90000, 10}}
			collectChecked(t, reg.Blob(d, int64(len(blob))), blob, more, more)
			for _, h := range f.rangeLog()[n:] {
				if strings.Contains(h, ",") {
					t.Fatalf("multi-range request %q after the fallback", h)
				}
			}
		})
	}
}

// ggcr's in-process registry reads only the first range of a multi-range request.
func TestFallbackWithGGCRRegistry(t *testing.T) {
	host := testutil.NewRegistry(t).Host
	blob := testutil.RandBytes(25, 300000)
	layer := static.NewLayer(blob, types.OCILayerZStd)
	ref, err := name.NewDigest(host + "/ggcr/blob@" + sha(blob).String())
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteLayer(ref.Context(), layer); err != nil {
		t.Fatal(err)
	}
	reg, _ := newReg(t, host, "ggcr/blob")
	ranges := []Range{{10, 100}, {100000, 1000}, {299000, 1000}}
	collectChecked(t, reg.Blob(sha(blob), int64(len(blob))), blob, ranges, ranges)
	if s := reg.Stats(); s.Fallbacks != 1 || s.Requests != 3 {
		t.Fatalf("stats %+v: want the first range kept from the refused request", s)
	}
}

// A registry that ignores Range altogether: what lies in the first maxRequest bytes is
// served from the body's start; what lies past it is an error, never wrong bytes.
func TestRangeIgnored(t *testing.T) {
	f, blob, d, reg, _ := blobRegistry(t, 26, 100000, WithCoalescing(0, 50000))
	f.hook = func(_ int, w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		_, _ = w.Write(blob)
		return true
	}
	b := reg.Blob(d, int64(len(blob)))
	p := make([]byte, 1000)
	if _, err := b.ReadAt(p, 40000); err != nil || !bytes.Equal(p, blob[40000:41000]) {
		t.Fatalf("ReadAt in the first 50000 bytes: %v", err)
	}
	called := false
	err := b.Fetch(t.Context(), []Range{{60000, 100}}, func(Range, []byte) error { called = true; return nil })
	var fe *Error
	if !errors.As(err, &fe) || fe.Temporary() || fe.StatusCode != 200 || called {
		t.Fatalf("range past the limit: %v (called %v)", err, called)
	}
}

// Answers that do not match what was asked never reach the caller.
func TestWrongRangeAnswer(t *testing.T) {
	f := newFake("r")
	blob := testutil.RandBytes(27, 100000)
	d := f.addBlob(blob)
	answers := map[string]func(w http.ResponseWriter){
		"shifted":          func(w http.ResponseWriter) { answer206(w, "bytes 1001-2000/100000", blob[1001:2001]) },
		"other size":       func(w http.ResponseWriter) { answer206(w, "bytes 1000-1999/99999", blob[1000:2000]) },
		"no Content-Range": func(w http.ResponseWriter) { answer206(w, "", blob[1000:2000]) },
		"longer body":      func(w http.ResponseWriter) { answer206(w, "bytes 1000-1999/100000", blob[1000:3000]) },
		"200 of another size": func(w http.ResponseWriter) {
			w.Header().Set("Content-Length", "5000")
			_, _ = w.Write(blob[:5000])
		},
	}
	for name, answer := range answers {
		t.Run(name, func(t *testing.T) {
			f.hook = func(_ int, w http.ResponseWriter, _ *http.Request) bool { answer(w); return true }
			_, host := serve(t, f)
			reg, _ := newReg(t, host, "r")
			called := false
			err := reg.Blob(d, int64(len(blob))).Fetch(t.Context(), []Range{{1000, 1000}}, func(Range, []byte) error {
				called = true
				return nil
			})
			var fe *Error
			if !errors.As(err, &fe) || fe.Temporary() || called || !errors.Is(err, errMalformed) {
				t.Fatalf("error %v, called %v", err, called)
			}
			if s := reg.Stats(); s.Retries != 0 {
				t.Fatalf("retried a malformed answer: %+v", s)
			}
		})
	}
}

// A redirect to object storage on another host is followed; the credentials stay with the
// registry, and the storage URL's signature stays out of errors and logs.
func TestRedirectKeepsCredentialsHome(t *testing.T) {
	blob := testutil.RandBytes(28, 200000)
	d := sha(blob)
	var mu sync.Mutex
	var storageAuth []string
	storage := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		storageAuth = append(storageAuth, r.Header.Get("Authorization"))
		mu.Unlock()
		if r.URL.Query().Get("X-Signature") != "s3cr3t-signature" {
			http.Error(w, "bad signature", http.StatusForbidden)
			return
		}
		if r.URL.Query().Get("fail") != "" {
			http.Error(w, "denied", http.StatusForbidden)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
	})
	_, storageHost := serve(t, storage)
	// Another name for the same loopback address: another host as far as clients go.
	storageHost = strings.Replace(storageHost, "127.0.0.1", "localhost", 1)
	var fail atomic.Value
	fail.Store("")
	reg := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Basic "+b64("alice:pa55word") {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, "auth", http.StatusUnauthorized)
			return
		}
		http.Redirect(w, r, "http://"+storageHost+"/bucket/"+d.Hex+"?X-Signature=s3cr3t-signature"+fail.Load().(string), http.StatusTemporaryRedirect)
	})
	_, host := serve(t, reg)
	r, lb := newReg(t, host, "r", WithKeychain(staticKeychain{host: host, user: "alice", pass: "pa55word"}))
	ranges := []Range{{0, 100}, {100000, 5000}}
	collectChecked(t, r.Blob(d, int64(len(blob))), blob, ranges, ranges)
	mu.Lock()
	auths := append([]string(nil), storageAuth...)
	mu.Unlock()
	if len(auths) == 0 {
		t.Fatal("storage never asked")
	}
	for _, a := range auths {
		if a != "" {
			t.Fatalf("storage got Authorization %q", a)
		}
	}
	fail.Store("&fail=1")
	_, err := r.Blob(d, int64(len(blob))).ReadAt(make([]byte, 10), 0)
	var fe *Error
	if !errors.As(err, &fe) || fe.StatusCode != 403 {
		t.Fatalf("error %v", err)
	}
	for _, secret := range []string{"s3cr3t", "pa55word", b64("alice:pa55word")} {
		if strings.Contains(err.Error(), secret) || strings.Contains(lb.String(), secret) {
			t.Fatalf("%q leaked into the error or the log: %v", secret, err)
		}
	}
}

func TestErrorString(t *testing.T) {
	e := &Error{Registry: "r.example:5000", Repo: "a/b", Digest: "sha256:abc", Range: Range{10, 5}, StatusCode: 503, Err: errors.New("boom")}
	if got, want := e.Error(), "fetch r.example:5000/a/b@sha256:abc bytes 10-14: HTTP 503: boom"; got != want {
		t.Fatalf("%q, want %q", got, want)
	}
	e = &Error{Registry: "h", Repo: "r", Digest: ":latest", StatusCode: 404, Err: fmt.Errorf("404 Not Found")}
	if got, want := e.Error(), "fetch h/r:latest: 404 Not Found"; got != want {
		t.Fatalf("%q, want %q", got, want)
	}
}

// https to a registry that speaks plain http, not on loopback (by name), fails at once,
// saying so.
func TestHTTPSToPlainRegistry(t *testing.T) {
	_, addr := serve(t, newFake("r"))
	_, port, _ := net.SplitHostPort(addr)
	reg, err := openRef("registry.invalid:"+port+"/r", WithRetry(3, time.Millisecond), WithTransport(dialOnly(addr)))
	if err != nil {
		t.Fatal(err)
	}
	finalError(t, reg, sha([]byte("x")), 10, "HTTP response to HTTPS client")
}

// answer206 writes a 206 answer of body with the Content-Range cr, none if "".
func answer206(w http.ResponseWriter, cr string, body []byte) {
	if cr != "" {
		w.Header().Set("Content-Range", cr)
	}
	w.WriteHeader(http.StatusPartialContent)
	_, _ = w.Write(body)
}
