package daemon

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/internal/imageindex"
	"lazypull/internal/store"
	"lazypull/internal/testutil"
)

// zstdFixture pushes an unconverted image of three layers, zstd (as skopeo writes one:
// one frame, level 3; 150 small files of text-like content and a 5 MiB one, over many
// spans), gzip, and zstd again (a file of the first layer replaced, 100 KiB compressed:
// no checkpoint needs a window, no window blob), and indexes it
// (64 KiB spans). It returns the registry, the reference, each layer's tar and the
// artifact.
func zstdFixture(t *testing.T) (*testutil.Registry, string, [][]byte, *imageindex.Result) {
	t.Helper()
	reg := testutil.NewRegistry(t)
	entries := []testutil.Entry{testutil.Dir("usr"), testutil.Dir("usr/share")}
	corpus := testutil.Corpus(4<<20, 7)
	for i, off := 0, 0; i < 150; i++ {
		n := 1000 + (i*7919)%24000
		entries = append(entries, testutil.File(fmt.Sprintf("usr/share/f%03d.txt", i), corpus[off:off+n]))
		off = (off + n) % (len(corpus) - 32000)
	}
	entries = append(entries, testutil.File("usr/lib/big.so", testutil.Corpus(wholeFileMax+wholeFileMax/4, 9)),
		testutil.Symlink("usr/lib/big.so.1", "big.so"))
	tars := [][]byte{
		testutil.Tar(t, entries...),
		testutil.Tar(t, testutil.Dir("etc"), testutil.File("etc/hostname", []byte("box\n"))),
		testutil.Tar(t, testutil.Dir("usr"), testutil.Dir("usr/share"), testutil.File("usr/share/f010.txt", testutil.Corpus(300<<10, 11))),
	}
	img := testutil.ImageOf(t, testutil.ZstdLayer(t, tars[0]), testutil.GzipLayer(t, tars[1]), testutil.ZstdLayer(t, tars[2]))
	ref := reg.Push(t, "zstd:v1", mutate.MediaType(img, types.OCIManifestSchema1))
	art, err := imageindex.Image(t.Context(), io.Discard, ref, imageindex.Options{Client: testClient(t), SpanSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if art.Layers[0].Windows.Size == 0 || art.Layers[1].Windows.Size != 0 || art.Layers[2].Windows.Size != 0 {
		t.Fatalf("window blobs of %d, %d, %d bytes: want one for the large zstd layer only (the small one has no checkpoint inside its frame)",
			art.Layers[0].Windows.Size, art.Layers[1].Windows.Size, art.Layers[2].Windows.Size)
	}
	return reg, ref, tars, art
}

// readTarFiles reads every regular file of the tar tr from dir, last first (so that
// reads start spans out of order and need their windows), and returns how many read
// back as the tar has them and the errors of the others; a file read with other bytes
// than the tar's fails the test.
func readTarFiles(t *testing.T, dir string, tr []byte) (ok int, errs []error) {
	t.Helper()
	type file struct {
		name string
		body []byte
	}
	var files []file
	for h, body := range testutil.TarEntries(t, tr) {
		if h.Typeflag == '0' {
			files = append(files, file{h.Name, body})
		}
	}
	slices.Reverse(files)
	for _, f := range files {
		got, err := os.ReadFile(filepath.Join(dir, f.name))
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", f.name, err))
		case !bytes.Equal(got, f.body):
			t.Errorf("%s: %d bytes read differ from the tar's %d: a wrong byte served", f.name, len(got), len(f.body))
		default:
			ok++
		}
	}
	return ok, errs
}

// TestSnapshotFSIndexedZstd: the snapshotter mounts each layer of an unconverted image
// with zstd layers (and a gzip one) from its index artifact: one small file costs a
// small part of its layer, every file reads back as the tar has it (last first, so that
// spans start out of order: their windows are read by range from the window blob), and
// the layer blobs are only ever read by range. With the window blobs corrupted (a newer
// artifact, the same index blobs), reads that need a window fail, whether the windows do
// not decode or decode to other bytes (the span's digest); none serves a wrong byte.
func TestSnapshotFSIndexedZstd(t *testing.T) {
	testutil.NeedRoot(t, "FUSE mounts")
	reg, ref, tars, art := zstdFixture(t)
	f, _, _, logs := indexedSnapshotFS(t)
	ctx := context.Background()
	dirs := make([]string, len(tars))
	for i := range dirs {
		dirs[i] = testutil.ShortDir(t)
		if err := f.Mount(ctx, dirs[i], criLabels(t, ref, art, i)); err != nil {
			t.Fatalf("layer %d: %v\n%s", i, err, logs)
		}
		t.Cleanup(func() { f.Unmount(ctx, dirs[i]) })
	}
	im := f.Images()[0]
	before := im.Registry.Stats().Bytes
	if got, err := os.ReadFile(filepath.Join(dirs[0], "usr/share/f075.txt")); err != nil || len(got) == 0 {
		t.Fatalf("a small file: %d bytes, %v", len(got), err)
	}
	one := im.Registry.Stats().Bytes - before
	if size := art.Layers[0].Layer.Size; one > size/8 {
		t.Errorf("one small file fetched %d bytes of a %d-byte zstd layer", one, size)
	}
	reg.Take()
	for i, tr := range tars {
		if n, errs := readTarFiles(t, dirs[i], tr); len(errs) > 0 || n == 0 {
			t.Errorf("layer %d: %d files read, errors %v", i, n, errs)
		}
	}
	windowReads := 0
	for _, r := range reg.Take() {
		for _, l := range art.Layers {
			if strings.Contains(r, l.Layer.Digest.Hex) && !strings.Contains(r, "Range:") {
				t.Errorf("layer %s read whole: %s", l.Layer.Digest, r)
			}
			if l.Windows.Size > 0 && strings.Contains(r, l.Windows.Digest.Hex) {
				windowReads++
			}
		}
	}
	if windowReads == 0 {
		t.Error("no window read from a window blob: no span started out of order?")
	}
	t.Logf("one small file: %d bytes fetched; layer 0: %d bytes, its index blob %d, its window blob %d; %d window blob reads",
		one, art.Layers[0].Layer.Size, art.Layers[0].Blob.Size, art.Layers[0].Windows.Size, windowReads)

	for k, c := range []struct {
		name, want string
		edit       func(*testing.T, *imageindex.Layer, []byte) []byte
	}{
		{"inverted", "bad window", invertWindows},
		{"decoding to other bytes", "digest mismatch", forgeWindows},
	} {
		corruptWindows(t, ref, art, c.edit, time.Now().Add(time.Duration(2+k)*time.Hour)) // the newest
		f2, _, _, logs2 := indexedSnapshotFS(t)
		dir := testutil.ShortDir(t)
		if err := f2.Mount(ctx, dir, criLabels(t, ref, art, 0)); err != nil {
			t.Fatalf("%s windows: layer 0: %v\n%s", c.name, err, logs2)
		}
		n, errs := readTarFiles(t, dir, tars[0])
		f2.Unmount(ctx, dir)
		if len(errs) == 0 || !strings.Contains(logs2.String(), c.want) {
			t.Errorf("%s windows: %d files read, %d failed; want failures, logged with %q:\n%s", c.name, n, len(errs), c.want, logs2)
			continue
		}
		t.Logf("%s windows: %d files read right, %d failed (%v)", c.name, n, len(errs), errs[0])
	}
}

// invertWindows returns the window blob raw with every byte inverted: no window decodes.
func invertWindows(_ *testing.T, _ *imageindex.Layer, raw []byte) []byte {
	for i := range raw {
		raw[i] ^= 0xff
	}
	return raw
}

// forgeWindows returns the window blob raw with each window that it can rewrite in its
// place (a zstd frame, then a skippable frame for the rest) holding other bytes: its last
// byte changed. Such a window decodes; the span decoded from it fails its digest.
func forgeWindows(t *testing.T, l *imageindex.Layer, raw []byte) []byte {
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderCRC(false))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	forged := 0
	for i := range l.ZS.NumSpans() {
		sp := l.ZS.Span(i)
		if sp.WindowLen == 0 {
			continue
		}
		w := raw[sp.WindowOff : sp.WindowOff+sp.WindowLen]
		sparse, err := dec.DecodeAll(w, nil)
		if err != nil {
			t.Fatalf("window of span %d: %v", i, err)
		}
		sparse[len(sparse)-1]++
		z := enc.EncodeAll(sparse, nil)
		if len(z) != len(w) && len(z)+8 > len(w) {
			continue
		}
		copy(w, z)
		if pad := w[len(z):]; len(pad) > 0 {
			binary.LittleEndian.PutUint32(pad, 0x184D2A50) // a skippable frame
			binary.LittleEndian.PutUint32(pad[4:], uint32(len(pad)-8))
			clear(pad[8:])
		}
		forged++
	}
	if forged == 0 {
		t.Fatal("no window could be forged in its place")
	}
	return raw
}

// corruptWindows pushes, as a referrer of the image created at created, its index
// artifact with each window blob replaced by edit's copy of it (the same size).
func corruptWindows(t *testing.T, ref string, art *imageindex.Result, edit func(*testing.T, *imageindex.Layer, []byte) []byte, created time.Time) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	var blobs, windows []v1.Descriptor
	for _, lr := range art.Layers {
		blobs = append(blobs, lr.Blob)
		if lr.Windows.Size == 0 {
			continue
		}
		read := func(d v1.Descriptor) []byte {
			l, err := remote.Layer(r.Context().Digest(d.Digest.String()))
			if err != nil {
				t.Fatal(err)
			}
			return testutil.Compressed(t, l)
		}
		il, err := imageindex.DecodeLayer(read(lr.Blob), imageindex.Zstd)
		if err != nil {
			t.Fatal(err)
		}
		raw := edit(t, il, read(lr.Windows))
		if err := remote.WriteLayer(r.Context(), static.NewLayer(raw, imageindex.WindowsMediaType)); err != nil {
			t.Fatal(err)
		}
		h, n, _ := v1.SHA256(bytes.NewReader(raw))
		windows = append(windows, v1.Descriptor{MediaType: imageindex.WindowsMediaType, Digest: h, Size: n, Annotations: lr.Windows.Annotations})
	}
	putArtifactAt(t, ref, art.Image, append(blobs, windows...), created)
}

// TestWindowBlobs: the artifact's layers after the index blobs must each be the window
// blob of one of the image's layers, at most one a layer; an image opened from an
// artifact without the window blob a zstd layer's index needs fails, naming it.
func TestWindowBlobs(t *testing.T) {
	descs := []v1.Descriptor{{Digest: v1.Hash{Algorithm: "sha256", Hex: "aa"}}, {Digest: v1.Hash{Algorithm: "sha256", Hex: "bb"}}}
	win := func(layer string) v1.Descriptor {
		return v1.Descriptor{MediaType: imageindex.WindowsMediaType, Size: 10, Annotations: map[string]string{imageindex.AnnotationLayer: layer}}
	}
	index := []v1.Descriptor{{}, {}}
	got, err := windowBlobs(&v1.Manifest{Layers: append(slices.Clone(index), win("sha256:bb"))}, descs)
	if err != nil || got[0] != nil || got[1] == nil || got[1].Annotations[imageindex.AnnotationLayer] != "sha256:bb" {
		t.Fatalf("one window blob for layer 1: %v, %v", got, err)
	}
	other := win("sha256:aa")
	other.MediaType = imageindex.LayerMediaType
	for name, extra := range map[string][]v1.Descriptor{
		"too few layers":   nil,
		"another type":     {other},
		"empty":            {{MediaType: imageindex.WindowsMediaType, Annotations: win("sha256:aa").Annotations}},
		"two for a layer":  {win("sha256:aa"), win("sha256:aa")},
		"not of the image": {win("sha256:cc")},
	} {
		layers := slices.Clone(index)
		if name == "too few layers" {
			layers = layers[:1]
		}
		if _, err := windowBlobs(&v1.Manifest{Layers: append(layers, extra...)}, descs); err == nil {
			t.Errorf("%s: no error", name)
		}
	}

	_, ref, _, art := zstdFixture(t)
	var blobs []v1.Descriptor
	for _, lr := range art.Layers {
		blobs = append(blobs, lr.Blob)
	}
	putArtifactAt(t, ref, art.Image, blobs, time.Now().Add(time.Hour))
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	_, err = OpenImage(t.Context(), st, ref, OpenOptions{Client: testClient(t)})
	if err == nil || !strings.Contains(err.Error(), "needs a window blob") || !strings.Contains(err.Error(), art.Layers[0].Layer.Digest.String()) {
		t.Fatalf("opened without its window blob: %v; want an error naming layer 0", err)
	}
}
