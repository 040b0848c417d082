package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/format"
	"lazypull/internal/profile"
	"lazypull/internal/store"
	"lazypull/internal/testutil"
)

// twoLayerImageWith is a lazypull image of two layers, base and app, with both layers'
// indexes changed by edit.
func twoLayerImageWith(t *testing.T, base, app map[string][]byte, edit func(ix *format.Index)) v1.Image {
	t.Helper()
	img, _ := lazyImageWith(t, base, edit)
	top, _ := lazyImageWith(t, app, edit)
	m, err := top.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	ls, err := top.Layers()
	if err != nil {
		t.Fatal(err)
	}
	return withLayer(t, img, ls[0], m.Layers[0].Annotations)
}

// packFixture pushes a two-layer image and a profile of files in both layers, and returns
// the image's reference, its files, the profile and its pack (built as `lazypull profile`
// builds it), and the registry's request counts.
func packFixture(t *testing.T) (ref string, files map[string][]byte, p *profile.Profile, pack []byte, subject v1.Descriptor, reqs *requestLog) {
	t.Helper()
	return packFixtureWith(t, nil)
}

// packFixtureWith is packFixture with the layers' indexes changed by edit.
func packFixtureWith(t *testing.T, edit func(ix *format.Index)) (ref string, files map[string][]byte, p *profile.Profile, pack []byte, subject v1.Descriptor, reqs *requestLog) {
	t.Helper()
	big := func(s string, n int) []byte { return bytes.Repeat([]byte(s), n) }
	base := map[string][]byte{"lib/libc.so": testutil.RandBytes(1, 900_000), "etc/passwd": []byte("root:x:0:0::/root:/bin/sh\n"), "lib/unused": big("u", 50_000)}
	app := map[string][]byte{"bin/app": testutil.RandBytes(2, 700_000), "etc/app.conf": []byte("x=1\n"), "share/doc": big("d", 80_000)}
	files = map[string][]byte{}
	for _, m := range []map[string][]byte{base, app} {
		for k, v := range m {
			files[k] = v
		}
	}
	img := twoLayerImageWith(t, base, app, edit)
	ref, reqs, subject = pushCounted(t, img, "pack:v1")
	m, _ := img.Manifest()
	p = &profile.Profile{Subject: subject.Digest.String(), Created: time.Now().UTC().Truncate(time.Second),
		Layers: []string{m.Layers[0].Digest.String(), m.Layers[1].Digest.String()},
		Files: []profile.File{
			{Layer: 1, Path: "bin/app", AtUS: 0, Ranges: []profile.Range{{Off: 0, Len: 700_000}}},
			{Layer: 0, Path: "etc/passwd", AtUS: 10, Ranges: []profile.Range{{Off: 0, Len: 26}}},
			{Layer: 0, Path: "lib/libc.so", AtUS: 20, Ranges: []profile.Range{{Off: 0, Len: 900_000}}},
			{Layer: 1, Path: "etc/app.conf", AtUS: 30, Ranges: []profile.Range{{Off: 0, Len: 4}}},
		}}
	pack = buildPack(t, ref, p)
	reqs.reset()
	return ref, files, p, pack, subject, reqs
}

// pushCounted pushes img to a new counting registry as repo:tag and returns its
// reference, the registry's request log and the image manifest's descriptor.
func pushCounted(t *testing.T, img v1.Image, repoTag string) (ref string, reqs *requestLog, subject v1.Descriptor) {
	t.Helper()
	reqs = countedRegistry(t)
	ref = reqs.reg.Push(t, repoTag, img)
	d, _ := img.Digest()
	raw, _ := img.RawManifest()
	return ref, reqs, v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: d, Size: int64(len(raw))}
}

// buildPack builds the pack of profile p for the image ref, on a store of its own.
func buildPack(t *testing.T, ref string, p *profile.Profile) []byte {
	t.Helper()
	im, _ := openFresh(t, ref)
	pack, err := im.Pack(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	return pack
}

// pushProfile pushes p with pack (nil: none) for subject in ref's repository, and returns
// the profile artifact's descriptor.
func pushProfile(t *testing.T, ref string, subject v1.Descriptor, p *profile.Profile, pack []byte) v1.Descriptor {
	t.Helper()
	doc, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	r, _ := name.ParseReference(ref)
	d, err := profile.Push(nil, r.Context(), subject, doc, pack)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// openPrefetched opens ref as the snapshotter does (look-up and prefetch) over a fresh
// store and waits for the prefetch.
func openPrefetched(t *testing.T, ref string) (*Image, PrefetchStats) {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return openPrefetchedIn(t, st, ref)
}

// openPrefetchedIn is openPrefetched over the store st.
func openPrefetchedIn(t *testing.T, st *store.Store, ref string) (*Image, PrefetchStats) {
	t.Helper()
	im, err := openImage(context.Background(), st, ref, OpenOptions{Profile: &ProfileChoice{}, Client: testClient(t), partial: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(im.Close)
	im.waitKept()
	im.Prefetch(context.Background(), PrefetchOptions{Wait: time.Minute, Log: slog.New(slog.DiscardHandler)})
	ps, _ := im.PrefetchStats()
	if !ps.Done {
		t.Fatalf("prefetch not done after a minute: %+v", ps)
	}
	return im, ps
}

// readFile reads one file of the image through its layer, as the mount does.
func readFile(t *testing.T, im *Image, path string) []byte {
	t.Helper()
	for i := len(im.Layers) - 1; i >= 0; i-- {
		l := im.Layers[i]
		e, ok := l.Index.Lookup(path)
		if !ok {
			continue
		}
		b := make([]byte, e.Size)
		if n, err := l.ReadAt(context.Background(), e, b, 0); int64(n) != e.Size {
			t.Fatalf("read %s: %d of %d bytes: %v", path, n, e.Size, err)
		}
		return b
	}
	t.Fatalf("%s not in the image", path)
	return nil
}

// TestPackPrefetch: with a pack, opening the image and prefetching its profile takes one
// blob request (the pack: both layers' indexes and the profiled chunks), and the profiled
// files are then read with no request at all; the rest still comes from the layers.
func TestPackPrefetch(t *testing.T) {
	ref, files, p, pack, subject, reqs := packFixture(t)
	pushProfile(t, ref, subject, p, pack)
	reqs.reset()
	im, ps := openPrefetched(t, ref)
	checkPackServed(t, im, ps, p, files, reqs)
	before := reqs.count("GET blobs")
	if got := readFile(t, im, "share/doc"); !bytes.Equal(got, files["share/doc"]) {
		t.Errorf("share/doc: wrong bytes")
	}
	if n, want := reqs.count("GET blobs"), before+1; n != want {
		t.Errorf("%d blob requests after reading a file the profile does not name; want %d", n, want)
	}
}

// checkServed checks that a damaged pack cost nothing but requests: the prefetch of the
// fixture's 4 files ended without error, and every file reads right.
func checkServed(t *testing.T, im *Image, ps PrefetchStats, files map[string][]byte) {
	t.Helper()
	if ps.Err != "" || !ps.Pack || ps.Files != 4 {
		t.Errorf("prefetch %+v; want the 4 files prefetched, without error", ps)
	}
	for path, want := range files {
		if got := readFile(t, im, path); !bytes.Equal(got, want) {
			t.Errorf("%s: wrong bytes", path)
		}
	}
}

// packRecords splits a pack into its records' (offset of the bytes, length), in order.
func packRecords(t *testing.T, pack []byte) (kinds []byte, at []int, lens []int) {
	t.Helper()
	for off := 10; off < len(pack); {
		n := int(binary.BigEndian.Uint32(pack[off+33:]))
		kinds, at, lens = append(kinds, pack[off]), append(at, off+37), append(lens, n)
		off += 37 + n
	}
	return kinds, at, lens
}

// damageFirst changes a byte in the middle of the pack's first record of kind k.
func damageFirst(t *testing.T, pack []byte, k profile.RecordKind) []byte {
	t.Helper()
	kinds, at, lens := packRecords(t, pack)
	i := bytes.IndexByte(kinds, byte(k))
	if i < 0 {
		t.Fatalf("no record of kind %d", k)
	}
	pack[at[i]+lens[i]/2] ^= 0xff
	return pack
}

// TestPackDamaged: a pack that is wrong (an index or a frame changed) or cut short is
// trusted for nothing: the image opens, the prefetch ends without error, and every file
// reads right, what the pack could not give fetched from the layers.
func TestPackDamaged(t *testing.T) {
	for _, c := range []struct {
		name   string
		damage func(t *testing.T, pack []byte) []byte
	}{
		{"bad index", func(t *testing.T, pack []byte) []byte {
			_, at, lens := packRecords(t, pack)
			pack[at[1]+lens[1]/2] ^= 0xff // the second layer's index
			return pack
		}},
		{"bad frame", func(t *testing.T, pack []byte) []byte {
			return damageFirst(t, pack, profile.RecordChunk)
		}},
		{"bad header run", func(t *testing.T, pack []byte) []byte {
			return damageFirst(t, pack, profile.RecordRun)
		}},
		{"cut short", func(t *testing.T, pack []byte) []byte {
			return pack[:len(pack)-1000]
		}},
		{"not a pack", func(t *testing.T, pack []byte) []byte {
			return []byte(strings.Repeat("not a pack ", 100))
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ref, files, p, pack, subject, _ := packFixture(t)
			pushProfile(t, ref, subject, p, c.damage(t, pack))
			im, ps := openPrefetched(t, ref)
			checkServed(t, im, ps, files)
		})
	}
}

// TestPackHeaderRuns: the pack carries the header runs the prefetch checks (of the
// profiled files), each once, as its layer blob holds them; a record whose bytes are not
// its run's (one byte changed) is refused: that run alone is fetched from its layer blob,
// by Range, and every file is served right.
func TestPackHeaderRuns(t *testing.T) {
	ref, files, p, pack, subject, reqs := packFixture(t)
	kinds, _, _ := packRecords(t, pack)
	if n := bytes.Count(kinds, []byte{byte(profile.RecordRun)}); n < len(p.Files) {
		t.Fatalf("pack of records %v holds %d header runs; want one per profiled file (%d)", kinds, n, len(p.Files))
	}
	if v := binary.BigEndian.Uint16(pack[8:]); v != profile.PackVersion2 {
		t.Fatalf("pack version %d, want %d", v, profile.PackVersion2)
	}
	kinds, at, lens := packRecords(t, pack)
	i := bytes.IndexByte(kinds, byte(profile.RecordRun))
	pack[at[i]+lens[i]-1] ^= 0xff
	pushProfile(t, ref, subject, p, pack)
	reqs.reset()
	im, ps := openPrefetched(t, ref)
	// The pack, and the one run it got wrong from its layer.
	if n := reqs.count("GET blobs"); ps.Err != "" || !ps.Pack || n != 2 || ps.Requests != 2 {
		t.Errorf("prefetch %+v, %d blob requests; want the pack's and one for the refused header run", ps, n)
	}
	for _, f := range p.Files {
		if got := readFile(t, im, f.Path); !bytes.Equal(got, files[f.Path]) {
			t.Errorf("%s: wrong bytes", f.Path)
		}
	}
	if n := reqs.count("GET blobs"); n != 2 {
		t.Errorf("%d blob requests after reading the profiled files; want still 2", n)
	}
	checkServed(t, im, ps, files)
}

// TestPackIndexVersion1: an image whose indexes have no run digests (version 1) gets a
// version 1 pack, with no header run records (nothing to check one against), which any
// reader reads; its prefetch takes the profiled files' headers from the layer blobs beside
// the pack, as before run digests, and every file is served.
func TestPackIndexVersion1(t *testing.T) {
	ref, files, p, pack, subject, reqs := packFixtureWith(t, func(ix *format.Index) { ix.RunDigests = nil })
	kinds, _, _ := packRecords(t, pack)
	if v := binary.BigEndian.Uint16(pack[8:]); v != profile.PackVersion1 || bytes.IndexByte(kinds, byte(profile.RecordRun)) >= 0 {
		t.Fatalf("pack version %d with records %v; want version 1 and no header run", v, kinds)
	}
	pushProfile(t, ref, subject, p, pack)
	reqs.reset()
	im, ps := openPrefetched(t, ref)
	if im.Layers[0].Index.RunDigests != nil {
		t.Fatal("a version 1 index has run digests")
	}
	// The pack, and the headers from each layer: one request per layer where the registry
	// takes multi-range requests, one per run of headers here (this registry takes one).
	n := reqs.count("GET blobs")
	if ps.Err != "" || !ps.Pack || ps.Files != 4 || ps.Requests != int64(n) || n < 2 || n > 1+len(p.Files) {
		t.Errorf("prefetch %+v, %d blob requests; want the pack's and at most %d for the headers", ps, n, len(p.Files))
	}
	readProfiled(t, im, p, files, reqs, n)
}

// TestPackRegistryDies: the registry cuts the pack's GET half-way: what arrived is used,
// the rest comes from the layers, the prefetch ends without error and every file reads
// right.
func TestPackRegistryDies(t *testing.T) {
	ref, files, p, pack, subject, reqs := packFixture(t)
	pushProfile(t, ref, subject, p, pack)
	d := "sha256:" + fmt.Sprintf("%x", sha256.Sum256(pack))
	reqs.cutBlob.Store(&d)
	im, ps := openPrefetched(t, ref)
	checkServed(t, im, ps, files)
	if n := reqs.count("GET blobs"); n < 2 {
		t.Errorf("%d blob requests; want the cut pack's and the layers' for the rest", n)
	}
}

// TestPackIndexesKept: an image whose layer indexes the store keeps (opened before, its
// content not fetched) opens without waiting for the look-up, and its prefetch still
// takes the pack's chunks, in the pack's one request.
func TestPackIndexesKept(t *testing.T) {
	ref, files, p, pack, subject, reqs := packFixture(t)
	pushProfile(t, ref, subject, p, pack)
	first, st := openFresh(t, ref) // opened once: the store keeps its indexes
	first.Close()
	reqs.reset()
	im, ps := openPrefetchedIn(t, st, ref)
	checkPackServed(t, im, ps, p, files, reqs)
}

// checkPackServed checks that the prefetch ps of im took the 4 files of the profile p from
// the pack in its one request, the only blob request so far, and that the profiled files
// then read right (files holds their bytes) with no further request.
func checkPackServed(t *testing.T, im *Image, ps PrefetchStats, p *profile.Profile, files map[string][]byte, reqs *requestLog) {
	t.Helper()
	// The profiled files' tar headers come in the pack too (version 2 indexes give header
	// runs a digest): one request in all.
	const want = 1
	if ps.Err != "" || !ps.Pack || ps.Files != 4 || ps.Requests != want {
		t.Errorf("prefetch %+v; want the 4 files and their headers from the pack, in its one request", ps)
	}
	if n := reqs.count("GET blobs"); n != want {
		t.Errorf("%d blob requests to open and prefetch; want 1 (the pack)", n)
	}
	readProfiled(t, im, p, files, reqs, want)
}

// readProfiled reads the files of the profile p through im and checks their bytes (files
// holds them), and that the registry got no blob request for them: still n in all.
func readProfiled(t *testing.T, im *Image, p *profile.Profile, files map[string][]byte, reqs *requestLog, n int) {
	t.Helper()
	for _, f := range p.Files {
		if got := readFile(t, im, f.Path); !bytes.Equal(got, files[f.Path]) {
			t.Errorf("%s: wrong bytes", f.Path)
		}
	}
	if got := reqs.count("GET blobs"); got != n {
		t.Errorf("%d blob requests after reading the profiled files; want still %d", got, n)
	}
}

// TestReadaheadStopsAtProfile: a large file read sequentially inside what the profile
// prefetched starts no read-ahead past the profile's end (a request the start did not
// need); read on past it, it reads ahead as before.
func TestReadaheadStopsAtProfile(t *testing.T) {
	const size, profiled = 24 << 20, 10 << 20
	files := map[string][]byte{"lib/big.so": testutil.RandBytes(3, size)}
	img, _ := lazyImageOf(t, files)
	ref, reqs, subject := pushCounted(t, img, "ra:v1")
	m, _ := img.Manifest()
	p := &profile.Profile{Subject: subject.Digest.String(), Created: time.Now().UTC().Truncate(time.Second), Layers: []string{m.Layers[0].Digest.String()},
		Files: []profile.File{{Layer: 0, Path: "lib/big.so", Ranges: []profile.Range{{Off: 0, Len: profiled}}}}}
	pushProfile(t, ref, subject, p, buildPack(t, ref, p))
	reqs.reset()

	im, ps := openPrefetched(t, ref)
	if ps.Err != "" || !ps.Pack || ps.Requests != 1 {
		t.Fatalf("prefetch %+v; want the pack's one request (the file's tar header in it)", ps)
	}
	l := im.Layers[0]
	e, _ := l.Index.Lookup("lib/big.so")
	read := func(from, to int64) {
		t.Helper()
		for off := from; off < to; off += 1 << 20 {
			b := make([]byte, 1<<20)
			if n, err := l.ReadAt(context.Background(), e, b, off); n != len(b) || !bytes.Equal(b, files["lib/big.so"][off:off+1<<20]) {
				t.Fatalf("read at %d: %d bytes, %v, or wrong bytes", off, n, err)
			}
		}
	}
	read(0, profiled)
	// A read-ahead starts (or not) in the read that asks for it: none may have.
	if n := l.raRuns.Load(); n != 0 {
		t.Errorf("%d read-aheads started reading the profiled part; want none: a read-ahead went past the profile", n)
	}
	if n := reqs.count("GET blobs"); n != 1 {
		t.Errorf("%d blob requests after reading the profiled part; want 1 (the pack): a read-ahead went past the profile", n)
	}
	read(profiled, size)
	if l.raRuns.Load() == 0 {
		t.Error("no read-ahead started reading on past the profile")
	}
	if n := reqs.count("GET blobs"); n < 2 {
		t.Errorf("%d blob requests after reading past the profile; want more than the pack's", n)
	}
}
