package imageindex

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/format/gzindex"
	"lazypull/format/zstdindex"
	"lazypull/internal/fetch"
	"lazypull/internal/testutil"
)

// TestImage indexes a three-layer image (gzip, plain tar, zstd) in a registry with and
// without the referrers API: the artifact is found as a referrer, the image is unchanged,
// the zstd layer's window blob follows the index blobs, and each layer's files read
// through its index over the registry (and the window blob) match the tar.
func TestImage(t *testing.T) {
	testutil.EachRegistry(t, func(t *testing.T, reg *testutil.Registry) {
		tr := testTar(t)
		plain := testutil.Tar(t, testutil.File("etc/hostname", []byte("box\n")))
		img := testutil.ImageOf(t, testutil.GzipLayer(t, tr), static.NewLayer(plain, types.OCIUncompressedLayer), testutil.ZstdLayer(t, tr))
		ref := reg.Push(t, "app:v1", mutate.MediaType(img, types.OCIManifestSchema1))
		before := testutil.Head(t, ref).Digest

		client, err := fetch.NewClient(fetch.WithPlainHTTP())
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		var out bytes.Buffer
		res, err := Image(t.Context(), &out, ref, Options{Client: client, SpanSize: 64 << 10})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "index "+res.Artifact.Digest.String()+" pushed") {
			t.Errorf("output:\n%s", out.String())
		}
		if after := testutil.Head(t, ref).Digest; after != before || res.Image.Digest != before {
			t.Fatalf("image digest %s, then %s (indexed %s)", before, after, res.Image.Digest)
		}
		freg, err := client.Open(ref)
		if err != nil {
			t.Fatal(err)
		}
		refs, err := freg.Referrers(t.Context(), before, ArtifactType)
		if err != nil || len(refs) != 1 || refs[0].Digest != res.Artifact.Digest {
			t.Fatalf("referrers %v, %v: want the artifact %s", refs, err, res.Artifact.Digest)
		}
		_, raw, err := freg.Manifest(t.Context(), res.Artifact.Digest)
		if err != nil {
			t.Fatal(err)
		}
		m, err := v1.ParseManifest(bytes.NewReader(raw))
		if err != nil {
			t.Fatal(err)
		}
		layers, _ := img.Layers()
		gd, _ := layers[0].Digest()
		zd, _ := layers[2].Digest()
		if len(m.Layers) != 5 || m.Layers[3].MediaType != WindowsMediaType || m.Layers[3].Annotations[AnnotationLayer] != gd.String() ||
			m.Layers[4].MediaType != WindowsMediaType || m.Layers[4].Annotations[AnnotationLayer] != zd.String() ||
			m.Layers[3].Size+m.Layers[4].Size != res.WindowsSize || res.Layers[0].Windows.Digest != m.Layers[3].Digest ||
			res.Layers[2].Windows.Digest != m.Layers[4].Digest {
			t.Fatalf("artifact layers %+v: want the three index blobs, then the gzip and zstd layers' window blobs", m.Layers)
		}
		kinds := []Kind{Gzip, Tar, Zstd}
		for i, tarStream := range [][]byte{tr, plain, tr} {
			ld, _ := layers[i].Digest()
			if got := m.Layers[i].Annotations[AnnotationLayer]; got != ld.String() {
				t.Fatalf("artifact layer %d names %s, want %s", i, got, ld)
			}
			if got, want := m.Layers[i].Annotations[AnnotationDiffID], fmt.Sprintf("sha256:%x", sha256.Sum256(tarStream)); got != want {
				t.Fatalf("artifact layer %d gives the diff ID %s, want %s", i, got, want)
			}
			enc, err := freg.Layer(m.Layers[i]).ReadAll(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			l, err := DecodeLayer(enc, kinds[i])
			if err != nil {
				t.Fatal(err)
			}
			lsize, _ := layers[i].Size()
			var ra io.ReaderAt = freg.Blob(ld, lsize).ReaderAt(t.Context())
			switch {
			case l.GZ != nil:
				ra = gzindex.NewReader(l.GZ, ra, freg.Layer(m.Layers[3]).ReaderAt(t.Context()), 2<<20)
			case l.ZS != nil:
				ra = zstdindex.NewReader(l.ZS, ra, freg.Layer(m.Layers[4]).ReaderAt(t.Context()), 0)
			}
			checkTable(t, l.Table, tarStream, ra)
		}
	})
}

// TestImageRefuses: an image with a layer that is not a tar stream fails before anything
// is read, one whose zstd blob does not decode fails; each names the layer, and nothing
// is pushed.
func TestImageRefuses(t *testing.T) {
	reg := testutil.NewRegistry(t, testutil.WithReferrers())
	client, err := fetch.NewClient(fetch.WithPlainHTTP())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	for _, c := range []struct {
		mt   types.MediaType
		want string
	}{
		{"application/vnd.example.data", "not a tar layer"},
		{types.OCILayerZStd, "zstdindex"},
	} {
		img, err := mutate.AppendLayers(empty.Image, static.NewLayer([]byte("not really a layer"), c.mt))
		if err != nil {
			t.Fatal(err)
		}
		ref := reg.Push(t, "app:bad", mutate.MediaType(img, types.OCIManifestSchema1))
		ld, _ := img.Layers()
		d, _ := ld[0].Digest()
		pushed := len(reg.Requests())
		_, err = Image(t.Context(), io.Discard, ref, Options{Client: client})
		if err == nil || !strings.Contains(err.Error(), "layer 0 "+d.String()) || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%s: got %v, want an error naming layer 0 %s and %q", c.mt, err, d, c.want)
		}
		for _, r := range reg.Requests()[pushed:] {
			if !strings.HasPrefix(r, "GET") && !strings.HasPrefix(r, "HEAD") {
				t.Errorf("%s: pushed: %s", c.mt, r)
			}
		}
	}
}
