package imageindex

import (
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"lazypull/internal/artifact"
)

const (
	// ArtifactType is the artifactType of an index artifact's manifest, what referrers
	// are filtered by; its config, "{}", has this media type too.
	ArtifactType = "application/vnd.lazypull.index.v1"
	// LayerMediaType is the media type of an artifact layer: one image layer's index
	// (Layer.Encode).
	LayerMediaType = "application/vnd.lazypull.index.layer.v1"
	// WindowsMediaType is the media type of a compressed layer's window blob, an artifact
	// layer after the index blobs: the checkpoints' windows (format/gzindex,
	// format/zstdindex), read by range
	// when a read starts a span whose preceding output the reader does not hold.
	WindowsMediaType = "application/vnd.lazypull.index.windows.v1"
	// AnnotationLayer, on an artifact layer's descriptor, names the image layer it
	// indexes (or holds the windows of) by digest.
	AnnotationLayer = "dev.lazypull.index.layer.digest"
	// AnnotationDiffID, on an artifact layer's descriptor, is the digest of the image
	// layer's uncompressed tar stream that the index was built from: the diff ID the image
	// config gives the layer, which a reader checks before it uses the index (containerd
	// names the layer's snapshot by the chain of diff IDs).
	AnnotationDiffID = "dev.lazypull.index.layer.diff-id"
	// AnnotationCreated says when the artifact was built.
	AnnotationCreated = artifact.AnnotationCreated
)

// Manifest returns the artifact manifest for the image manifest subject, whose layers
// are the descriptors of the uploaded layer blobs, in image layer order.
func Manifest(subject v1.Descriptor, layers []v1.Descriptor, created time.Time) ([]byte, error) {
	return artifact.Manifest(ArtifactType, subject, layers, created)
}

// pushManifest uploads the artifact manifest over the uploaded layers (artifact.PushManifest)
// and embeds it in the referrers tag index, where the registry keeps one
// (artifact.EmbedInTagIndex): a node opening the image then reads it with the referrers,
// a round trip fewer before the layer indexes. embedErr is that step's failure, which
// leaves the artifact pushed and found all the same.
func pushManifest(repo name.Repository, subject v1.Descriptor, layers []v1.Descriptor, created time.Time, opts []remote.Option) (desc v1.Descriptor, embedErr, err error) {
	raw, err := Manifest(subject, layers, created)
	if err != nil {
		return v1.Descriptor{}, nil, err
	}
	if desc, err = artifact.PushManifest(repo, ArtifactType, raw, opts...); err != nil {
		return v1.Descriptor{}, nil, err
	}
	return desc, artifact.EmbedInTagIndex(repo, subject.Digest, desc, raw, opts...), nil
}
