// Package artifact builds and pushes OCI 1.1 artifacts that refer to an image manifest,
// their subject: an unconverted image's layer indexes (imageindex) and an image's
// prefetch profiles (profile). Clients find them through the referrers API, or its tag
// schema on a registry without it.
package artifact

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/internal/jsonlimit"
)

// AnnotationCreated says when an artifact was made. It is copied into the referrers list,
// so that a client picks the newest artifact without fetching each.
const AnnotationCreated = "org.opencontainers.image.created"

// emptyConfig is an artifact's config, which has nothing to say. Its media type is the
// artifact type rather than the OCI empty descriptor's: registries that drop artifactType
// from the referrers list still show the type there.
var emptyConfig = []byte("{}")

// Manifest returns the manifest of an artifact of type artifactType whose layers are
// layers, referring to the image manifest subject, made at created.
func Manifest(artifactType string, subject v1.Descriptor, layers []v1.Descriptor, created time.Time) ([]byte, error) {
	ch, cn, err := v1.SHA256(bytes.NewReader(emptyConfig))
	if err != nil {
		return nil, err
	}
	return json.Marshal(v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  artifactType,
		Config:        v1.Descriptor{MediaType: types.MediaType(artifactType), Digest: ch, Size: cn},
		Layers:        layers,
		// Only what the referrers API and the tag schema need of the subject.
		Subject:     &v1.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size},
		Annotations: map[string]string{AnnotationCreated: created.UTC().Format(time.RFC3339)},
	})
}

// PushBlob uploads one blob of media type mt to repo and returns its descriptor.
func PushBlob(repo name.Repository, data []byte, mt types.MediaType, opts ...remote.Option) (v1.Descriptor, error) {
	h, n, err := v1.SHA256(bytes.NewReader(data))
	if err != nil {
		return v1.Descriptor{}, err
	}
	if err := remote.WriteLayer(repo, static.NewLayer(data, mt), opts...); err != nil {
		return v1.Descriptor{}, fmt.Errorf("push to %s: upload %s blob %s: %w", repo, mt, h, err)
	}
	return v1.Descriptor{MediaType: mt, Digest: h, Size: n}, nil
}

// PushFile uploads the file f, of digest h and size n, as one blob of media type mt to
// repo, streamed from the file, and returns its descriptor.
func PushFile(repo name.Repository, f *os.File, h v1.Hash, n int64, mt types.MediaType, opts ...remote.Option) (v1.Descriptor, error) {
	l, err := partial.CompressedToLayer(fileBlob{f, h, n, mt})
	if err != nil {
		return v1.Descriptor{}, err
	}
	if err := remote.WriteLayer(repo, l, opts...); err != nil {
		return v1.Descriptor{}, fmt.Errorf("push to %s: upload %s blob %s: %w", repo, mt, h, err)
	}
	return v1.Descriptor{MediaType: mt, Digest: h, Size: n}, nil
}

// fileBlob is a file as a partial.CompressedLayer: its bytes are the blob.
type fileBlob struct {
	f  *os.File
	h  v1.Hash
	n  int64
	mt types.MediaType
}

func (b fileBlob) Digest() (v1.Hash, error)            { return b.h, nil }
func (b fileBlob) Size() (int64, error)                { return b.n, nil }
func (b fileBlob) MediaType() (types.MediaType, error) { return b.mt, nil }
func (b fileBlob) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(io.NewSectionReader(b.f, 0, b.n)), nil
}

// PushManifest uploads the config and the manifest raw (from Manifest) of an artifact of
// type artifactType, whose layers are in repo already, and returns the manifest's
// descriptor. The manifest is put by digest: go-containerregistry adds it to the referrers
// tag schema's index when the registry has no referrers API, and leaves the list to the
// registry when it has.
func PushManifest(repo name.Repository, artifactType string, raw []byte, opts ...remote.Option) (v1.Descriptor, error) {
	if _, err := PushBlob(repo, emptyConfig, types.MediaType(artifactType), opts...); err != nil {
		return v1.Descriptor{}, err
	}
	h, n, err := v1.SHA256(bytes.NewReader(raw))
	if err != nil {
		return v1.Descriptor{}, err
	}
	if err := remote.Put(repo.Digest(h.String()), Raw{raw, types.OCIManifestSchema1}, opts...); err != nil {
		return v1.Descriptor{}, fmt.Errorf("push to %s: put manifest %s: %w", repo, h, err)
	}
	return v1.Descriptor{MediaType: types.OCIManifestSchema1, ArtifactType: artifactType, Digest: h, Size: n}, nil
}

// Raw is a manifest's or an index's bytes and media type, as remote.Put takes them.
type Raw struct {
	Bytes []byte
	Type  types.MediaType
}

// RawManifest returns the bytes.
func (r Raw) RawManifest() ([]byte, error) { return r.Bytes, nil }

// MediaType returns the media type.
func (r Raw) MediaType() (types.MediaType, error) { return r.Type, nil }

// MaxEmbeddedManifest is the largest artifact manifest EmbedInTagIndex puts in the
// referrers tag index (base64 in its descriptor's data field): a profile manifest embedding
// a document of profile.MaxEmbedded bytes fits, and an index artifact's of a few dozen
// layers.
const MaxEmbeddedManifest = 32 << 10

// EmbedInTagIndex puts the artifact manifest raw, described by desc (which names its
// artifactType), into its descriptor in the referrers tag schema's index of subject
// (which PushManifest has just written, on a registry without the referrers API), as its
// data field. A look-up then reads the artifact's manifest with the index: one round trip,
// where it took two. Only the newest artifact of each type carries its manifest, so the
// index does not grow with every recording, and a profile pushed after an index artifact
// (or the other way round) leaves the other's embedded. On a registry with the referrers
// API there is no tag index and nothing to do: the API's list is the registry's to make.
// A manifest over MaxEmbeddedManifest bytes is not embedded.
func EmbedInTagIndex(repo name.Repository, subject v1.Hash, desc v1.Descriptor, raw []byte, opts ...remote.Option) error {
	if len(raw) > MaxEmbeddedManifest {
		return nil
	}
	tag := repo.Tag(subject.Algorithm + "-" + subject.Hex)
	got, err := remote.Get(tag, opts...)
	if err != nil {
		var te *transport.Error
		if errors.As(err, &te) && te.StatusCode == http.StatusNotFound {
			return nil // the registry has the referrers API
		}
		return fmt.Errorf("read %s: %w", tag, err)
	}
	if err := jsonlimit.Check(got.Manifest, "read "+tag.String()); err != nil {
		return err
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(got.Manifest))
	if err != nil {
		return fmt.Errorf("read %s: %w", tag, err)
	}
	found := false
	for i := range idx.Manifests {
		d := &idx.Manifests[i]
		if d.ArtifactType == desc.ArtifactType {
			d.Data = nil
		}
		if d.Digest == desc.Digest {
			d.Data, found = raw, true
		}
	}
	if !found {
		return fmt.Errorf("%s does not list the artifact %s", tag, desc.Digest)
	}
	b, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	if err := remote.Put(tag, Raw{Bytes: b, Type: types.OCIImageIndex}, opts...); err != nil {
		return fmt.Errorf("put %s: %w", tag, err)
	}
	return nil
}
