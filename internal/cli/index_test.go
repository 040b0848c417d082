package cli

import (
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
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

// TestIndex runs `lazypull index` on a gzip image, on a zstd one, and on one whose zstd
// layer does not decode, which it refuses naming the layer.
func TestIndex(t *testing.T) {
	reg := testutil.NewRegistry(t, testutil.WithReferrers())
	tr := testutil.Tar(t, testutil.Dir("etc"), testutil.File("etc/motd", []byte("hello")))
	img := testutil.ImageOf(t, testutil.GzipLayer(t, tr))
	ref := reg.Push(t, "app:v1", mutate.MediaType(img, types.OCIManifestSchema1))
	if code, out, errOut := run(t, "index", "--plain-http", ref); code != 0 || !strings.Contains(out, "2 entries, 1 files") || !strings.Contains(out, "pushed") {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	zimg := testutil.ImageOf(t, testutil.ZstdLayer(t, tr))
	zref := reg.Push(t, "app:zstd", mutate.MediaType(zimg, types.OCIManifestSchema1))
	if code, out, errOut := run(t, "index", "--plain-http", zref); code != 0 || !strings.Contains(out, "2 entries, 1 files, tar 2560 bytes, zstd, 1 checkpoints") || !strings.Contains(out, "pushed") {
		t.Fatalf("zstd image: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	bimg := testutil.ImageOf(t, static.NewLayer([]byte("zstd"), types.OCILayerZStd))
	bref := reg.Push(t, "app:badzstd", mutate.MediaType(bimg, types.OCIManifestSchema1))
	if code, _, errOut := run(t, "index", "--plain-http", bref); code != 1 || !strings.Contains(errOut, "layer 0 sha256:") || !strings.Contains(errOut, "zstdindex") {
		t.Fatalf("bad zstd image: exit %d, stderr %q", code, errOut)
	}
}
