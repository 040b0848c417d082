package daemon

import (
	"bytes"
	"context"
	"encoding/hex"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/format"
	"lazypull/internal/store"
	"lazypull/internal/testutil"
)

// deltaFixture is an image update: v1, and v2 with the same base layer and an app layer
// that changes a file, keeps others, moves one, and adds four: one beside a file v1's
// start read (app/data/release.yaml), one under a directory it read (usr/lib/py/yaml/
// loader.pyc, which names two modules of usr/lib/py that both versions have and v1's
// start did not read, and a text file of another kind), one under a directory it read from only higher up
// (usr/share/yaml/_yaml.so), one under a top directory it never read (var/...).
type deltaFixture struct {
	ref1, ref2 string
	v2img      v1.Image
	subject1   v1.Hash
	reqs       *requestLog
	app2       map[string][]byte
}

func newDeltaFixture(t *testing.T) *deltaFixture {
	t.Helper()
	base, _ := autoFiles()
	doc := testutil.RandBytes(10, 5_000)
	mods := map[string][]byte{"usr/lib/py/datetime.cpython-311.pyc": testutil.RandBytes(15, 30_000),
		"usr/lib/py/struct.cpython-311.pyc": testutil.RandBytes(16, 10_000), "usr/lib/py/unnamed.cpython-311.pyc": testutil.RandBytes(17, 10_000),
		// A large module: v1's reads in usr/lib/py do not fetch the directory (speculate.go).
		"usr/lib/py/large.cpython-311.pyc": testutil.RandBytes(20, 70_000),
		// Named, but of a kind v1's start did not read.
		"usr/lib/py/struct.txt": testutil.RandBytes(21, 10_000)}
	loader := append(append(testutil.RandBytes(18, 1_000), "\x00\x08datetime\xda\x06struct)"...), testutil.RandBytes(19, 1_000)...)
	app1 := map[string][]byte{"app/main.py": []byte("import json\n"), "app/data/messages.json": []byte(`{"greeting": "hello"}`),
		"usr/lib/py/json.cpython-311.pyc": testutil.RandBytes(11, 20_000), "usr/share/doc/README": doc}
	app2 := map[string][]byte{"app/main.py": []byte("import json, yaml\n"), "app/data/messages.json": app1["app/data/messages.json"],
		"usr/lib/py/json.cpython-311.pyc": app1["usr/lib/py/json.cpython-311.pyc"], "usr/share/doc/README": doc, "usr/lib/py/moved": doc,
		"app/data/release.yaml": testutil.RandBytes(12, 3_000), "usr/share/yaml/_yaml.so": testutil.RandBytes(13, 100_000),
		"var/lib/dpkg/status": testutil.RandBytes(14, 50_000), "usr/lib/py/yaml/loader.pyc": loader}
	maps.Copy(app1, mods)
	maps.Copy(app2, mods)
	v1img := twoLayerImageWith(t, base, app1, nil)
	v2img := twoLayerImageWith(t, base, app2, nil)
	m1, _ := v1img.Manifest()
	m2, _ := v2img.Manifest()
	if m1.Layers[0].Digest != m2.Layers[0].Digest || m1.Layers[1].Digest == m2.Layers[1].Digest {
		t.Fatalf("fixture: layers %v and %v; want the base shared, the app layer not", m1.Layers, m2.Layers)
	}
	ref1, reqs, subject1 := pushCounted(t, v1img, "delta:v1")
	return &deltaFixture{ref1: ref1, ref2: reqs.reg.Push(t, "delta:v2", v2img), v2img: v2img, subject1: subject1.Digest, reqs: reqs, app2: app2}
}

// ranV1 is a node's store after v1's start (its profile kept, its manifest and indexes too).
func (f *deltaFixture) ranV1(t *testing.T) *store.Store {
	t.Helper()
	st := openStore(t)
	im, _ := startIn(t, st, f.ref1, nil)
	for _, p := range []string{"app/main.py", "app/data/messages.json", "usr/lib/py/json.cpython-311.pyc", "etc/passwd"} {
		readPart(t, im, p, 1<<20)
	}
	readPart(t, im, "lib/libc.so", 4096)
	im.Close()
	keptAuto(t, st, f.subject1, 1)
	return st
}

// TestAutoProfileUpdateDelta: v2 started on a node that ran v1 is prefetched by v1's
// profile and, in the same requests, by the files v2 added near what v1's start read;
// through real FUSE mounts, v2's start then reads them without a request. A file under a
// top directory v1's start never read is not fetched, nor one whose content v1 had (moved).
func TestAutoProfileUpdateDelta(t *testing.T) {
	f := newDeltaFixture(t)
	st := f.ranV1(t)
	log, logs := testutil.NewLog(t)
	f.reqs.reset()
	// Speculation off: the misses counted below are in one directory, whose second miss
	// would bring the rest (speculate.go's directory rule) and change the count.
	dirs, fsys := mountImageWith(t, st, f.ref2, f.v2img, log, false)
	ps := prefetchedOf(t, fsys)
	if ps.Source != SourceRelated || ps.Delta != 3 || ps.Named != 2 || ps.Files != 10 || ps.Err != "" {
		t.Fatalf("v2 prefetched %+v; want v1's 5 files, 3 files v2 added and the 2 they name", ps)
	}
	// The added files come in the request that brings the changed file v1 read; the files
	// they name in later ones.
	app := fsys.Images()[0].Layers[1]
	inFirst := func(name string) bool {
		t.Helper()
		e, _ := app.Index.Lookup(name)
		file, err := store.FileOf(app.Index, e)
		if err != nil {
			t.Fatal(err)
		}
		c := file.Chunks[0]
		for _, line := range f.reqs.reg.Requests() {
			if _, rg, ok := strings.Cut(line, " Range: bytes="); ok && strings.Contains(line, "/blobs/"+app.Desc.Digest.String()) && strings.Contains(rg, ",") {
				return rangesHold(t, rg, c.Offset, c.CompSize)
			}
		}
		t.Fatalf("no multi-range request for the app layer:\n%s", strings.Join(f.reqs.reg.Requests(), "\n"))
		return false
	}
	for _, p := range []string{"app/main.py", "app/data/release.yaml", "usr/share/yaml/_yaml.so", "usr/lib/py/yaml/loader.pyc"} {
		if !inFirst(p) {
			t.Errorf("%s not in the prefetch's first request:\n%s", p, strings.Join(f.reqs.reg.Requests(), "\n"))
		}
	}
	if inFirst("usr/lib/py/datetime.cpython-311.pyc") {
		t.Error("a file named by an added file in the first request, before the added files were read")
	}
	before := f.reqs.count("GET blobs")
	for _, p := range []string{"app/data/release.yaml", "usr/share/yaml/_yaml.so", "usr/lib/py/datetime.cpython-311.pyc", "usr/lib/py/struct.cpython-311.pyc"} {
		if !bytes.Equal(readAt(t, filepath.Join(dirs[1], p), 0, int64(len(f.app2[p]))), f.app2[p]) {
			t.Fatalf("%s: wrong bytes", p)
		}
	}
	if n := f.reqs.count("GET blobs"); n != before {
		t.Errorf("%d blob requests reading the files v2 added after the prefetch; want none", n-before)
	}
	for _, p := range []string{"var/lib/dpkg/status", "usr/lib/py/moved", "usr/lib/py/unnamed.cpython-311.pyc", "usr/lib/py/struct.txt"} {
		readAt(t, filepath.Join(dirs[1], p), 0, 100)
		if n := f.reqs.count("GET blobs"); n != before+1 {
			t.Errorf("%d blob requests reading %s, not a file to guess; want 1 (the test counts requests)", n-before, p)
		}
		before++
	}
	if logs.Count("automatic profile chosen") != 1 {
		t.Errorf("logged:\n%s", logs)
	}
}

// TestAutoProfileUpdateDeltaBounded: the delta takes the files nearest what the profile
// read first, within DeltaBytes of compressed bytes the store lacks.
func TestAutoProfileUpdateDeltaBounded(t *testing.T) {
	f := newDeltaFixture(t)
	im, ps := startWith(t, f.ranV1(t), f.ref2, nil, AutoProfileOptions{Quiet: autoQuiet, DeltaBytes: 10_000})
	if ps.Delta != 2 || ps.Named != 0 {
		t.Fatalf("v2 prefetched %+v with 10,000 bytes for its new files; want 2 (loader.pyc, release.yaml: 5,000 bytes beside files read), none they name", ps)
	}
	before := f.reqs.count("GET blobs")
	readPart(t, im, "app/data/release.yaml", 1<<20)
	if n := f.reqs.count("GET blobs"); n != before {
		t.Errorf("%d blob requests reading app/data/release.yaml; want none", n-before)
	}
	readPart(t, im, "usr/share/yaml/_yaml.so", 1<<20)
	if n := f.reqs.count("GET blobs"); n != before+1 {
		t.Errorf("%d blob requests reading usr/share/yaml/_yaml.so, over the bound; want 1", n-before)
	}
}

// TestAutoProfileUpdateDeltaV1Open: while v1 is still open on the node (its containers
// run as v2 starts), v1's layer indexes are taken decoded from the store's shared ones:
// the delta is found with v1's kept index gone from the disk.
func TestAutoProfileUpdateDeltaV1Open(t *testing.T) {
	f := newDeltaFixture(t)
	dir := t.TempDir()
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	im1, _ := startIn(t, st, f.ref1, nil)
	readPart(t, im1, "app/main.py", 1<<20)
	readPart(t, im1, "app/data/messages.json", 1<<20)
	im1.Close()
	keptAuto(t, st, f.subject1, 1)
	still, err := OpenImage(context.Background(), st, f.ref1, OpenOptions{Client: testClient(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(still.Close)
	loc, err := format.LocationFromAnnotations(still.Layers[1].Desc.Annotations)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "meta", hex.EncodeToString(loc.Digest[:]))); err != nil {
		t.Fatal(err)
	}
	if _, ps := startIn(t, st, f.ref2, nil); ps.Delta != 1 {
		t.Errorf("v2 prefetched %+v with v1 open and its app layer's index no longer on disk; want 1 file v2 added (release.yaml, beside a read)", ps)
	}
	runtime.KeepAlive(still)
}

// rangesHold reports whether the Range header value rg ("a-b,c-d") holds the n bytes at off.
func rangesHold(t *testing.T, rg string, off, n int64) bool {
	t.Helper()
	for _, r := range strings.Split(rg, ",") {
		a, b, _ := strings.Cut(r, "-")
		from, err1 := strconv.ParseInt(a, 10, 64)
		to, err2 := strconv.ParseInt(b, 10, 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("range %q", r)
		}
		if from <= off && off+n-1 <= to {
			return true
		}
	}
	return false
}
