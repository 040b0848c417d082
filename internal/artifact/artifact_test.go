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
		repo, subject := pushSubject(t, reg)
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

// TestEmbedInTagIndex: on a registry without the referrers API, the newest artifact of each
// type carries its manifest in the tag index (an index artifact's and a profile's both,
// whichever was pushed last), an older one of the same type no longer does, and the
// embedded bytes are the manifest's; with the API there is no tag index and nothing to do.
func TestEmbedInTagIndex(t *testing.T) {
	for _, api := range []bool{false, true} {
		var opts []testutil.RegistryOption
		if api {
			opts = append(opts, testutil.WithReferrers())
		}
		repo, subject := pushSubject(t, testutil.NewRegistry(t, opts...))
		push := func(typ string, at int) (v1.Descriptor, []byte) {
			t.Helper()
			blob, err := PushBlob(repo, []byte(typ), "application/vnd.example.blob")
			if err != nil {
				t.Fatal(err)
			}
			raw, err := Manifest(typ, *subject, []v1.Descriptor{blob}, time.Date(2026, 12, 7, at, 0, 0, 0, time.UTC))
			if err != nil {
				t.Fatal(err)
			}
			desc, err := PushManifest(repo, typ, raw)
			if err != nil {
				t.Fatal(err)
			}
			if err := EmbedInTagIndex(repo, subject.Digest, desc, raw); err != nil {
				t.Fatal(err)
			}
			return desc, raw
		}
		const index, prof = "application/vnd.example.index.v1", "application/vnd.example.profile.v1"
		idxDesc, idxRaw := push(index, 1)
		oldDesc, _ := push(prof, 2)
		newDesc, newRaw := push(prof, 3)

		tag := repo.Tag(subject.Digest.Algorithm + "-" + subject.Digest.Hex)
		got, err := remote.Get(tag)
		if api {
			if err == nil {
				t.Fatalf("a tag index %s on a registry with the referrers API", tag)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		im, err := v1.ParseIndexManifest(bytes.NewReader(got.Manifest))
		if err != nil {
			t.Fatal(err)
		}
		want := map[v1.Hash][]byte{idxDesc.Digest: idxRaw, oldDesc.Digest: nil, newDesc.Digest: newRaw}
		if len(im.Manifests) != len(want) {
			t.Fatalf("tag index lists %d artifacts, want %d", len(im.Manifests), len(want))
		}
		for _, d := range im.Manifests {
			w, ok := want[d.Digest]
			if !ok || !bytes.Equal(d.Data, w) {
				t.Errorf("artifact %s (%s): embedded %d bytes, want %d", d.Digest, d.ArtifactType, len(d.Data), len(w))
			}
		}
	}
}

// pushSubject pushes a random image to reg, the subject artifacts refer to, and returns its
// repository and descriptor.
func pushSubject(t *testing.T, reg *testutil.Registry) (name.Repository, *v1.Descriptor) {
	t.Helper()
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
	return ref.Context(), subject
}
