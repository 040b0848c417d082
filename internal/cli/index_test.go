package cli

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/internal/testutil"
)

func TestIndexUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		err  string
	}{
		{[]string{"index"}, "want one REF"},
		{[]string{"index", "a", "b"}, "want one REF"},
		{[]string{"index", "--jobs", "0", "a"}, "--jobs at least 1"},
		{[]string{"index", "--span", "-1", "a"}, "--span must be positive"},
	} {
		if code, _, errOut := run(t, tc.args...); code != 2 || !strings.Contains(errOut, tc.err) {
			t.Errorf("%v: exit %d, %q; want 2 and %q", tc.args, code, errOut, tc.err)
		}
	}
}

// TestIndex runs `lazypull index` on a gzip image, then on a zstd one, which it refuses
// naming the layer.
func TestIndex(t *testing.T) {
	reg := testutil.NewRegistry(t, testutil.WithReferrers())
	tr := testutil.Tar(t, testutil.Dir("etc"), testutil.File("etc/motd", []byte("hello")))
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(tr)), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.Push(t, "app:v1", mutate.MediaType(img, types.OCIManifestSchema1))
	if code, out, errOut := run(t, "index", "--plain-http", ref); code != 0 || !strings.Contains(out, "2 entries, 1 files") || !strings.Contains(out, "pushed") {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	zimg, err := mutate.AppendLayers(empty.Image, static.NewLayer([]byte("zstd"), types.OCILayerZStd))
	if err != nil {
		t.Fatal(err)
	}
	zref := reg.Push(t, "app:zstd", mutate.MediaType(zimg, types.OCIManifestSchema1))
	if code, _, errOut := run(t, "index", "--plain-http", zref); code != 1 || !strings.Contains(errOut, "layer 0 sha256:") || !strings.Contains(errOut, "zstd layers are not indexed yet") {
		t.Fatalf("zstd image: exit %d, stderr %q", code, errOut)
	}
}
