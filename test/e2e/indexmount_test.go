package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/internal/imageindex"
)

// TestMountIndexedPlainImage mounts the plain Debian python image (gzip layers, not
// converted) lazily from the index `lazypull index` pushed: a dozen files (the largest
// among them) read from the mount equal the image's unpacked, and what was fetched is a
// small fraction of the image. Then python3 runs from it.
func TestMountIndexedPlainImage(t *testing.T) {
	e := setup(t)
	ref, _ := e.indexedImage(t, "indexmount")
	tables, m := indexTables(t, ref)
	files := unpackedFiles(t, ref)
	picked := pickFiles(t, files, tables)

	storeDir := t.TempDir()
	// Without speculation: the bound is on what the reads need of the spans. With it, a
	// registry answering in over speculate_min_rtt (loopback under CI's load, at times)
	// has the first read of python3.11 bring its libraries too (the walk of programs'
	// needs), which this test does not measure.
	mnt := e.mount(t, ref, storeDir, "--speculate=false")
	for _, name := range picked {
		got, err := os.ReadFile(filepath.Join(mnt.dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !bytes.Equal(got, files[name]) {
			t.Errorf("%s: %d bytes read from the mount differ from the unpacked file's %d", name, len(got), len(files[name]))
		}
	}
	if _, err := os.Stat(filepath.Join(mnt.dir, "usr/bin/python3")); err != nil {
		t.Errorf("the tree: %v", err)
	}
	var spans, indexBytes int64 // the compressed spans the files need, the index artifact's blobs
	for _, tb := range tables {
		indexBytes += int64(len(tb.GZ.Encode()))
	}
	for _, name := range picked {
		i, e := topEntry(tables, name)
		ix := tables[i].GZ
		first, last := ix.Span(ix.SpanAt(e.TarOffset)), ix.Span(ix.SpanAt(e.TarOffset+e.TarLen-1))
		spans += last.CompOff + last.CompLen - first.CompOff
	}
	t.Logf("the files' spans: %d compressed bytes; the gzindexes %d bytes", spans, indexBytes)
	wantFetchedLittle(t, fmt.Sprintf("reading %d files from the indexed mount", len(picked)), storeDir, time.Now(), m)
	t.Logf("read %v", picked)

	if out := must(t, "chroot", mnt.dir, "python3", "-c", "print(1)"); strings.TrimSpace(out) != "1" {
		t.Fatalf("python3 from the indexed mount printed %q", out)
	}
	st := stats(t, storeDir, time.Now())
	t.Logf("after python3 -c 'print(1)': %d bytes fetched in %d requests", st.Fetch.Bytes, st.Fetch.Requests)
}

// indexTables returns the decoded index of each layer of the image ref (its one index
// artifact's first blobs, one per image layer) and the image manifest.
func indexTables(t *testing.T, ref string) ([]*imageindex.Layer, *v1.Manifest) {
	t.Helper()
	reg, img := resolvePlain(t, ref)
	am, _ := indexArtifact(t, reg, img.Descriptor.Digest)
	tables := make([]*imageindex.Layer, len(img.Manifest.Layers))
	for i, d := range am.Layers[:len(tables)] {
		enc, err := reg.Layer(d).ReadAll(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		kind, err := imageindex.KindOf(string(img.Manifest.Layers[i].MediaType))
		if err != nil {
			t.Fatal(err)
		}
		if tables[i], err = imageindex.DecodeLayer(enc, kind); err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
	}
	return tables, img.Manifest
}
