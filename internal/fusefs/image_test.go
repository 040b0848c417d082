package fusefs

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	blob := func(digest string) []byte {
		b, err := os.ReadFile(filepath.Join(layout, "blobs", strings.Replace(digest, ":", "/", 1)))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var index struct{ Manifests []struct{ Digest string } }
	b, err := os.ReadFile(filepath.Join(layout, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &index); err != nil || len(index.Manifests) == 0 {
		t.Fatalf("index.json: %v", err)
	}
	var manifest struct {
		Layers []struct{ MediaType, Digest string }
	}
	if err := json.Unmarshal(blob(index.Manifests[0].Digest), &manifest); err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, l := range manifest.Layers {
		if !strings.HasSuffix(l.MediaType, "+gzip") {
			t.Fatalf("layer %s: media type %s, want gzip", l.Digest, l.MediaType)
		}
		zr, err := gzip.NewReader(bytes.NewReader(blob(l.Digest)))
		if err != nil {
			t.Fatal(err)
		}
		tb, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(fmt.Errorf("layer %s: %w", l.Digest, err))
		}
		out = append(out, tb)
	}
	return out
}
