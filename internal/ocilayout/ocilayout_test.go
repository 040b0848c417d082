package ocilayout

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/internal/testutil"
)

func descOf(b []byte, mt types.MediaType) v1.Descriptor {
	sum := sha256.Sum256(b)
	return v1.Descriptor{MediaType: mt, Digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}, Size: int64(len(b))}
}

// newLayout is an initialized layout in a temp dir.
func newLayout(t *testing.T) *Layout {
	t.Helper()
	l := At(filepath.Join(t.TempDir(), "layout"))
	if err := l.Init(); err != nil {
		t.Fatal(err)
	}
	return l
}

// putManifest stores b as a manifest blob and returns its descriptor.
func putManifest(t *testing.T, l *Layout, b []byte) v1.Descriptor {
	t.Helper()
	d := descOf(b, types.OCIManifestSchema1)
	if err := l.WriteBlob(d, bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestInit(t *testing.T) {
	l := newLayout(t)
	b, err := os.ReadFile(filepath.Join(l.Dir(), "oci-layout"))
	if err != nil || string(b) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Fatalf("oci-layout %q, %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(l.Dir(), "blobs", "sha256")); err != nil || !fi.IsDir() {
		t.Fatalf("blobs/sha256: %v", err)
	}
	if l.HasIndex() {
		t.Error("a new layout has an index.json")
	}
	if _, err := l.Index(); err == nil || !strings.Contains(err.Error(), "index.json missing") {
		t.Errorf("Index of a new layout: %v", err)
	}
	if err := l.Init(); err != nil { // again: left as it is
		t.Fatal(err)
	}
	if _, err := At(filepath.Join(t.TempDir(), "nothing")).Index(); err == nil || !strings.Contains(err.Error(), "no OCI layout at") {
		t.Errorf("Index of a missing directory: %v", err)
	}
}

// The bytes of index.json are what imagebuild wrote before this package: the test images
// are cached by content.
func TestTagFormat(t *testing.T) {
	l := newLayout(t)
	d := putManifest(t, l, []byte(`{"schemaVersion":2}`))
	d.Platform = &v1.Platform{Architecture: "amd64", OS: "linux"}
	if err := l.Tag(d, "python"); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(l.Dir(), "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` +
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + d.Digest.String() + `","size":19,` +
		`"annotations":{"org.opencontainers.image.ref.name":"python"},"platform":{"architecture":"amd64","os":"linux"}}]}`
	if string(got) != want {
		t.Errorf("index.json\n got %s\nwant %s", got, want)
	}
	if fi, err := os.Stat(filepath.Join(l.Dir(), "index.json")); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("index.json mode: %v %v", fi.Mode(), err)
	}
}

func TestTag(t *testing.T) {
	l := newLayout(t)
	// An entry this package did not write keeps the fields v1.Descriptor does not know.
	foreign := `{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + strings.Repeat("a", 64) +
		`","size":3,"annotations":{"org.opencontainers.image.ref.name":"other"},"x-unknown":[1,2]}`
	if err := os.WriteFile(filepath.Join(l.Dir(), "index.json"), []byte(`{"schemaVersion":2,"manifests":[`+foreign+`]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	d1 := putManifest(t, l, []byte("one"))
	d2 := putManifest(t, l, []byte("two"))
	d1.Annotations = map[string]string{"keep": "me"}
	for _, step := range []struct {
		d   v1.Descriptor
		tag string
	}{{d1, "v1"}, {d2, "v2"}, {d2, "v1"}} {
		if err := l.Tag(step.d, step.tag); err != nil {
			t.Fatal(err)
		}
	}
	idx, err := l.Index()
	if err != nil {
		t.Fatal(err)
	}
	if tags := Tags(idx); !slices.Equal(tags, []string{"other", "v1", "v2"}) {
		t.Errorf("tags %v", tags)
	}
	// A tag set again moves to the end, pointing at its new manifest.
	var order []string
	for _, d := range idx.Manifests {
		order = append(order, d.Annotations[AnnotationRefName])
	}
	if !slices.Equal(order, []string{"other", "v2", "v1"}) {
		t.Errorf("order %v", order)
	}
	if f := Tagged(idx, "v1"); len(f) != 1 || f[0].Digest != d2.Digest || f[0].Annotations["keep"] != "" {
		t.Errorf("v1: %+v", f)
	}
	b, _ := os.ReadFile(filepath.Join(l.Dir(), "index.json"))
	if !strings.Contains(string(b), foreign) {
		t.Errorf("the foreign entry changed: %s", b)
	}
	if d1.Annotations["keep"] != "me" || len(d1.Annotations) != 1 {
		t.Errorf("Tag changed its argument's annotations: %v", d1.Annotations)
	}

	// A manifest must be in the layout before a tag names it.
	missing := descOf([]byte("absent"), types.OCIManifestSchema1)
	if err := l.Tag(missing, "v3"); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("Tag of a missing manifest: %v", err)
	}
	short := d1
	short.Size++
	if err := l.Tag(short, "v3"); err == nil {
		t.Error("Tag of a manifest of another size succeeded")
	}
	// An index.json that does not parse is not replaced.
	if err := os.WriteFile(filepath.Join(l.Dir(), "index.json"), []byte(`{"manifests":[{"digest":"sha256:../x"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := l.Tag(d1, "v1"); err == nil {
		t.Error("Tag over a corrupt index.json succeeded")
	}
}

// Writers of one layout take turns: none loses another's tag.
func TestTagConcurrent(t *testing.T) {
	l := newLayout(t)
	const n = 16
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		d := putManifest(t, l, fmt.Appendf(nil, "manifest %d", i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each writer its own Layout value: the lock is the directory's, not the value's.
			errs <- At(l.Dir()).Tag(d, fmt.Sprint("t", i))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	idx, err := l.Index()
	if err != nil {
		t.Fatal(err)
	}
	if len(Tags(idx)) != n {
		t.Errorf("%d tags, want %d: %v", len(Tags(idx)), n, Tags(idx))
	}
}

func TestWriteBlob(t *testing.T) {
	data := []byte("some blob content")
	good := descOf(data, types.OCILayer)
	blobs := func(l *Layout) []string { return testutil.DirNames(t, filepath.Join(l.Dir(), "blobs", "sha256")) }
	for _, tc := range []struct {
		name string
		r    io.Reader
		want error
	}{
		{"wrong content", bytes.NewReader(bytes.ToUpper(data)), ErrDigestMismatch},
		{"short", bytes.NewReader(data[:5]), ErrTruncated},
		{"long", bytes.NewReader(append(slices.Clone(data), 'x')), ErrDigestMismatch},
		{"failing reader", io.MultiReader(bytes.NewReader(data[:3]), iotestErr{}), errBroken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLayout(t)
			err := l.WriteBlob(good, tc.r)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if b := blobs(l); len(b) != 0 {
				t.Errorf("left behind: %v", b)
			}
		})
	}
	l := newLayout(t)
	if err := l.WriteBlob(good, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if got, err := l.ReadBlob(good); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("ReadBlob: %q, %v", got, err)
	}
	if b := blobs(l); !slices.Equal(b, []string{good.Digest.Hex}) {
		t.Errorf("blobs %v", b)
	}
	if !l.HasBlob(good) {
		t.Error("HasBlob false after WriteBlob")
	}
	// Present: not read again.
	if err := l.WriteBlob(good, iotestErr{}); err != nil {
		t.Errorf("WriteBlob of a present blob: %v", err)
	}
	// A blob damaged on disk fails ReadBlob.
	p, _ := l.BlobPath(good.Digest)
	if err := os.WriteFile(p, bytes.ToUpper(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := l.ReadBlob(good); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("ReadBlob of a damaged blob: %v", err)
	}
	if _, err := l.ReadBlob(v1.Descriptor{Digest: good.Digest, Size: MaxManifestSize + 1}); err == nil {
		t.Error("ReadBlob of a huge blob succeeded")
	}
	if _, err := l.Blob(descOf([]byte("absent"), "").Digest); err == nil || !strings.Contains(err.Error(), "missing from") {
		t.Errorf("Blob of an absent blob: %v", err)
	}
}

var errBroken = errors.New("broken reader")

type iotestErr struct{}

func (iotestErr) Read([]byte) (int, error) { return 0, errBroken }

func TestBlobWriter(t *testing.T) {
	l := newLayout(t)
	w, err := l.NewBlob()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(w, "hello, ")
	fmt.Fprint(w, "layout")
	h, n, err := w.Commit()
	if err != nil {
		t.Fatal(err)
	}
	w.Close() // after Commit: keeps the blob
	want := descOf([]byte("hello, layout"), "")
	if h != want.Digest || n != want.Size {
		t.Errorf("Commit: %s %d, want %s %d", h, n, want.Digest, want.Size)
	}
	if got, err := l.ReadBlob(want); err != nil || string(got) != "hello, layout" {
		t.Errorf("ReadBlob: %q %v", got, err)
	}
	// Closed without Commit: nothing left.
	w, err = l.NewBlob()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(w, "abandoned")
	w.Close()
	if b := testutil.DirNames(t, filepath.Join(l.Dir(), "blobs", "sha256")); !slices.Equal(b, []string{h.Hex}) {
		t.Errorf("blobs %v", b)
	}
}

// A digest becomes a path only if it is one.
func TestBlobPath(t *testing.T) {
	l := At("/layout")
	for _, h := range []v1.Hash{
		{},
		{Algorithm: "sha256", Hex: "../../../etc/passwd"},
		{Algorithm: "../..", Hex: strings.Repeat("a", 64)},
		{Algorithm: "sha256", Hex: strings.Repeat("A", 64)},
		{Algorithm: "sha256", Hex: strings.Repeat("a", 63)},
		{Algorithm: "md5", Hex: strings.Repeat("a", 32)},
	} {
		if p, err := l.BlobPath(h); err == nil {
			t.Errorf("BlobPath(%#v) = %s", h, p)
		}
		if err := l.WriteBlob(v1.Descriptor{Digest: h}, strings.NewReader("")); err == nil {
			t.Errorf("WriteBlob(%#v) succeeded", h)
		}
	}
	p, err := l.BlobPath(v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0", 64)})
	if err != nil || p != "/layout/blobs/sha256/"+strings.Repeat("0", 64) {
		t.Errorf("BlobPath: %s %v", p, err)
	}
}

func TestIndexBounds(t *testing.T) {
	l := newLayout(t)
	write := func(b []byte) {
		if err := os.WriteFile(filepath.Join(l.Dir(), "index.json"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Too large.
	write(append([]byte(`{"manifests":[]}`), bytes.Repeat([]byte(" "), MaxIndexSize)...))
	if _, err := l.Index(); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("huge index.json: %v", err)
	}
	// Small, but decoding into far more than its size.
	write([]byte(`{"manifests":[` + strings.Repeat("{},", 10000) + `{}]}`))
	if _, err := l.Index(); err == nil || !strings.Contains(err.Error(), "objects and arrays") {
		t.Errorf("dense index.json: %v", err)
	}
	write([]byte(`{"manifests":[{"digest":"sha256:../../x"}]}`))
	if _, err := l.Index(); err == nil {
		t.Error("an invalid digest parsed")
	}
}

// An image written here reads back, here and with go-containerregistry's layout; one written
// with go-containerregistry's layout reads here.
func TestImageRoundTrip(t *testing.T) {
	img, err := random.Image(1000, 3)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	l := newLayout(t)
	d, err := l.WriteImage(img)
	if err != nil {
		t.Fatal(err)
	}
	if d.Digest != want {
		t.Fatalf("WriteImage: %s, want %s", d.Digest, want)
	}
	if err := l.Tag(d, "latest"); err != nil {
		t.Fatal(err)
	}
	checkImage := func(got v1.Image) {
		t.Helper()
		if h, _ := got.Digest(); h != want {
			t.Errorf("image %s, want %s", h, want)
		}
		ls, err := got.Layers()
		if err != nil {
			t.Fatal(err)
		}
		for _, ly := range ls {
			rc, err := ly.Compressed()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(io.Discard, rc); err != nil {
				t.Error(err)
			}
			rc.Close()
		}
	}
	back, err := l.Image(d)
	if err != nil {
		t.Fatal(err)
	}
	checkImage(back)
	p, err := layout.FromPath(l.Dir())
	if err != nil {
		t.Fatal(err)
	}
	gi, err := p.Image(want)
	if err != nil {
		t.Fatal(err)
	}
	checkImage(gi)

	// Written by ggcr, read here.
	dir := filepath.Join(t.TempDir(), "ggcr")
	gp, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := gp.AppendImage(img, layout.WithAnnotations(map[string]string{AnnotationRefName: "v1"})); err != nil {
		t.Fatal(err)
	}
	idx, err := At(dir).Index()
	if err != nil {
		t.Fatal(err)
	}
	found := Tagged(idx, "v1")
	if len(found) != 1 {
		t.Fatalf("tagged v1: %v", found)
	}
	ours, err := At(dir).Image(found[0])
	if err != nil {
		t.Fatal(err)
	}
	checkImage(ours)

	// A layer damaged on disk fails as it is read.
	ls, _ := ours.Layers()
	h, _ := ls[1].Digest()
	bp, _ := At(dir).BlobPath(h)
	b, _ := os.ReadFile(bp)
	b[len(b)/2] ^= 1
	if err := os.WriteFile(bp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	rc, err := ls[1].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.Copy(io.Discard, rc); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("damaged layer: %v", err)
	}
}
