package daemon

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/format"
	"lazypull/internal/fetch"
	"lazypull/internal/store"
	"lazypull/internal/testutil"
)

// requestLog counts the requests of a testutil registry by method and kind ("GET
// manifests", "HEAD blobs" and so on; "GET referrers-tag": the tag schema's index), and
// can make its blob requests fail.
type requestLog struct {
	reg *testutil.Registry
	// refuseBlobs answers every blob request 401; refuseManifests every manifest request.
	refuseBlobs, refuseManifests atomic.Bool
	// cutBlob, when set, is a blob digest whose GET is answered half and then cut (the
	// registry dying mid-read).
	cutBlob atomic.Pointer[string]
}

// countedRegistry serves an in-process registry and returns the log of its requests.
func countedRegistry(t *testing.T) *requestLog {
	t.Helper()
	reqs := &requestLog{}
	reqs.reg = testutil.NewRegistry(t, testutil.WithHandler(reqs.failing))
	return reqs
}

// naming counts the requests whose line names s.
func (l *requestLog) naming(s string) int {
	n := 0
	for _, line := range l.reg.Requests() {
		if strings.Contains(line, s) {
			n++
		}
	}
	return n
}

// reset forgets the requests counted so far.
func (l *requestLog) reset() { l.reg.Take() }

func (l *requestLog) count(key string) int {
	n := 0
	for _, line := range l.reg.Requests() {
		method, rest, _ := strings.Cut(line, " ")
		path, _, _ := strings.Cut(rest, " ") // the path, without " Range: ..."
		if method+" "+requestKind(path) == key {
			n++
		}
	}
	return n
}

// requestKind is what a registry request's path asks for: "manifests", "blobs",
// "referrers", "referrers-tag" (the tag schema's index) or "other".
func requestKind(path string) string {
	kind := "other"
	for _, k := range []string{"manifests", "blobs", "referrers"} {
		if strings.Contains(path, "/"+k+"/") {
			kind = k
		}
	}
	if strings.Contains(path, "/manifests/sha256-") {
		kind = "referrers-tag"
	}
	return kind
}

// failing wraps the registry's handler to refuse or cut blob requests as l says.
func (l *requestLog) failing(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if requestKind(r.URL.Path) == "manifests" && l.refuseManifests.Load() {
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
			return
		}
		if requestKind(r.URL.Path) != "blobs" {
			h.ServeHTTP(w, r)
			return
		}
		if l.refuseBlobs.Load() {
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
			return
		}
		if d := l.cutBlob.Load(); d != nil && strings.HasSuffix(r.URL.Path, "/"+*d) && r.Method == http.MethodGet {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			body := rec.Body.Bytes()
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.WriteHeader(rec.Code)
			w.Write(body[:len(body)/2])
			w.(http.Flusher).Flush()
			if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
				conn.Close()
			}
			return
		}
		h.ServeHTTP(w, r)
	})
}

// warmFixture pushes a one-layer lazypull image and returns a snapshotter file system over
// a fresh store, the tag's reference, the image and its manifest's digest.
func warmFixture(t *testing.T, fopts ...fetch.Option) (*SnapshotFS, string, v1.Image, v1.Hash, *requestLog) {
	t.Helper()
	img, _ := lazyImageOf(t, map[string][]byte{"bin/app": []byte(strings.Repeat("app", 5000))})
	ref, reqs, subject := pushCounted(t, img, "warm:v1")
	reqs.reset() // the push's
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f := NewSnapshotFS(st, nil, slog.New(slog.DiscardHandler), testClient(t, fopts...))
	t.Cleanup(func() { f.Close() })
	return f, ref, img, subject.Digest, reqs
}

// labelsOf are the labels `lazypull pull` gives the image's first layer (CRI's too).
func labelsOf(t *testing.T, ref string, img v1.Image, d v1.Hash) map[string]string {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	l := m.Layers[0]
	return pulledLabels(ref, d.String(), l.Digest.String(), l.Annotations)
}

// TestWarmRefused: a warm request whose manifest does not match its digest, or that sends
// an index or something else than an image manifest, is refused with an error that says
// so, and opens nothing.
func TestWarmRefused(t *testing.T) {
	f, ref, img, d, reqs := warmFixture(t)
	raw, _ := img.RawManifest()
	idx := mutate.IndexMediaType(mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: img,
		Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}}), types.OCIImageIndex)
	idxRaw, _ := idx.RawManifest()
	idxDigest, _ := idx.Digest()
	// An index without its media type inside, sent as an image manifest.
	bare := []byte(`{"schemaVersion":2,"manifests":[]}`)
	bareDigest, _, _ := v1.SHA256(strings.NewReader(string(bare)))
	cfg, _ := img.RawConfigFile()
	cfgDigest, _ := img.ConfigName()
	for _, c := range []struct {
		name, ref, digest, mediaType string
		raw                          []byte
		want                         string
	}{
		{"other digest", ref, "sha256:" + strings.Repeat("0", 64), "", raw, "has digest " + d.String()},
		{"bad digest", ref, "md5:1234", "", raw, "want sha256"},
		{"bad reference", "UPPER/x:y", d.String(), "", raw, "image reference"},
		{"index", ref, idxDigest.String(), "", idxRaw, "not an image manifest"},
		{"index without media type", ref, bareDigest.String(), string(types.OCIManifestSchema1), bare, "not an image manifest"},
		{"config", ref, cfgDigest.String(), string(types.OCIConfigJSON), cfg, "not an image manifest"},
		{"too large", ref, d.String(), "", make([]byte, maxWarmManifest+1), "more than"},
	} {
		err := f.Warm(context.Background(), c.ref, c.digest, c.mediaType, c.raw, "")
		if !errors.Is(err, ErrWarmRefused) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Warm = %v; want it refused, saying %q", c.name, err, c.want)
		}
	}
	if n := len(f.images); n != 0 {
		t.Errorf("refused warm requests left %d images", n)
	}
	if n := reqs.count("GET blobs"); n != 0 {
		t.Errorf("refused warm requests made %d blob requests", n)
	}
}

// TestWarmThenPrepare: a warm request opens the image without fetching its manifest, and
// the layer's Prepare (f.layer, with the labels the pull gives) joins that image instead
// of opening it again: one index read, no manifest request at all.
func TestWarmThenPrepare(t *testing.T) {
	f, ref, img, d, reqs := warmFixture(t)
	raw, _ := img.RawManifest()
	if err := f.Warm(context.Background(), ref, d.String(), "", raw, ""); err != nil {
		t.Fatal(err)
	}
	// Twice: the second joins the first.
	if err := f.Warm(context.Background(), ref, d.String(), "", raw, ""); err != nil {
		t.Fatal(err)
	}
	l, im, err := f.layer(context.Background(), labelsOf(t, ref, img, d))
	if err != nil {
		t.Fatal(err)
	}
	if l.Content == nil || im.Image.Descriptor.Digest != d || len(im.Layers) != 1 {
		t.Fatalf("layer %v of image %+v", l, im.Image.Descriptor)
	}
	if got := f.Images(); len(got) != 1 || got[0] != im {
		t.Errorf("%d images open; want the warm one only", len(got))
	}
	if n := reqs.count("GET manifests") + reqs.count("HEAD manifests"); n != 0 {
		t.Errorf("%d manifest requests; the warm request carried the manifest", n)
	}
	// Besides the index, the config may be read: the image's command is walked
	// (command.go).
	cfg, _ := img.ConfigName()
	if n, c := reqs.count("GET blobs"), reqs.naming(cfg.String()); n-c != 1 || c > 1 {
		t.Errorf("%d blob requests, %d of the config; want the one layer index, read once, and the config at most once", n, c)
	}
	// Kept in the store as a fetched manifest is: the image opens again without its
	// registry.
	md, err := format.ParseDigest(d.String())
	if err != nil {
		t.Fatal(err)
	}
	im.waitKept()
	if got, err := f.store.Meta(md); err != nil || string(got) != string(raw) {
		t.Errorf("manifest %s not kept in the store: %v", d, err)
	}
}

// TestWarmFailureForgotten: a warm open that fails is logged and forgotten: the layer's
// Prepare then opens the image itself (and reports its own error), rather than taking the
// warm failure as its image's.
func TestWarmFailureForgotten(t *testing.T) {
	// A hosts directory that does not exist fails every open of the image.
	f, ref, img, d, _ := warmFixture(t, fetch.WithHostsDir(filepath.Join(t.TempDir(), "none")))
	raw, _ := img.RawManifest()
	e := warmed(t, f, ref, d.String(), raw)
	_, _, err := f.layer(context.Background(), labelsOf(t, ref, img, d))
	if err == nil || err == e.err {
		t.Fatalf("Prepare after a failed warm open: %v; want its own open's error", err)
	}
	if !strings.Contains(err.Error(), "hosts directory") {
		t.Errorf("Prepare's error %v does not say why", err)
	}
}

// TestWarmNoLayerOpened: a warm open that opens not one layer (the registry refuses the
// snapshotter) fails and is forgotten, so that the layer's Prepare opens the image itself,
// fetching the manifest.
func TestWarmNoLayerOpened(t *testing.T) {
	f, ref, img, d, reqs := warmFixture(t)
	reqs.refuseBlobs.Store(true)
	raw, _ := img.RawManifest()
	e := warmed(t, f, ref, d.String(), raw)
	if e.err == nil || !strings.Contains(e.err.Error(), "401") {
		t.Fatalf("warm open with every index refused: %v; want the 401", e.err)
	}
	// Not kept: the Prepare must meet the registry's refusal itself.
	md, err := format.ParseDigest(d.String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Meta(md); err == nil {
		t.Errorf("the manifest of a failed warm open was kept in the store")
	}
	_, _, err = f.layer(context.Background(), labelsOf(t, ref, img, d))
	if err == nil || err == e.err {
		t.Errorf("Prepare after a failed warm open: %v; want its own open's error", err)
	}
	if n := reqs.count("GET manifests"); n != 1 {
		t.Errorf("%d manifest requests; want the Prepare's own", n)
	}
}

// warmed sends f a warm request for the manifest raw of ref and waits for the open it
// starts to end; it returns the image's entry.
func warmed(t *testing.T, f *SnapshotFS, ref, digest string, raw []byte) *imageEntry {
	t.Helper()
	// Not looked up in f.images after Warm: a failed open may have forgotten it already.
	e, err := f.warm(context.Background(), ref, digest, "", raw, "")
	if err != nil {
		t.Fatal(err)
	}
	<-e.done
	return e
}

// TestConnectRefusesBadRef: a hint whose reference does not parse is refused, saying so.
func TestConnectRefusesBadRef(t *testing.T) {
	f, _, _, _, _ := warmFixture(t)
	if err := f.Connect("Not A Ref::"); !errors.Is(err, ErrWarmRefused) || !strings.Contains(err.Error(), "Not A Ref::") {
		t.Errorf("Connect of a bad reference: %v", err)
	}
}
