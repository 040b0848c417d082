package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
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

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// fakeRegistry is a registry of one repository that serves blobs with http.ServeContent,
// which answers multi-range requests with multipart/byteranges as Docker's registry does.
// hook, when set, sees every blob request first and may answer it itself.
type fakeRegistry struct {
	repo string

	mu        sync.Mutex
	blobs     map[string][]byte
	manifests map[string]fakeManifest // by tag and by digest
	ranges    []string                // Range headers of blob requests, in order
	auths     []string                // Authorization headers of blob requests
	hook      func(n int, w http.ResponseWriter, r *http.Request) bool

	blobGets  atomic.Int64
	manGets   atomic.Int64
	heads     atomic.Int64
	others    atomic.Int64 // anything but blob and manifest requests (pings)
	inflight  atomic.Int64
	maxFlight atomic.Int64
	delay     time.Duration // before each blob answer
	// blobReqs gets the number of each blob request as it arrives (before hook), for a
	// test to wait on; requests beyond its buffer are not signalled.
	blobReqs chan int
}

type fakeManifest struct {
	mediaType string
	raw       []byte
}

func newFake(repo string) *fakeRegistry {
	return &fakeRegistry{repo: repo, blobs: map[string][]byte{}, manifests: map[string]fakeManifest{}, blobReqs: make(chan int, 100)}
}

func (f *fakeRegistry) addBlob(b []byte) v1.Hash {
	h := sha(b)
	f.mu.Lock()
	f.blobs[h.String()] = b
	f.mu.Unlock()
	return h
}

func (f *fakeRegistry) addManifest(tag, mediaType string, raw []byte) v1.Hash {
	h := sha(raw)
	f.mu.Lock()
	f.manifests[h.String()] = fakeManifest{mediaType, raw}
	if tag != "" {
		f.manifests[tag] = fakeManifest{mediaType, raw}
	}
	f.mu.Unlock()
	return h
}

func (f *fakeRegistry) rangeLog() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.ranges...)
}

func (f *fakeRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	prefix := "/v2/" + f.repo + "/"
	switch {
	case strings.HasPrefix(r.URL.Path, prefix+"blobs/"):
		if r.Method == http.MethodHead {
			f.heads.Add(1)
		}
		n := int(f.blobGets.Add(1))
		select {
		case f.blobReqs <- n:
		default:
		}
		cur := f.inflight.Add(1)
		defer f.inflight.Add(-1)
		for {
			m := f.maxFlight.Load()
			if cur <= m || f.maxFlight.CompareAndSwap(m, cur) {
				break
			}
		}
		f.mu.Lock()
		f.ranges = append(f.ranges, r.Header.Get("Range"))
		f.auths = append(f.auths, r.Header.Get("Authorization"))
		hook := f.hook
		b, ok := f.blobs[strings.TrimPrefix(r.URL.Path, prefix+"blobs/")]
		f.mu.Unlock()
		if f.delay > 0 {
			time.Sleep(f.delay)
		}
		if hook != nil && hook(n, w, r) {
			return
		}
		if !ok {
			http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
	case strings.HasPrefix(r.URL.Path, prefix+"manifests/"):
		f.manGets.Add(1)
		f.mu.Lock()
		m, ok := f.manifests[strings.TrimPrefix(r.URL.Path, prefix+"manifests/")]
		f.mu.Unlock()
		if !ok {
			http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", m.mediaType)
		w.Header().Set("Docker-Content-Digest", sha(m.raw).String())
		_, _ = w.Write(m.raw)
	default:
		f.others.Add(1)
		if r.URL.Path == "/v2/" {
			return
		}
		http.NotFound(w, r)
	}
}

func sha(b []byte) v1.Hash {
	s := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
}

// serve starts a test server and returns its host:port.
// basicAuth serves next to the requests whose basic credentials ok accepts, and answers
// the others with a challenge for realm, counting them in refused (when not nil).
func basicAuth(realm string, ok func(user, pass string) bool, refused *atomic.Int64, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, given := r.BasicAuth(); !given || !ok(u, p) {
			if refused != nil {
				refused.Add(1)
			}
			w.Header().Set("WWW-Authenticate", `Basic realm="`+realm+`"`)
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// bearerChallenge answers a request without a valid token: a challenge naming the token
// endpoint at host and the pull scope of repo.
func bearerChallenge(w http.ResponseWriter, host, repo string) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="http://`+host+`/token",service="test-registry",scope="repository:`+repo+`:pull"`)
	http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
}

func serve(t *testing.T, h http.Handler) (*httptest.Server, string) {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, strings.TrimPrefix(srv.URL, "http://")
}

// newReg makes a Registry for host/repo over plain http with fast retries.
func newReg(t *testing.T, host, repo string, opts ...Option) (*Registry, *testutil.LogBuffer) {
	t.Helper()
	log, lb := testutil.NewLog(t)
	all := append([]Option{WithPlainHTTP(), WithRetry(4, time.Millisecond), WithLogger(log)}, opts...)
	r, err := openRef(host+"/"+repo, all...)
	if err != nil {
		t.Fatal(err)
	}
	return r, lb
}

// collect runs Fetch and returns each range's bytes (copied), failing on duplicates.
func collect(t *testing.T, b *Blob, ranges []Range) (map[Range][]byte, error) {
	t.Helper()
	out := map[Range][]byte{}
	var mu sync.Mutex
	err := b.Fetch(t.Context(), ranges, func(r Range, data []byte) error {
		mu.Lock()
		defer mu.Unlock()
		if int64(len(data)) != r.Len {
			t.Errorf("range %v: got %d bytes", r, len(data))
		}
		if _, dup := out[r]; dup {
			t.Errorf("range %v delivered twice", r)
		}
		out[r] = bytes.Clone(data)
		return nil
	})
	return out, err
}

// checkRanges checks that every range came with the blob's bytes.
func checkRanges(t *testing.T, blob []byte, ranges []Range, got map[Range][]byte) {
	t.Helper()
	for _, r := range ranges {
		g, ok := got[r]
		if !ok {
			t.Errorf("range %v not delivered", r)
			continue
		}
		if !bytes.Equal(g, blob[r.Off:r.End()]) {
			t.Errorf("range %v: wrong bytes", r)
		}
	}
}

// cutConn writes a response header and part of the body, then drops the connection.
func cutConn(w http.ResponseWriter, status int, header http.Header, body []byte) {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	var hb bytes.Buffer
	hb.WriteString("HTTP/1.1 " + strconv.Itoa(status) + " " + http.StatusText(status) + "\r\n")
	_ = header.Write(&hb)
	hb.WriteString("\r\n")
	hb.Write(body)
	_, _ = conn.Write(hb.Bytes())
}

func asError(err error, target **Error) bool { return errors.As(err, target) }

// openRef opens ref through a Client of its own, made with opts.
func openRef(ref string, opts ...Option) (*Registry, error) {
	c, err := NewClient(opts...)
	if err != nil {
		return nil, err
	}
	return c.Open(ref)
}

// dialOnly is a transport that dials addr whatever a request names: a registry on
// loopback passes for one elsewhere, and nothing leaves the machine.
func dialOnly(addr string) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	t.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	return t
}

// blobRegistry serves a random blob (testutil.RandBytes(seed, n)) from a fake registry of
// repository "r" and returns the fake, the blob, its digest, and a Registry for it (newReg,
// with opts) with its log.
func blobRegistry(t *testing.T, seed uint64, n int, opts ...Option) (*fakeRegistry, []byte, v1.Hash, *Registry, *testutil.LogBuffer) {
	t.Helper()
	f := newFake("r")
	blob := testutil.RandBytes(seed, n)
	d := f.addBlob(blob)
	_, host := serve(t, f)
	reg, lb := newReg(t, host, "r", opts...)
	return f, blob, d, reg, lb
}

// collectChecked runs Fetch of asked and checks that every range of want came right; it
// returns what came and the bytes want covers.
func collectChecked(t *testing.T, b *Blob, blob []byte, asked, want []Range) (map[Range][]byte, int64) {
	t.Helper()
	got, err := collect(t, b, asked)
	if err != nil {
		t.Fatal(err)
	}
	checkRanges(t, blob, want, got)
	var needed int64
	for _, r := range want {
		needed += r.Len
	}
	return got, needed
}

// finalError reads the first bytes of blob d (size bytes) through reg and checks that the
// read fails after one request, not retried, with an *Error that is not temporary and
// says want. It returns the error.
func finalError(t *testing.T, reg *Registry, d v1.Hash, size int64, want string) error {
	t.Helper()
	_, err := reg.Blob(d, size).ReadAt(make([]byte, min(size, 5)), 0)
	checkFinal(t, reg, err, want)
	return err
}

// checkFinal checks that err, reg's first request's, is an *Error that is not temporary and
// says want, and that it was not retried.
func checkFinal(t *testing.T, reg *Registry, err error, want string) {
	t.Helper()
	var fe *Error
	if !errors.As(err, &fe) || fe.Temporary() || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %v; want a final one saying %q", err, want)
	}
	if s := reg.Stats(); s.Requests != 1 {
		t.Fatalf("stats %+v: want one request, not retried", s)
	}
}

// inProcess is a transport that serves every request with h in the caller's goroutine: no
// network, so that a test can run in a synctest bubble.
func inProcess(h http.Handler) roundTripFunc {
	return func(r *http.Request) (*http.Response, error) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		resp := rec.Result()
		resp.Request = r
		return resp, nil
	}
}
