package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"lazypull/format"
	"lazypull/internal/fetch"
	"lazypull/internal/imageindex"
	"lazypull/internal/profile"
	"lazypull/internal/store"
	"lazypull/internal/testutil"
)

// TestIndexedLargeFileStored: a file over wholeFileMax bytes of an unconverted image is
// stored by the spans of the tar stream that hold it as it is read: it reads back as
// the tar has it (whole in order, and at random offsets across spans), the layer's usage
// counts its spans, and once read it is served by a new open of the image over the store
// opened again without asking the registry for any of it.
func TestIndexedLargeFileStored(t *testing.T) {
	ref, files, _ := indexedFixture(t)
	big := files["usr/lib/libbig.so"]
	dir := t.TempDir()
	open := func() (*Image, *store.Store) {
		st, err := store.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		im, err := OpenImage(t.Context(), st, ref, OpenOptions{Client: testClient(t)})
		if err != nil {
			st.Close()
			t.Fatal(err)
		}
		return im, st
	}
	im, st := open()
	l := im.indexed[0]
	if h := l.held(); h.Bytes >= int64(len(big)) {
		t.Fatalf("before any read the store holds %d bytes of the layer", h.Bytes)
	}
	e, _ := l.Index.Lookup("usr/lib/libbig.so")
	// A read across several spans, none local: one request.
	before := im.Registry.Stats().Requests
	p := make([]byte, 300<<10)
	if n, err := l.ReadAt(t.Context(), e, p, 2<<20); n != len(p) || err != nil || !bytes.Equal(p, big[2<<20:2<<20+len(p)]) {
		t.Fatalf("read of %d bytes across spans: %d, %v", len(p), n, err)
	}
	if k := im.Registry.Stats().Requests - before; k != 1 {
		t.Errorf("a read across %d spans made %d requests; want 1", len(p)/(64<<10), k)
	}
	rnd := rand.New(rand.NewPCG(3, 4))
	for range 40 {
		off := rnd.Int64N(int64(len(big)))
		n := min(1+rnd.Int64N(300<<10), int64(len(big))-off)
		p := make([]byte, n)
		if got, err := l.ReadAt(t.Context(), e, p, off); int64(got) != n || (err != nil && !errors.Is(err, io.EOF)) || !bytes.Equal(p, big[off:off+n]) {
			t.Fatalf("read of %d bytes at %d: %d, %v; equal %v", n, off, got, err, bytes.Equal(p[:got], big[off:off+int64(got)]))
		}
	}
	got, err := readIndexed(t, im.FSLayers(), "usr/lib/libbig.so")
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("large file: %d bytes, %v", len(got), err)
	}
	// Verified spans are stored by the store's background writers.
	testutil.WaitFor(t, time.Minute, "the large file's spans in the store", func() bool { return l.held().Bytes >= int64(len(big)) })
	im.Close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	im, st = open()
	defer st.Close()
	defer im.Close()
	stats := im.Registry.Stats()
	got, err = readIndexed(t, im.FSLayers(), "usr/lib/libbig.so")
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("large file after the store's reopen: %d bytes, %v", len(got), err)
	}
	if after := im.Registry.Stats(); after.Requests != stats.Requests {
		t.Errorf("reading the stored large file again made %d requests, %d bytes", after.Requests-stats.Requests, after.Bytes-stats.Bytes)
	}
}

// TestPrefetchIndexedLargeFile: the profiled ranges of a large file of an unconverted
// image are prefetched, the spans that hold them fetched together in few requests: reading
// them then asks the registry for nothing, and a range the profile does not name is
// still fetched when read.
func TestPrefetchIndexedLargeFile(t *testing.T) {
	ref, files, art := indexedFixture(t)
	big := files["usr/lib/libbig.so"]
	var ranges []profile.Range
	for off := int64(0); off < 2<<20; off += 128 << 10 { // 16 ranges, one span apart
		ranges = append(ranges, profile.Range{Off: off, Len: 4 << 10})
	}
	pushBigProfile(t, ref, art, ranges)
	im, ps := openPrefetched(t, ref)
	if last := ranges[len(ranges)-1]; ps.Files != 1 || ps.Bytes < last.End() || ps.Err != "" {
		t.Fatalf("prefetch %+v; want the large file's spans, %d bytes at least", ps, last.End())
	}
	if ps.Requests != 1 {
		t.Errorf("the prefetch made %d requests; want the spans fetched in one", ps.Requests)
	}
	l := im.indexed[0]
	e, _ := l.Index.Lookup("usr/lib/libbig.so")
	read := func(off, n int64) int64 {
		t.Helper()
		before := im.Registry.Stats().Requests
		b := make([]byte, n)
		if got, err := l.ReadAt(context.Background(), e, b, off); int64(got) != n || err != nil || !bytes.Equal(b, big[off:off+n]) {
			t.Fatalf("read of %d bytes at %d: %d, %v", n, off, got, err)
		}
		return im.Registry.Stats().Requests - before
	}
	for _, r := range ranges {
		if k := read(r.Off, r.Len); k != 0 {
			t.Errorf("reading the profiled range at %d made %d requests", r.Off, k)
		}
	}
	if k := read(5<<20, 4<<10); k == 0 {
		t.Error("reading a range the profile does not name made no request: the test proves nothing")
	}
}

// TestPrefetchIndexedRuns: profiled ranges of a large file far apart in the tar stream
// (several groups of tarSource.groups) are fetched at once, their compressed bytes in one
// fetch (a multi-range request) and each group decoded on its own (fetchRuns): reading
// them then asks the registry for nothing. The windows of the groups' first spans come
// beside them, in one request of the window blob.
func TestPrefetchIndexedRuns(t *testing.T) {
	var mu sync.Mutex
	var ranged, windows []string // the Range headers of blob requests, of the window blob's
	var winBlob atomic.Pointer[string]
	ref, files, art := indexedFixture(t, testutil.WithHandler(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if rg := r.Header.Get("Range"); rg != "" {
				mu.Lock()
				if d := winBlob.Load(); d != nil && strings.HasSuffix(r.URL.Path, *d) {
					windows = append(windows, rg)
				} else {
					ranged = append(ranged, rg)
				}
				mu.Unlock()
			}
			h.ServeHTTP(w, r)
		})
	}))
	big := files["usr/lib/libbig.so"]
	wd := art.Layers[0].Windows.Digest.String()
	if art.Layers[0].Windows.Size == 0 {
		t.Fatal("the gzip layer has no window blob")
	}
	winBlob.Store(&wd)
	ranges := spreadRanges(int64(len(big)))
	pushBigProfile(t, ref, art, ranges)
	im, ps := openPrefetched(t, ref)
	l := im.indexed[0]
	e, _ := l.Index.Lookup("usr/lib/libbig.so")
	var asked []format.Chunk
	seen := map[format.Digest]bool{}
	for _, r := range ranges {
		ss, _ := l.spanTab.spansOf(e.TarOffset+r.Off, e.TarOffset+r.End())
		for _, s := range ss {
			if !seen[s.Digest] {
				seen[s.Digest] = true
				asked = append(asked, spanFile(s).Chunks[0])
			}
		}
	}
	groups, err := tarSource{l}.groups(asked)
	if err != nil || len(groups) < 3 {
		t.Fatalf("%d groups of the profiled spans, %v; the test needs several", len(groups), err)
	}
	// The test registry answers a multi-range request with its first range only, and the
	// client then asks for each range alone: the first request asked for every group.
	mu.Lock()
	multi := slices.ContainsFunc(ranged, func(rg string) bool { return strings.Count(rg, ",") == len(groups)-1 })
	var wins []fetch.Range
	for _, g := range groups {
		if w := l.spanTab.win(l.spanTab.at(g.start)); w.Len > 0 {
			wins = append(wins, w)
		}
	}
	// The first request of the window blob asked for every window (those that lie close
	// merged into one range).
	winsOne := len(windows) > 0 && !slices.ContainsFunc(wins, func(w fetch.Range) bool {
		for _, rg := range strings.Split(strings.TrimPrefix(windows[0], "bytes="), ",") {
			var a, b int64
			if _, err := fmt.Sscanf(rg, "%d-%d", &a, &b); err == nil && a <= w.Off && w.Off+w.Len-1 <= b {
				return false
			}
		}
		return true
	})
	mu.Unlock()
	if ps.Files != 1 || ps.Err != "" || !multi || ps.Requests > 2*int64(len(groups))+2 {
		t.Errorf("prefetch %+v; want the %d groups of spans asked for in one request (ranges asked: %q)", ps, len(groups), ranged)
	}
	if len(wins) == 0 || !winsOne {
		t.Errorf("window blob asked for %q; want one request for the windows %q of the groups' first spans", windows, wins)
	}
	before := im.Registry.Stats().Requests
	for _, r := range ranges {
		b := make([]byte, r.Len)
		if n, err := l.ReadAt(t.Context(), e, b, r.Off); int64(n) != r.Len || err != nil || !bytes.Equal(b, big[r.Off:r.End()]) {
			t.Fatalf("read of the profiled range at %d: %d, %v", r.Off, n, err)
		}
	}
	if k := im.Registry.Stats().Requests - before; k != 0 {
		t.Errorf("reading the profiled ranges made %d requests", k)
	}
}

// TestIndexedLargeFileCorrupt: when the registry serves a gzip layer's bytes wrong, a read
// of a large file, or a prefetch of its spans in runs, fails, serves none of them and
// stores none; served right again, the file reads back as the tar has it.
func TestIndexedLargeFileCorrupt(t *testing.T) {
	var bad atomic.Pointer[string] // the blob whose bytes are served wrong
	ref, files, art := indexedFixture(t, testutil.WithHandler(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if d := bad.Load(); d != nil && strings.HasSuffix(r.URL.Path, *d) {
				w = flipWriter{w}
			}
			h.ServeHTTP(w, r)
		})
	}))
	big := files["usr/lib/libbig.so"]
	layer := art.Layers[0].Layer.Digest.String()
	bad.Store(&layer)
	ranges := spreadRanges(int64(len(big)))
	pushBigProfile(t, ref, art, ranges)
	im, ps := openPrefetched(t, ref)
	if ps.Err == "" {
		t.Errorf("prefetch of spans served wrong: %+v; want an error", ps)
	}
	l := im.indexed[0]
	e, _ := l.Index.Lookup("usr/lib/libbig.so")
	b := make([]byte, 300<<10)
	if n, err := l.ReadAt(t.Context(), e, b, 1<<20); err == nil || n != 0 {
		t.Errorf("read of spans served wrong: %d bytes, %v; want none and an error", n, err)
	}
	if h := l.held(); h.Bytes != 0 {
		t.Errorf("the store holds %d bytes of the layer served wrong", h.Bytes)
	}
	bad.Store(nil)
	if got, err := readIndexed(t, im.FSLayers(), "usr/lib/libbig.so"); err != nil || !bytes.Equal(got, big) {
		t.Errorf("large file served right again: %d bytes, %v", len(got), err)
	}
}

// TestIndexedWindowsCorrupt: when the registry serves a gzip layer's window blob wrong,
// the prefetch of runs that start with a window fails, and every read of the large file
// either fails or serves its bytes (those of spans decoded from the output before them);
// served right again, the file reads back whole.
func TestIndexedWindowsCorrupt(t *testing.T) {
	var bad atomic.Bool
	var wd string
	ref, files, art := indexedFixture(t, testutil.WithHandler(func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if bad.Load() && strings.HasSuffix(r.URL.Path, wd) {
				w = flipWriter{w}
			}
			h.ServeHTTP(w, r)
		})
	}))
	wd = art.Layers[0].Windows.Digest.String()
	bad.Store(true)
	big := files["usr/lib/libbig.so"]
	pushBigProfile(t, ref, art, spreadRanges(int64(len(big))))
	im, ps := openPrefetched(t, ref)
	if ps.Err == "" || !strings.Contains(ps.Err, "window") {
		t.Errorf("prefetch with the window blob served wrong: %+v; want an error naming a window", ps)
	}
	l := im.indexed[0]
	e, _ := l.Index.Lookup("usr/lib/libbig.so")
	for off := int64(0); off < int64(len(big)); off += 200 << 10 {
		b := make([]byte, min(64<<10, int64(len(big))-off))
		if n, err := l.ReadAt(t.Context(), e, b, off); err == nil && !bytes.Equal(b[:n], big[off:off+int64(n)]) {
			t.Fatalf("read at %d with the window blob served wrong: %d wrong bytes served", off, n)
		}
	}
	bad.Store(false)
	if got, err := readIndexed(t, im.FSLayers(), "usr/lib/libbig.so"); err != nil || !bytes.Equal(got, big) {
		t.Errorf("large file served right again: %d bytes, %v", len(got), err)
	}
}

// flipWriter serves every byte of a response body inverted.
type flipWriter struct{ http.ResponseWriter }

func (w flipWriter) Write(p []byte) (int, error) {
	q := make([]byte, len(p))
	for i, c := range p {
		q[i] = ^c
	}
	return w.ResponseWriter.Write(q)
}

// spreadRanges returns ranges of 4 KiB of a file of size bytes, 1.5 MiB apart: past the
// plan's bridging and a group's gap.
func spreadRanges(size int64) []profile.Range {
	var out []profile.Range
	for off := int64(0); off+4<<10 <= size; off += 3 << 19 {
		out = append(out, profile.Range{Off: off, Len: 4 << 10})
	}
	return out
}

// pushBigProfile pushes a profile of the fixture's image (indexedFixture) that reads ranges
// of its large file.
func pushBigProfile(t *testing.T, ref string, art *imageindex.Result, ranges []profile.Range) {
	t.Helper()
	p := &profile.Profile{Subject: art.Image.Digest.String(), Created: time.Now().UTC().Truncate(time.Second),
		Layers: []string{art.Layers[0].Layer.Digest.String(), art.Layers[1].Layer.Digest.String()},
		Files:  []profile.File{{Layer: 0, Path: "usr/lib/libbig.so", Ranges: ranges}}}
	pushProfile(t, ref, art.Image, p, nil)
}
