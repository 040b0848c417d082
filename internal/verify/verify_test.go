package verify

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/format"
	"lazypull/internal/fetch"
	"lazypull/internal/testutil"
	"lazypull/internal/testutil/layertest"
)

// diffIDLayer is a static layer with the diff ID of its tar (a static layer says its digest).
type diffIDLayer struct {
	v1.Layer
	diffID v1.Hash
}

func (l diffIDLayer) DiffID() (v1.Hash, error) { return l.diffID, nil }

// pushVerifyImage pushes a one-layer lazypull image of bin/bash, bin/sh and etc/motd, its index
// first changed by edit (and written back into the blob and the annotations), with the
// tar's diff ID in its config unless wrongDiffID, and returns its reference.
func pushVerifyImage(t *testing.T, host string, edit func(ix *format.Index), wrongDiffID bool) string {
	t.Helper()
	var entries []testutil.Entry
	for _, f := range []struct{ name, body string }{{"bin/bash", "#!bash"}, {"bin/sh", "#!sh, the real one"}, {"etc/motd", "hi"}} {
		entries = append(entries, testutil.Entry{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o755}, Body: []byte(f.body)})
	}
	blob, ann, res := layertest.FromTar(t, testutil.Tar(t, entries...), edit)

	layer := v1.Layer(static.NewLayer(blob, types.MediaType(format.MediaTypeLayer)))
	if !wrongDiffID {
		h, _ := v1.NewHash(res.DiffID)
		layer = diffIDLayer{layer, h}
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{Layer: layer, Annotations: ann, MediaType: types.MediaType(format.MediaTypeLayer)})
	if err != nil {
		t.Fatal(err)
	}
	ref := host + "/verify:" + map[bool]string{true: "wrong", false: "t"}[wrongDiffID] + strings.ReplaceAll(t.Name(), "/", "-")
	tag, _ := name.ParseReference(ref)
	if err := remote.Write(tag, mutate.MediaType(img, types.OCIManifestSchema1)); err != nil {
		t.Fatal(err)
	}
	return ref
}

// check verifies the image at ref over plain HTTP, as `lazypull verify --plain-http REF`
// does, and returns the exit status that command has (1: a mismatch), what Image wrote,
// and its error.
func check(t *testing.T, ref string) (code int, out, errs string) {
	t.Helper()
	var w bytes.Buffer
	client, err := fetch.NewClient(fetch.WithPlainHTTP())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	err = Image(context.Background(), &w, ref, nil, client)
	switch {
	case errors.Is(err, ErrMismatch):
		return 1, w.String(), err.Error()
	case err != nil:
		return 2, w.String(), err.Error() // not a result: fails every assertion below
	}
	return 0, w.String(), ""
}

// TestVerifyImage: lazypull verify passes an honest image, and exits 1 naming the layer,
// the entry and the field for an index that serves bash as bin/sh (all digests updated),
// and for a config whose diff ID is not the tar's.
func TestVerifyImage(t *testing.T) {
	host := testutil.NewRegistry(t).Host

	code, out, errs := check(t, pushVerifyImage(t, host, func(*format.Index) {}, false))
	if code != 0 || !strings.Contains(out, "1 layers verified") || !strings.Contains(out, " header runs,") {
		t.Errorf("honest image: exit %d\n%s%s", code, out, errs)
	}
	swap := func(ix *format.Index) {
		ix.Entries[0].Name, ix.Entries[1].Name = ix.Entries[1].Name, ix.Entries[0].Name
	}
	code, out, errs = check(t, pushVerifyImage(t, host, swap, false))
	if code != 1 || !strings.Contains(out, `MISMATCH entry "bin/sh": name: index says "bin/sh", tar says "bin/bash"`) {
		t.Errorf("crafted index: exit %d; want 1 naming bin/sh\n%s%s", code, out, errs)
	}
	// Header frames that are not those the index's run digest names.
	code, out, errs = check(t, pushVerifyImage(t, host, func(ix *format.Index) { ix.RunDigests[1][0] ^= 1 }, false))
	if code != 1 || !strings.Contains(out, "MISMATCH header run 1") || !strings.Contains(out, "run digest") {
		t.Errorf("wrong run digest: exit %d; want 1 naming run 1\n%s%s", code, out, errs)
	}
	code, out, errs = check(t, pushVerifyImage(t, host, func(ix *format.Index) { ix.RunDigests = nil }, false))
	if code != 0 || !strings.Contains(out, "no header run digests") {
		t.Errorf("version 1 index: exit %d\n%s%s", code, out, errs)
	}
	code, out, errs = check(t, pushVerifyImage(t, host, func(*format.Index) {}, true))
	if code != 1 || !strings.Contains(out, "diff ID") {
		t.Errorf("wrong diff ID: exit %d; want 1 naming the diff ID\n%s%s", code, out, errs)
	}
}
