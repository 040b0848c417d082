package fusefs

import (
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"lazypull/internal/ocilayout"
)

// TestDebianImage runs the comparisons on the test image scripts/build-test-image.sh builds
// (Debian bookworm minbase, and python3 installed over it: real whiteouts and opaque
// directories from an overlayfs upper directory). make test sets LAZYPULL_TEST_IMAGES.
func TestDebianImage(t *testing.T) {
	images := os.Getenv("LAZYPULL_TEST_IMAGES")
	if images == "" {
		skipOrFail(t, "LAZYPULL_TEST_IMAGES unset: no test image (make test sets it)")
	}
	requireFUSE(t)
	if testing.Short() {
		t.Skip("SKIP: -short")
	}
	tars := imageLayers(t, filepath.Join(images, "python"))
	layers := openLayers(t, tars)
	for i, l := range layers {
		_, mnt, _ := mountIndex(t, l.Index, l.Content)
		want := layerView(t, tars[i])
		got := snapshot(t, mnt)
		t.Logf("layer %d: %d entries, %d names in the view", i, len(l.Index.Entries), len(got))
		compareTrees(t, want, got, compareOpts{})
	}
	mnt := mountMerged(t, layers)
	compareTrees(t, mergedReference(t, tars), snapshot(t, mnt), compareOpts{})
}

// imageLayers reads the uncompressed layer tars of the image of an OCI layout.
func imageLayers(t *testing.T, layout string) [][]byte {
	t.Helper()
	lay := ocilayout.At(layout)
	idx, err := lay.Index()
	if err != nil || len(idx.Manifests) == 0 {
		t.Fatalf("index.json: %v", err)
	}
	img, err := lay.Image(idx.Manifests[0])
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, l := range layers {
		d, _ := l.Digest()
		if mt, _ := l.MediaType(); !strings.HasSuffix(string(mt), "+gzip") {
			t.Fatalf("layer %s: media type %s, want gzip", d, mt)
		}
		rc, err := l.Compressed() // checked against its digest as it is read
		if err != nil {
			t.Fatal(err)
		}
		zr, err := gzip.NewReader(rc)
		if err != nil {
			t.Fatal(err)
		}
		tb, err := io.ReadAll(zr)
		if err == nil {
			_, err = io.Copy(io.Discard, rc) // the gzip trailer read, the digest is checked
		}
		rc.Close()
		if err != nil {
			t.Fatal(fmt.Errorf("layer %s: %w", d, err))
		}
		out = append(out, tb)
	}
	return out
}
