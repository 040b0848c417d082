package e2e

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"lazypull/format"
	"lazypull/format/gzindex"
	"lazypull/internal/fetch"
	"lazypull/internal/imageindex"
)

// indexedImage pushes the plain Debian python image (gzip layers, as built) as
// e2e/NAME-PID:plain, runs `lazypull index` on it, checks the image's digest did not
// change, and returns the reference and the image's descriptor.
func (e *env) indexedImage(t *testing.T, name string) (string, v1.Descriptor) {
	t.Helper()
	ref := fmt.Sprintf("%s/e2e/%s-%d:plain", e.registry, name, os.Getpid())
	e.push(t, filepath.Join(e.images, "python"), "python", ref)
	return ref, e.index(t, ref)
}

// index runs `lazypull index` on the image ref, checks the image's digest did not change,
// and returns its descriptor.
func (e *env) index(t *testing.T, ref string) v1.Descriptor {
	t.Helper()
	before := remoteHead(t, ref)
	start := time.Now()
	r := e.lazypull(t, "index", "--plain-http", ref)
	if r.code != 0 {
		t.Fatalf("lazypull index: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	t.Logf("lazypull index --plain-http %s: %v\n%s", ref, time.Since(start).Round(time.Millisecond), r.stdout)
	if after := remoteHead(t, ref); after.Digest != before.Digest {
		t.Fatalf("the image's digest changed: %s, then %s", before.Digest, after.Digest)
	}
	return before
}

// resolvePlain opens ref's registry over plain HTTP, as the test registry speaks, through a
// client closed when the test ends, and resolves ref.
func resolvePlain(t *testing.T, ref string) (*fetch.Registry, *fetch.Image) {
	t.Helper()
	client, err := fetch.NewClient(fetch.WithPlainHTTP())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	reg, err := client.Open(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := reg.Resolve(t.Context(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	return reg, img
}

// indexArtifact returns the manifest, parsed and raw, of the one index artifact whose
// subject is the image manifest subject in reg.
func indexArtifact(t *testing.T, reg *fetch.Registry, subject v1.Hash) (*v1.Manifest, []byte) {
	t.Helper()
	refs, err := reg.Referrers(t.Context(), subject, imageindex.ArtifactType)
	if err != nil || len(refs) != 1 {
		t.Fatalf("referrers of %s: %v, %v; want one index", subject, refs, err)
	}
	_, raw, err := reg.Manifest(t.Context(), refs[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	return m, raw
}

// TestIndexPlainImage runs `lazypull index` on the plain Debian python image (gzip
// layers, as built): the artifact is found through the referrers API (or its tag schema),
// the image's digest is unchanged, and a dozen files read through each layer's gzindex,
// by Range requests to the layer blob, equal the files of the image unpacked.
func TestIndexPlainImage(t *testing.T) {
	e := setup(t)
	ref, before := e.indexedImage(t, "index")

	reg, img := resolvePlain(t, ref)
	m, raw := indexArtifact(t, reg, before.Digest)
	if m.Subject == nil || m.Subject.Digest != before.Digest || m.ArtifactType != imageindex.ArtifactType || len(m.Layers) < len(img.Manifest.Layers) {
		t.Fatalf("artifact manifest: subject %v, artifactType %q, %d layers for %d", m.Subject, m.ArtifactType, len(m.Layers), len(img.Manifest.Layers))
	}
	windows := map[string]v1.Descriptor{} // by image layer digest
	for _, d := range m.Layers[len(img.Manifest.Layers):] {
		if d.MediaType != imageindex.WindowsMediaType {
			t.Fatalf("artifact layer %+v after the index blobs: not a window blob", d)
		}
		windows[d.Annotations[imageindex.AnnotationLayer]] = d
	}
	tables := make([]*imageindex.Layer, len(img.Manifest.Layers))
	var imageSize, indexSize, gzSize int64
	for i, d := range m.Layers[:len(tables)] {
		layer := img.Manifest.Layers[i]
		if d.Annotations[imageindex.AnnotationLayer] != layer.Digest.String() {
			t.Fatalf("artifact layer %d names %q, want %s", i, d.Annotations[imageindex.AnnotationLayer], layer.Digest)
		}
		enc, err := reg.Layer(d).ReadAll(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if tables[i], err = imageindex.DecodeLayer(enc, imageindex.Gzip); err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		imageSize += layer.Size
		indexSize += d.Size
		gzSize += int64(len(tables[i].GZ.Encode()))
	}
	t.Logf("image %s: layers %d bytes; index artifact %d bytes (%.2f%%; gzindexes %d, file tables %d) in %d layer blobs, manifest %d bytes",
		ref, imageSize, indexSize, 100*float64(indexSize)/float64(imageSize), gzSize, indexSize-gzSize, len(m.Layers), len(raw))

	files := unpackedFiles(t, ref)
	picked := pickFiles(t, files, tables)
	for _, name := range picked {
		i, e := topEntry(tables, name)
		win, ok := windows[img.Manifest.Layers[i].Digest.String()]
		if ok != (tables[i].GZ.WindowsSize() > 0) || win.Size != tables[i].GZ.WindowsSize() {
			t.Fatalf("layer %d: window blob %+v for a gzindex with %d bytes of windows", i, win, tables[i].GZ.WindowsSize())
		}
		var wins io.ReaderAt = bytes.NewReader(nil)
		if ok {
			wins = reg.Layer(win).ReaderAt(t.Context())
		}
		ra := gzindex.NewReader(tables[i].GZ, reg.Layer(img.Manifest.Layers[i]).ReaderAt(t.Context()), wins, 4<<20)
		got := make([]byte, e.TarLen)
		if n, err := ra.ReadAt(got, e.TarOffset); n != len(got) {
			t.Fatalf("%s: read %d+%d of layer %d: %d bytes, %v", name, e.TarOffset, e.TarLen, i, n, err)
		}
		if !bytes.Equal(got, files[name]) {
			t.Errorf("%s: %d bytes read through the index differ from the unpacked file's %d", name, len(got), len(files[name]))
		}
		if e.Digest != format.Digest(sha256.Sum256(got)) {
			t.Errorf("%s: the table's digest is not its content's", name)
		}
	}
	t.Logf("%d files read through the indexes: %v", len(picked), picked)
}

// unpackedFiles returns the regular files of the image ref unpacked (layers applied in
// order, whiteouts honoured, by go-containerregistry), by cleaned path.
func unpackedFiles(t *testing.T, ref string) map[string][]byte {
	t.Helper()
	img, err := remote.Image(parseRef(t, ref))
	if err != nil {
		t.Fatal(err)
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	files := map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("unpack %s: %v", ref, err)
		}
		if h.Typeflag != tar.TypeReg || h.Size == 0 || h.Size > 8<<20 {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[format.CleanName(h.Name)] = b
	}
	return files
}

// topEntry finds a path's last entry in the topmost layer that has it.
func topEntry(tables []*imageindex.Layer, name string) (int, *format.Entry) {
	for i := len(tables) - 1; i >= 0; i-- {
		ents := tables[i].Table.Entries
		for j := len(ents) - 1; j >= 0; j-- {
			if ents[j].Name == name {
				return i, &ents[j]
			}
		}
	}
	return -1, nil
}

// pickFiles picks a dozen unpacked files whose top entry is a regular file, spread over
// the sorted paths, and the largest.
func pickFiles(t *testing.T, files map[string][]byte, tables []*imageindex.Layer) []string {
	t.Helper()
	var names []string
	largest := ""
	for n, b := range files {
		if _, e := topEntry(tables, n); e != nil && e.IsRegular() && !e.Sparse {
			names = append(names, n)
			if len(b) > len(files[largest]) {
				largest = n
			}
		}
	}
	if len(names) < 1000 {
		t.Fatalf("only %d regular files found both unpacked and in the indexes", len(names))
	}
	sort.Strings(names)
	picked := []string{largest}
	for i := 0; i < 11; i++ {
		picked = append(picked, names[i*len(names)/11])
	}
	return picked
}
