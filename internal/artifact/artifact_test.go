package artifact

import (
	"bytes"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"lazypull/internal/testutil"
)

// TestPushFoundByReferrers: an artifact pushed over an image, on a registry with the
// referrers API and on one without it (the tag schema), is listed among the image's
// referrers with its type and creation time, and reads back as pushed: its blob, its
// config of the artifact's type, its subject.
func TestPushFoundByReferrers(t *testing.T) {
	testutil.EachRegistry(t, func(t *testing.T, reg *testutil.Registry) {
		img, err := random.Image(64, 1)
		if err != nil {
			t.Fatal(err)
		}
		ref, err := name.ParseReference(reg.Push(t, "app:1", img))
		if err != nil {
			t.Fatal(err)
		}
		subject, err := remote.Head(ref)
		if err != nil {
			t.Fatal(err)
		}
		repo := ref.Context()
		const typ = "application/vnd.example.test.v1"
		data := []byte("what the artifact says")
		blob, err := PushBlob(repo, data, "application/vnd.example.blob", remote.WithContext(t.Context()))
		if err != nil {
			t.Fatal(err)
		}
		created := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
		raw, err := Manifest(typ, *subject, []v1.Descriptor{blob}, created)
		if err != nil {
			t.Fatal(err)
		}
		desc, err := PushManifest(repo, typ, raw)
		if err != nil {
			t.Fatal(err)
		}

		idx, err := remote.Referrers(repo.Digest(subject.Digest.String()))
		if err != nil {
			t.Fatal(err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			t.Fatal(err)
		}
		if len(im.Manifests) != 1 || im.Manifests[0].Digest != desc.Digest || im.Manifests[0].ArtifactType != typ ||
			im.Manifests[0].Annotations[AnnotationCreated] != "2026-12-07T12:00:00Z" {
			t.Fatalf("referrers %+v; want the artifact %s of type %s, created then", im.Manifests, desc.Digest, typ)
		}
		got, err := remote.Get(repo.Digest(desc.Digest.String()))
		if err != nil || !bytes.Equal(got.Manifest, raw) {
			t.Fatalf("manifest read back: %v", err)
		}
		m, err := v1.ParseManifest(bytes.NewReader(got.Manifest))
		if err != nil {
			t.Fatal(err)
		}
		if m.Subject == nil || m.Subject.Digest != subject.Digest || string(m.Config.MediaType) != typ || len(m.Layers) != 1 {
			t.Fatalf("manifest %+v", m)
		}
		l, err := remote.Layer(repo.Digest(blob.Digest.String()))
		if err != nil {
			t.Fatal(err)
		}
		if b := testutil.Compressed(t, l); !bytes.Equal(b, data) {
			t.Fatalf("blob read back: %q", b)
		}
	})
}
