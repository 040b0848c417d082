package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/internal/fusefs"
	"lazypull/internal/imageindex"
	"lazypull/internal/store"
	"lazypull/internal/testutil"
)

// indexedFixture pushes an unconverted image (a gzip layer with small files, a large
// incompressible one, a symlink; a plain tar layer) and indexes it (64 KiB spans). It
// returns the reference, the files' contents by name, and the artifact.
func indexedFixture(t *testing.T, opts ...testutil.RegistryOption) (ref string, files map[string][]byte, art *imageindex.Result) {
	t.Helper()
	return indexedFixtureOn(t, testutil.NewRegistry(t, opts...))
}

// indexedFixtureOn is indexedFixture on the registry reg.
func indexedFixtureOn(t *testing.T, reg *testutil.Registry) (ref string, files map[string][]byte, art *imageindex.Result) {
	t.Helper()
	// Text: its spans' matches reach back past their checkpoints (windows).
	big := testutil.Corpus(wholeFileMax+wholeFileMax/2+12345, 2)
	files = map[string][]byte{
		"etc/os-release":    []byte("NAME=test\n"),
		"usr/lib/libbig.so": big,
		"usr/share/doc.txt": bytes.Repeat([]byte("lazy pulling of an unconverted image\n"), 5000),
		"etc/hostname":      []byte("box\n"),
	}
	tr := testutil.Tar(t, testutil.Dir("etc"), testutil.File("etc/os-release", files["etc/os-release"]),
		testutil.Dir("usr"), testutil.Dir("usr/lib"), testutil.File("usr/lib/libbig.so", big),
		testutil.Dir("usr/share"), testutil.File("usr/share/doc.txt", files["usr/share/doc.txt"]),
		testutil.Symlink("usr/lib/libbig.so.1", "libbig.so"))
	gz, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(tr)), nil })
	if err != nil {
		t.Fatal(err)
	}
	plain := testutil.Tar(t, testutil.File("etc/hostname", files["etc/hostname"]))
	img, err := mutate.AppendLayers(empty.Image, gz, static.NewLayer(plain, types.OCIUncompressedLayer))
	if err != nil {
		t.Fatal(err)
	}
	ref = reg.Push(t, "plain:v1", mutate.MediaType(img, types.OCIManifestSchema1))
	art, err = imageindex.Image(t.Context(), io.Discard, ref, imageindex.Options{Client: testClient(t), SpanSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	return ref, files, art
}

// readIndexed reads name whole through the image's merged layers, in 128 KiB reads from
// its start, as the kernel would.
func readIndexed(t *testing.T, layers []fusefs.Layer, name string) ([]byte, error) {
	t.Helper()
	for i := len(layers) - 1; i >= 0; i-- {
		e, ok := layers[i].Index.Lookup(name)
		if !ok {
			continue
		}
		out := make([]byte, e.Size)
		for off := int64(0); off < e.Size; off += 128 << 10 {
			end := min(off+128<<10, e.Size)
			if n, err := layers[i].Content.ReadAt(context.Background(), e, out[off:end], off); err != nil && !(errors.Is(err, io.EOF) && int64(n) == end-off) {
				return out[:off+int64(n)], err
			}
		}
		return out, nil
	}
	t.Fatalf("%s: in no layer", name)
	return nil, nil
}

// TestOpenFromIndex opens an unconverted image from its index artifact, found through
// the referrers tag schema or the referrers API: its tree is the tables', each file reads
// back as the tar has it, alone (FSLayer) or merged, and what was fetched of the image's
// layers is the spans of the files read, not the layers.
func TestOpenFromIndex(t *testing.T) {
	for _, api := range []bool{false, true} {
		t.Run(fmt.Sprintf("referrers API %v", api), func(t *testing.T) {
			var opts []testutil.RegistryOption
			if api {
				opts = append(opts, testutil.WithReferrers())
			}
			testOpenFromIndex(t, opts...)
		})
	}
}

func testOpenFromIndex(t *testing.T, opts ...testutil.RegistryOption) {
	ref, files, art := indexedFixture(t, opts...)
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	var logs testutil.LogBuffer
	im, err := OpenImage(t.Context(), st, ref, OpenOptions{Client: testClient(t), Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if len(im.Layers) != 0 || len(im.indexed) != 2 || !strings.Contains(logs.String(), art.Artifact.Digest.String()) {
		t.Fatalf("%d lazypull layers, %d indexed; log:\n%s", len(im.Layers), len(im.indexed), logs.String())
	}
	layers := im.FSLayers()
	if _, err := fusefs.NewMerged(layers); err != nil {
		t.Fatal(err)
	}
	if e, ok := layers[0].Index.Lookup("usr/lib/libbig.so.1"); !ok || !e.IsSymlink() || e.Linkname != "libbig.so" {
		t.Errorf("symlink: %+v, %v", e, ok)
	}
	if l, ok := im.FSLayer(1); !ok || l.Content != layers[1].Content || im.NumLayers() != 2 {
		t.Errorf("FSLayer(1): %v, %v; %d layers", l, ok, im.NumLayers())
	}
	if _, ok := im.FSLayer(2); ok {
		t.Error("FSLayer(2) of 2 layers")
	}
	before := im.Registry.Stats().Bytes
	for _, name := range []string{"etc/os-release", "etc/hostname", "usr/share/doc.txt"} {
		got, err := readIndexed(t, layers, name)
		if err != nil || !bytes.Equal(got, files[name]) {
			t.Errorf("%s: %d bytes, %v; want its %d", name, len(got), err, len(files[name]))
		}
	}
	small := im.Registry.Stats().Bytes - before
	if gzSize := art.Layers[0].Layer.Size; small > gzSize/4 {
		t.Errorf("reading the small files fetched %d bytes of a %d-byte gzip layer", small, gzSize)
	}
	got, err := readIndexed(t, layers, "usr/lib/libbig.so")
	if err != nil || !bytes.Equal(got, files["usr/lib/libbig.so"]) {
		t.Errorf("large file: %d bytes, %v", len(got), err)
	}
	t.Logf("small files fetched %d bytes; all %d; layers %d + %d bytes", small, im.Registry.Stats().Bytes-before, art.Layers[0].Layer.Size, art.Layers[1].Layer.Size)
}

// TestOpenFromIndexPolicy: under the pinned and off policies no index is looked up, and
// an unconverted image fails to open as it did before indexes, after one log line.
func TestOpenFromIndexPolicy(t *testing.T) {
	ref, _, _ := indexedFixture(t)
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	for _, p := range []ProfilePolicy{PolicyPinned, PolicyOff} {
		var logs testutil.LogBuffer
		_, err := OpenImage(t.Context(), st, ref, OpenOptions{Client: testClient(t), Log: slog.New(slog.NewTextHandler(&logs, nil)), IndexPolicy: p})
		if err == nil || !strings.Contains(err.Error(), "not a lazypull layer") {
			t.Errorf("%s: %v; want the image refused as not converted", p, err)
		}
		if n := strings.Count(logs.String(), "no index artifact"); n != 1 {
			t.Errorf("%s: %d log lines about the index; want 1:\n%s", p, n, logs.String())
		}
	}
}

// TestOpenFromIndexTampered: an index whose table gives files other digests than their
// content's (the newest referrer, so the one chosen) serves none of a small file's bytes,
// and fails the read that ends a large file, and every read of it after.
func TestOpenFromIndexTampered(t *testing.T) {
	ref, files, art := indexedFixture(t)
	pushTampered(t, ref, art)
	im, _ := openIndexed(t, ref)
	layers := im.FSLayers()
	for _, name := range []string{"etc/os-release", "etc/hostname"} {
		if got, err := readIndexed(t, layers, name); err == nil || len(got) != 0 {
			t.Errorf("%s: %d bytes, %v; want none served and an error", name, len(got), err)
		}
	}
	big := files["usr/lib/libbig.so"]
	got, err := readIndexed(t, layers, "usr/lib/libbig.so")
	if err == nil || len(got) >= len(big) || !bytes.Equal(got, big[:len(got)]) {
		t.Errorf("large file: %d bytes of %d, %v; want its spans up to the last read, then an error", len(got), len(big), err)
	}
	e, _ := layers[0].Index.Lookup("usr/lib/libbig.so")
	if _, err := layers[0].Content.ReadAt(t.Context(), e, make([]byte, 10), 0); err == nil {
		t.Error("large file: read after the mismatch served")
	}
}

// pushTampered pushes, as a newer referrer of the image, its index with every file's
// digest changed.
func pushTampered(t *testing.T, ref string, art *imageindex.Result) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	repo := r.Context()
	var blobs []v1.Descriptor
	for _, lr := range art.Layers {
		l, err := remote.Layer(repo.Digest(lr.Blob.Digest.String()))
		if err != nil {
			t.Fatal(err)
		}
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		raw, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		il, err := imageindex.DecodeLayer(raw, lr.Kind)
		if err != nil {
			t.Fatal(err)
		}
		for k := range il.Table.Entries {
			if il.Table.Entries[k].IsRegular() {
				il.Table.Entries[k].Digest[0] ^= 1
			}
		}
		enc, err := il.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.WriteLayer(repo, static.NewLayer(enc, imageindex.LayerMediaType)); err != nil {
			t.Fatal(err)
		}
		h, n, _ := v1.SHA256(bytes.NewReader(enc))
		blobs = append(blobs, v1.Descriptor{MediaType: imageindex.LayerMediaType, Digest: h, Size: n, Annotations: lr.Blob.Annotations})
	}
	for _, lr := range art.Layers {
		if lr.Windows.Size > 0 {
			blobs = append(blobs, lr.Windows)
		}
	}
	if err := remote.WriteLayer(repo, static.NewLayer([]byte("{}"), imageindex.ArtifactType)); err != nil {
		t.Fatal(err)
	}
	raw, err := imageindex.Manifest(art.Image, blobs, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	h, _, _ := v1.SHA256(bytes.NewReader(raw))
	if err := remote.Put(repo.Digest(h.String()), rawManifest{raw, types.OCIManifestSchema1}); err != nil {
		t.Fatal(err)
	}
}
