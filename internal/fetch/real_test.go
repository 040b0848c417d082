package fetch

import (
	"archive/tar"
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"lazypull/format"
	"lazypull/internal/testutil"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// realRegistry returns host:port of the registry scripts/test.sh runs (Debian's
// docker-registry, distribution 2.8). Without one, the test is skipped, loudly; under
// LAZYPULL_E2E=1 it fails.
func realRegistry(t *testing.T) string {
	t.Helper()
	addr := os.Getenv("LAZYPULL_TEST_REGISTRY")
	if addr == "" {
		if os.Getenv("LAZYPULL_E2E") == "1" {
			t.Fatal("LAZYPULL_E2E=1 but LAZYPULL_TEST_REGISTRY is unset: run through scripts/test.sh")
		}
		t.Skip("SKIP: LAZYPULL_TEST_REGISTRY unset: no real registry (make test, or scripts/registry.sh start DIR ADDR and set it)")
	}
	return addr
}

// countingTransport counts the requests that go out, by method.
type countingTransport struct {
	inner http.RoundTripper
	mu    sync.Mutex
	n     map[string]int
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[r.Method]++
	c.mu.Unlock()
	return c.inner.RoundTrip(r)
}

func (c *countingTransport) count() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for k, v := range c.n {
		out[k] = v
	}
	return out
}

// lazypullLayer writes a tar of small and large files as a lazypull layer.
func lazypullLayer(t *testing.T) (blob []byte, res *format.Result, files map[string][]byte) {
	t.Helper()
	rnd := rand.New(rand.NewPCG(80, 80))
	words := strings.Fields("import def class return self None True False for in if else elif while try except raise with as from lambda yield global print len range open path value result config data error")
	files = map[string][]byte{}
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for i := range 120 {
		n := 50 + rnd.IntN(30<<10)
		if i%40 == 0 {
			n = 1<<20 + rnd.IntN(2<<20) // several chunks
		}
		data := testutil.RandBytes(uint64(1000+i), n)
		if i%2 == 0 { // text, which compresses some 3x
			var b bytes.Buffer
			for b.Len() < n {
				fmt.Fprintf(&b, "%s%d ", words[rnd.IntN(len(words))], rnd.IntN(100))
			}
			data = b.Bytes()[:n]
		}
		name := fmt.Sprintf("usr/lib/f%03d", i)
		files[name] = data
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(n), Typeflag: tar.TypeReg, ModTime: time.Unix(1700000000, 0)}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res, err := format.Write(t.Context(), &out, &tb)
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), res, files
}

// Against Docker's registry: push a lazypull image, resolve it, read the index in one
// request, fetch the chunks of a third of the files with multi-range requests, and check
// every chunk against its digest.
func TestRealRegistry(t *testing.T) {
	addr := realRegistry(t)
	blob, res, files := lazypullLayer(t)
	img, err := mutate.Append(mutate.MediaType(empty.Image, types.OCIManifestSchema1),
		mutate.Addendum{Layer: static.NewLayer(blob, types.MediaType(format.MediaTypeLayer)), Annotations: res.Annotations()})
	if err != nil {
		t.Fatal(err)
	}
	repo := fmt.Sprintf("lazypull-fetch-test/r%d", time.Now().UnixNano())
	tag, err := name.NewTag(addr+"/"+repo+":v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("push: %v", err)
	}

	ct := &countingTransport{inner: http.DefaultTransport}
	reg, _ := newReg(t, addr, repo+":v1", WithTransport(ct))
	got, err := reg.Resolve(t.Context(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := img.Digest(); got.Descriptor.Digest != want {
		t.Fatalf("resolved %s, pushed %s", got.Descriptor.Digest, want)
	}
	desc := got.Manifest.Layers[0]
	loc, err := format.LocationFromAnnotations(desc.Annotations)
	if err != nil {
		t.Fatal(err)
	}
	layer := reg.Layer(desc)
	before := ct.count()
	ix, err := format.ReadIndex(layer.ReaderAt(t.Context()), layer.Size(), &loc)
	if err != nil {
		t.Fatal(err)
	}
	if after := ct.count(); after["GET"]-before["GET"] != 1 || len(after) != 1 {
		t.Fatalf("reading the index took %v requests (before: %v); want one GET", after, before)
	}

	// A third of the files, all their chunks, in one Fetch.
	var ranges []Range
	chunks := map[Range]format.Chunk{}
	want := map[string]bool{}
	for i, e := range ix.Entries {
		if !e.IsRegular() || i%3 != 0 {
			continue
		}
		want[e.Name] = true
		for _, c := range ix.Chunks(&ix.Entries[i]) {
			r := Range{c.Offset, c.CompSize}
			ranges = append(ranges, r)
			chunks[r] = c
		}
	}
	content := map[string][]byte{}
	var decoded atomic.Int64
	stats := reg.Stats()
	var needed int64
	for _, r := range ranges {
		needed += r.Len
	}
	err = layer.Fetch(t.Context(), ranges, func(r Range, frame []byte) error {
		c := chunks[r]
		out, err := c.Decode(nil, frame)
		if err != nil {
			return err
		}
		decoded.Add(1)
		// Put the chunk where it belongs in its file.
		for i := range ix.Entries {
			e := &ix.Entries[i]
			if !want[e.Name] {
				continue
			}
			for _, fc := range ix.Chunks(e) {
				if fc.Offset == c.Offset {
					if content[e.Name] == nil {
						content[e.Name] = make([]byte, e.Size)
					}
					copy(content[e.Name][fc.FileOffset:], out)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if int(decoded.Load()) != len(ranges) {
		t.Fatalf("%d of %d chunks", decoded.Load(), len(ranges))
	}
	for n := range want {
		if !bytes.Equal(content[n], files[n]) {
			t.Fatalf("%s differs", n)
		}
	}
	s := reg.Stats()
	reqs, fetched := s.Requests-stats.Requests, s.Bytes-stats.Bytes
	t.Logf("%d chunks of %d files: %d requests, %d bytes fetched for %d needed (%.3fx)", len(ranges), len(want), reqs, fetched, needed, float64(fetched)/float64(needed))
	if s.Fallbacks != 0 {
		t.Fatalf("docker-registry refused multi-range requests: %+v", s)
	}
	if reqs > int64(len(ranges)+maxRangesPerRequest-1)/maxRangesPerRequest+1 {
		t.Fatalf("%d requests for %d ranges", reqs, len(ranges))
	}
	if float64(fetched) > 1.2*float64(needed) {
		t.Fatalf("fetched %.3fx the bytes needed", float64(fetched)/float64(needed))
	}
	// A blob the registry does not have.
	_, err = reg.Blob(v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0", 64)}, 100).ReadAt(make([]byte, 10), 0)
	var fe *Error
	if !asError(err, &fe) || fe.StatusCode != 404 || fe.Temporary() {
		t.Fatalf("missing blob: %v", err)
	}
}
