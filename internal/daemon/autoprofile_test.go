package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/format"
	"lazypull/internal/profile"
	"lazypull/internal/store"
	"lazypull/internal/testutil"
)

// autoQuiet is the quiet period of the tests' recordings: long, so that a loaded machine
// does not end one between two reads; the tests end them by closing the image.
const autoQuiet = time.Hour

// autoFiles are the files of the tests' two-layer image.
func autoFiles() (base, app map[string][]byte) {
	base = map[string][]byte{"lib/libc.so": testutil.RandBytes(1, 900_000), "etc/passwd": []byte("root:x:0:0::/root:/bin/sh\n"),
		"lib/unused": testutil.RandBytes(3, 300_000)}
	app = map[string][]byte{"bin/app": testutil.RandBytes(2, 700_000), "etc/app.conf": []byte("x=1\n"), "share/doc": testutil.RandBytes(4, 80_000)}
	return base, app
}

// openStore opens a store in a new directory, closed when the test ends.
func openStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// mountImage mounts every layer of the image ref (manifest d) through a snapshotter's file
// system over st that records starts (quiet period autoQuiet), and returns the mount
// directories, lowest layer first, and the file system (closed when the test ends).
func mountImage(t *testing.T, st *store.Store, ref string, img v1.Image, log *slog.Logger) ([]string, *SnapshotFS) {
	t.Helper()
	return mountImageWith(t, st, ref, img, log, true)
}

// mountImageWith is mountImage with the speculation of misses on or off
// (SnapshotFS.SetSpeculation).
func mountImageWith(t *testing.T, st *store.Store, ref string, img v1.Image, log *slog.Logger, speculate bool) ([]string, *SnapshotFS) {
	t.Helper()
	testutil.NeedRoot(t, "FUSE mounts")
	fsys := NewSnapshotFS(st, nil, log, testClient(t))
	fsys.SetSpeculation(speculate)
	fsys.SetPrefetch(PrefetchOptions{Auto: &AutoProfileOptions{Quiet: autoQuiet}})
	t.Cleanup(func() { fsys.Close() })
	d, _ := img.Digest()
	m, _ := img.Manifest()
	var dirs []string
	for _, l := range m.Layers {
		dir := t.TempDir()
		labels := pulledLabels(ref, d.String(), l.Digest.String(), l.Annotations)
		if err := fsys.Mount(context.Background(), dir, labels); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, dir)
	}
	return dirs, fsys
}

// readAt reads n bytes at off of the file at path.
func readAt(t *testing.T, path string, off, n int64) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return b
}

// keptAuto waits for the store to keep a profile of the image manifest d with at least
// starts starts, and returns it.
func keptAuto(t *testing.T, st *store.Store, d v1.Hash, starts int) *profile.Auto {
	t.Helper()
	fd, _ := format.ParseDigest(d.String())
	var a *profile.Auto
	testutil.Await(t, 10*time.Second, "the automatic profile kept", func() (bool, string) {
		b, err := st.Profile(fd)
		if err != nil {
			return false, err.Error()
		}
		if a, err = profile.ParseAuto(b); err != nil {
			return false, err.Error()
		}
		return a.Starts >= starts, a.Profile.String()
	})
	return a
}

// copyProfiles keeps in to the profiles from keeps of the image manifests ds: a node whose
// store holds its profiles but no longer the content they name (evicted), or another node.
func copyProfiles(t *testing.T, from, to *store.Store, ds ...v1.Hash) {
	t.Helper()
	for _, d := range ds {
		fd, _ := format.ParseDigest(d.String())
		b, err := from.Profile(fd)
		if err != nil {
			t.Fatal(err)
		}
		a, err := profile.ParseAuto(b)
		if err != nil {
			t.Fatal(err)
		}
		if err := to.PutProfile(a.Repository, fd, b); err != nil {
			t.Fatal(err)
		}
	}
}

// TestAutoProfile: the first start of an image with no profile, through real FUSE mounts,
// is recorded (files in first-access order, the chunks read of a file read in part, whole a
// file served from its local copy) and kept in the store; the next start of the image, on
// a store that holds that profile but none of the content, prefetches the recorded files:
// reading them then costs no request.
func TestAutoProfile(t *testing.T) {
	base, app := autoFiles()
	img := twoLayerImageWith(t, base, app, nil)
	ref, reqs, subject := pushCounted(t, img, "auto:v1")
	st := openStore(t)
	// share/doc is complete in the store before the start (another image brought it): the
	// start's open of it is answered from the local copy, its reads never reach the layer.
	early, err := OpenImage(context.Background(), st, ref, OpenOptions{Client: testClient(t)})
	if err != nil {
		t.Fatal(err)
	}
	readPart(t, early, "share/doc", 80_000)
	early.Close()
	log, logs := testutil.NewLog(t)
	dirs, fsys := mountImage(t, st, ref, img, log)
	if !bytes.Equal(readAt(t, filepath.Join(dirs[1], "bin/app"), 0, 700_000), app["bin/app"]) {
		t.Fatal("bin/app: wrong bytes")
	}
	readAt(t, filepath.Join(dirs[0], "etc/passwd"), 0, 10)
	readAt(t, filepath.Join(dirs[0], "lib/libc.so"), 0, 4096)
	readAt(t, filepath.Join(dirs[1], "share/doc"), 0, 100)
	fsys.Close() // unmounted, the image closes: its recording ends
	a := keptAuto(t, st, subject.Digest, 1)
	var paths []string
	for _, f := range a.Profile.Files {
		paths = append(paths, f.Path)
	}
	if got, want := paths, []string{"bin/app", "etc/passwd", "lib/libc.so", "share/doc"}; !slices.Equal(got, want) {
		t.Fatalf("recorded %q; want %q in first-access order", got, want)
	}
	if libc := a.Profile.Files[2]; libc.Ranges[0].Off != 0 || libc.Ranges[len(libc.Ranges)-1].End() >= 900_000 {
		t.Errorf("lib/libc.so recorded as %v after a read of its first 4096 bytes; want its first chunks only", libc.Ranges)
	}
	if doc := a.Profile.Files[3]; !slices.Equal(doc.Ranges, []profile.Range{{Off: 0, Len: 80_000}}) {
		t.Errorf("share/doc, served from its local copy, recorded as %v; want it whole", doc.Ranges)
	}
	if a.Digests[0] != sha256Of(app["bin/app"]) {
		t.Errorf("bin/app recorded with digest %s", a.Digests[0])
	}
	testutil.WaitFor(t, 10*time.Second, "one log line for the profile kept", func() bool { return logs.Count("automatic profile kept") == 1 })

	st2 := openStore(t)
	copyProfiles(t, st, st2, subject.Digest)
	reqs.reset()
	dirs, fsys = mountImage(t, st2, ref, img, log)
	ps := prefetchedOf(t, fsys)
	if ps.Source != SourceNode || ps.Files != 4 || ps.Stale != 0 || ps.Err != "" {
		t.Fatalf("second start prefetched %+v; want the 4 files of this node's profile", ps)
	}
	before := reqs.count("GET blobs")
	if !bytes.Equal(readAt(t, filepath.Join(dirs[1], "bin/app"), 0, 700_000), app["bin/app"]) ||
		!bytes.Equal(readAt(t, filepath.Join(dirs[0], "lib/libc.so"), 0, 4096), base["lib/libc.so"][:4096]) {
		t.Fatal("wrong bytes")
	}
	readAt(t, filepath.Join(dirs[0], "etc/passwd"), 0, 10)
	readAt(t, filepath.Join(dirs[1], "share/doc"), 0, 100)
	if n := reqs.count("GET blobs"); n != before {
		t.Errorf("%d blob requests reading the recorded files after the prefetch; want none", n-before)
	}
	readAt(t, filepath.Join(dirs[0], "lib/unused"), 0, 100)
	if n := reqs.count("GET blobs"); n != before+1 {
		t.Errorf("%d blob requests reading a file not recorded; want 1 (the test counts requests)", n-before)
	}
	// The second start is merged in.
	fsys.Close()
	if a := keptAuto(t, st2, subject.Digest, 2); len(a.Profile.Files) != 5 {
		t.Errorf("merged profile %s; want 5 files", a.Profile)
	}
}

// prefetchedOf waits for the prefetch of the one image fsys has open, and returns its figures.
func prefetchedOf(t *testing.T, fsys *SnapshotFS) PrefetchStats {
	t.Helper()
	var ps PrefetchStats
	testutil.Await(t, 10*time.Second, "the prefetch", func() (bool, string) {
		ims := fsys.Images()
		if len(ims) != 1 {
			return false, "images open: " + strconv.Itoa(len(ims))
		}
		ps, _ = ims[0].PrefetchStats()
		return ps.Done, fmt.Sprintf("%+v", ps)
	})
	return ps
}

// digestOf is a made-up digest: c 64 times.
func digestOf(c byte) string { return "sha256:" + strings.Repeat(string(c), 64) }

func sha256Of(b []byte) string { return format.Digest(sha256.Sum256(b)).String() }

// startIn opens the image ref over st as the snapshotter does, recording its start (quiet
// period autoQuiet), and waits for its prefetch.
func startIn(t *testing.T, st *store.Store, ref string, log *slog.Logger) (*Image, PrefetchStats) {
	t.Helper()
	return startWith(t, st, ref, log, AutoProfileOptions{Quiet: autoQuiet})
}

// startWith is startIn with the automatic profiles' options o.
func startWith(t *testing.T, st *store.Store, ref string, log *slog.Logger, o AutoProfileOptions) (*Image, PrefetchStats) {
	t.Helper()
	im, err := openImage(context.Background(), st, ref, OpenOptions{Profile: &ProfileChoice{}, Client: testClient(t), Log: log, partial: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(im.Close)
	im.waitKept()
	im.Prefetch(context.Background(), PrefetchOptions{Wait: time.Minute, Auto: &o})
	ps, _ := im.PrefetchStats()
	if !ps.Done {
		t.Fatalf("prefetch not done after a minute: %+v", ps)
	}
	return im, ps
}

// readPart reads n bytes at the start of path through im's layers, as a mount does.
func readPart(t *testing.T, im *Image, path string, n int64) []byte {
	t.Helper()
	for _, l := range slices.Backward(im.Layers) {
		if e, ok := l.Index.Lookup(path); ok {
			b := make([]byte, min(n, e.Size))
			if k, err := l.ReadAt(context.Background(), e, b, 0); k != len(b) {
				t.Fatalf("read %s: %d of %d bytes: %v", path, k, len(b), err)
			}
			return b
		}
	}
	t.Fatalf("%s not in the image", path)
	return nil
}

// TestAutoProfileAcrossVersions: v2 of an image, started on a node that recorded v1 and
// has no profile of v2, is prefetched by v1's profile mapped onto v2: a changed file by
// its path, a renamed one by its content's digest; one v2 no longer has is skipped. The
// files v1 read are then read from v2 without a request.
func TestAutoProfileAcrossVersions(t *testing.T) {
	base, app := autoFiles()
	v1img := twoLayerImageWith(t, base, app, nil)
	ref1, reqs, subject1 := pushCounted(t, v1img, "auto:v1")
	app2 := map[string][]byte{"bin/app": testutil.RandBytes(5, 720_000), "share/doc2": app["share/doc"], "share/new": []byte("new")}
	v2img := twoLayerImageWith(t, base, app2, nil)
	ref2 := reqs.reg.Push(t, "auto:v2", v2img)

	st1 := openStore(t)
	im, _ := startIn(t, st1, ref1, nil)
	for _, p := range []string{"bin/app", "etc/app.conf", "share/doc"} {
		readPart(t, im, p, 1<<20)
	}
	readPart(t, im, "lib/libc.so", 4096)
	im.Close()
	keptAuto(t, st1, subject1.Digest, 1)

	st2 := openStore(t)
	copyProfiles(t, st1, st2, subject1.Digest)
	log, logs := testutil.NewLog(t)
	reqs.reset()
	im2, ps := startIn(t, st2, ref2, log)
	if ps.Source != SourceRelated || ps.Files != 3 || ps.Stale != 1 || ps.Err != "" {
		t.Fatalf("v2 prefetched %+v; want v1's profile: 3 files found, 1 skipped", ps)
	}
	// st2 keeps v1's profile but not its manifest: what v2 added cannot be told.
	if !strings.Contains(ps.Why, "1 files found under another path") || logs.Count("no longer has") != 1 ||
		ps.Delta != 0 || logs.Count("no files the image added are fetched") != 1 {
		t.Errorf("why %q; logged:\n%s", ps.Why, logs)
	}
	before := reqs.count("GET blobs")
	if !bytes.Equal(readPart(t, im2, "bin/app", 1<<20), app2["bin/app"]) || !bytes.Equal(readPart(t, im2, "share/doc2", 1<<20), app["share/doc"]) {
		t.Fatal("wrong bytes")
	}
	readPart(t, im2, "lib/libc.so", 4096)
	if n := reqs.count("GET blobs"); n != before {
		t.Errorf("%d blob requests reading v1's files from v2 after the prefetch; want none", n-before)
	}
	// v2's own start is recorded and kept beside v1's.
	im2.Close()
	d2, _ := v2img.Digest()
	if a := keptAuto(t, st2, d2, 1); a.Profile.Subject != d2.String() {
		t.Errorf("v2's profile has subject %s", a.Profile.Subject)
	}
}

// TestAutoProfileCorrupt: a profile in the store that does not parse, or is another
// image's, is logged, removed and ignored (the image is served without it, and its start
// recorded anew), never a panic.
func TestAutoProfileCorrupt(t *testing.T) {
	base, app := autoFiles()
	img := twoLayerImageWith(t, base, app, nil)
	ref, _, subject := pushCounted(t, img, "auto:v1")
	fd, _ := format.ParseDigest(subject.Digest.String())
	other := profile.Merge(nil, "x", &profile.Profile{Subject: digestOf('e'), Layers: []string{digestOf('f')}}, nil, profile.AutoLimits{})
	otherDoc, _ := other.Marshal()
	for name, doc := range map[string][]byte{"garbage": []byte(`{"repository":`), "another image's": otherDoc, "empty": nil} {
		t.Run(name, func(t *testing.T) {
			st := openStore(t)
			if err := st.PutProfile("r", fd, doc); err != nil {
				t.Fatal(err)
			}
			log, logs := testutil.NewLog(t)
			im, ps := startIn(t, st, ref, log)
			if ps.Source != "" || ps.Files != 0 || ps.Err != "" {
				t.Errorf("prefetched %+v; want no profile", ps)
			}
			if logs.Count("automatic profile in the store is corrupt; ignored and removed") != 1 {
				t.Errorf("want one log line for the corrupt profile:\n%s", logs)
			}
			readPart(t, im, "bin/app", 10)
			im.Close()
			if a := keptAuto(t, st, subject.Digest, 1); a.Starts != 1 || len(a.Profile.Files) != 1 {
				t.Errorf("kept %s after a corrupt one; want this start alone", a.Profile)
			}
		})
	}
}

// TestAutoProfilePushed: with Push, the profile a node keeps is pushed, with its pack, as a
// referrer of the image; another node starting the image then finds it as a published
// profile, and its prefetch (one pack request) brings every file the first node's start
// read: reading them costs no request. It records nothing, and keeps the published profile
// as its own.
func TestAutoProfilePushed(t *testing.T) {
	base, app := autoFiles()
	img := twoLayerImageWith(t, base, app, nil)
	ref, reqs, _ := pushCounted(t, img, "auto:v1")
	log, logs := testutil.NewLog(t)
	im, _ := startWith(t, openStore(t), ref, log, AutoProfileOptions{Quiet: autoQuiet, Push: AutoPush(testClient(t), true)})
	readPart(t, im, "bin/app", 1<<20)
	readPart(t, im, "etc/passwd", 10)
	im.Close()
	testutil.WaitFor(t, 10*time.Second, "the profile pushed", func() bool { return logs.Count("automatic profile pushed") == 1 })
	reqs.reset()
	im2, ps := startIn(t, openStore(t), ref, log)
	if ps.Source != SourceReferrers || !ps.Pack || ps.Files != 2 || ps.Err != "" {
		t.Fatalf("the second node prefetched %+v; want the pushed profile, with its pack", ps)
	}
	before := reqs.count("GET blobs")
	if !bytes.Equal(readPart(t, im2, "bin/app", 1<<20), app["bin/app"]) {
		t.Fatal("wrong bytes")
	}
	readPart(t, im2, "etc/passwd", 10)
	if n := reqs.count("GET blobs"); n != before {
		t.Errorf("%d blob requests reading the first node's files after the prefetch; want none", n-before)
	}
	// The second node does not record a start it has a published profile for: it keeps the
	// published one as its own, for other versions of the image.
	testutil.WaitFor(t, 10*time.Second, "the published profile kept", func() bool {
		return logs.Count("published profile kept as this node's profile") == 1
	})
	if a := keptAuto(t, im2.Layers[0].store, im2.Image.Descriptor.Digest, 1); len(a.Profile.Files) != 2 || a.Digests[0] != sha256Of(app["bin/app"]) {
		t.Errorf("the second node kept %s, digests %q; want the published profile's 2 files", a.Profile, a.Digests)
	}
	if logs.Count("recording its start") != 1 {
		t.Errorf("want one start recorded (the first node's):\n%s", logs)
	}
}

// BenchmarkAutoRecordRead is what recording adds to a read that reaches a layer: 128 KiB
// reads, from every CPU at once, of 1,000 files of 16 chunks each (first reads and repeats).
// A FUSE read itself costs tens of microseconds.
func BenchmarkAutoRecordRead(b *testing.B) {
	ix := &format.Index{Frames: make([]format.Frame, 16_000)}
	var files []store.File
	for i := range 1000 {
		ix.Entries = append(ix.Entries, format.Entry{Name: fmt.Sprint(i), Type: '0', Size: 16 << 16, FirstFrame: i * 16, NumFrames: 16})
		var f store.File
		for k := range 16 {
			f.Chunks = append(f.Chunks, format.Chunk{FileOffset: int64(k) << 16, Size: 1 << 16})
		}
		f.Size = 16 << 16
		files = append(files, f)
	}
	im := &Image{Layers: []*Layer{{Index: ix}}, bg: context.Background()}
	r := newAutoRecorderFor(im, AutoProfileOptions{MaxBytes: 1 << 40}, true)
	a := r.layers[0]
	r.first.Store(1) // as if started: no watcher
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			e := &ix.Entries[i%1000]
			a.read(e, files[i%1000], int64(i%8)<<17, 1<<17)
		}
	})
}

// TestAutoProfileBounded: a recording stops at its file bound, and is kept at once, marked
// truncated; starts merged later stay within the bound.
func TestAutoProfileBounded(t *testing.T) {
	base, app := autoFiles()
	ref, _, subject := pushCounted(t, twoLayerImageWith(t, base, app, nil), "auto:v1")
	st := openStore(t)
	o := AutoProfileOptions{Quiet: time.Hour, MaxFiles: 2}
	log, logs := testutil.NewLog(t)
	im, _ := startWith(t, st, ref, log, o)
	for _, p := range []string{"bin/app", "etc/passwd", "lib/libc.so"} {
		readPart(t, im, p, 100)
	}
	testutil.WaitFor(t, 10*time.Second, "the profile kept, truncated", func() bool { return logs.Count("truncated=true") == 1 })
	if got := pathsOf(keptAuto(t, st, subject.Digest, 1)); !slices.Equal(got, []string{"bin/app", "etc/passwd"}) {
		t.Errorf("kept %q; want the first 2 files", got)
	}
	im.Close()
	im, _ = startWith(t, st, ref, log, o)
	for _, p := range []string{"share/doc", "etc/app.conf"} {
		readPart(t, im, p, 100)
	}
	im.Close() // ends the recording (its quiet period is an hour)
	if a := keptAuto(t, st, subject.Digest, 2); len(a.Profile.Files) != 2 {
		t.Errorf("merged %q; want at most 2 files", pathsOf(a))
	}
}

func pathsOf(a *profile.Auto) []string {
	var out []string
	for _, f := range a.Profile.Files {
		out = append(out, f.Path)
	}
	return out
}

// TestAutoProfileQuiet: a recording ends, and is kept, once nothing new was read for its
// quiet period, the image still open.
func TestAutoProfileQuiet(t *testing.T) {
	base, app := autoFiles()
	ref, _, subject := pushCounted(t, twoLayerImageWith(t, base, app, nil), "auto:v1")
	st := openStore(t)
	log, logs := testutil.NewLog(t)
	im, _ := startWith(t, st, ref, log, AutoProfileOptions{Quiet: 50 * time.Millisecond})
	readPart(t, im, "bin/app", 100)
	if got := pathsOf(keptAuto(t, st, subject.Digest, 1)); !slices.Equal(got, []string{"bin/app"}) {
		t.Errorf("kept %q", got)
	}
	testutil.WaitFor(t, 10*time.Second, "the log line", func() bool { return logs.Count("why=quiet") == 1 })
}
