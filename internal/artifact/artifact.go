// Package artifact builds and pushes OCI 1.1 artifacts that refer to an image manifest,
// their subject: an unconverted image's layer indexes (imageindex) and an image's
// prefetch profiles (profile). Clients find them through the referrers API, or its tag
// schema on a registry without it.
package artifact

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
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
