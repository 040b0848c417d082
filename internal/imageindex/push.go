package imageindex

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	// ArtifactType is the artifactType of an index artifact's manifest, what referrers
	// are filtered by; its config, "{}", has this media type too.
	ArtifactType = "application/vnd.lazypull.index.v1"
	// LayerMediaType is the media type of an artifact layer: one image layer's index
	// (Layer.Encode).
	LayerMediaType = "application/vnd.lazypull.index.layer.v1"
	// AnnotationLayer, on an artifact layer's descriptor, names the image layer it
	// indexes by digest.
	AnnotationLayer = "dev.lazypull.index.layer.digest"
	// AnnotationCreated says when the artifact was built.
	AnnotationCreated = "org.opencontainers.image.created"
)

var emptyConfig = []byte("{}")

// Manifest returns the artifact manifest for the image manifest subject, whose layers
// are the descriptors of the uploaded layer blobs, in image layer order.
func Manifest(subject v1.Descriptor, layers []v1.Descriptor, created time.Time) ([]byte, error) {
	ch, cn, err := v1.SHA256(bytes.NewReader(emptyConfig))
	if err != nil {
		return nil, err
	}
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  ArtifactType,
		Config:        v1.Descriptor{MediaType: ArtifactType, Digest: ch, Size: cn},
		Layers:        layers,
		Subject:       &v1.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size},
		Annotations:   map[string]string{AnnotationCreated: created.UTC().Format(time.RFC3339)},
	}
	return json.Marshal(m)
}

// pushBlob uploads one blob of media type mt to repo and returns its descriptor.
func pushBlob(repo name.Repository, data []byte, mt types.MediaType, opts []remote.Option) (v1.Descriptor, error) {
	h, n, err := v1.SHA256(bytes.NewReader(data))
	if err != nil {
		return v1.Descriptor{}, err
	}
	if err := remote.WriteLayer(repo, static.NewLayer(data, mt), opts...); err != nil {
		return v1.Descriptor{}, fmt.Errorf("push to %s: upload %s blob %s: %w", repo, mt, h, err)
	}
	return v1.Descriptor{MediaType: mt, Digest: h, Size: n}, nil
}

// pushManifest uploads the config and the artifact manifest over the uploaded layers,
// by digest: go-containerregistry adds it to the referrers tag schema's index when the
// registry has no referrers API, and leaves the list to the registry when it has.
func pushManifest(repo name.Repository, subject v1.Descriptor, layers []v1.Descriptor, created time.Time, opts []remote.Option) (v1.Descriptor, error) {
	if _, err := pushBlob(repo, emptyConfig, ArtifactType, opts); err != nil {
		return v1.Descriptor{}, err
	}
	raw, err := Manifest(subject, layers, created)
	if err != nil {
		return v1.Descriptor{}, err
	}
	h, n, err := v1.SHA256(bytes.NewReader(raw))
	if err != nil {
		return v1.Descriptor{}, err
	}
	if err := remote.Put(repo.Digest(h.String()), rawManifest(raw), opts...); err != nil {
		return v1.Descriptor{}, fmt.Errorf("push to %s: put manifest %s: %w", repo, h, err)
	}
	return v1.Descriptor{MediaType: types.OCIManifestSchema1, ArtifactType: ArtifactType, Digest: h, Size: n}, nil
}

// rawManifest is a manifest's bytes as remote.Put takes them.
type rawManifest []byte

func (m rawManifest) RawManifest() ([]byte, error)        { return m, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }
