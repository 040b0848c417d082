package profile

import (
	"bytes"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"lazypull/internal/artifact"
)

// AnnotationCreated is the annotation of a profile's manifest saying when it was recorded.
const AnnotationCreated = artifact.AnnotationCreated

// MaxEmbedded is the largest document Manifest embeds in its layer descriptor's data
// field (OCI 1.1), base64 in the manifest: a mount then reads the profile with the manifest,
// one round trip fewer before the prefetch starts. Larger documents stay a blob only; the
// blob is pushed either way, for clients that ignore data.
const MaxEmbedded = 16 << 10

// Manifest returns the artifact manifest of a profile document doc for the image manifest
// subject: artifactType ArtifactType, an empty config, doc as its first layer (embedded
// too, when at most MaxEmbedded bytes), and the pack, when not nil, as its second.
func Manifest(subject v1.Descriptor, doc []byte, pack *v1.Descriptor, created time.Time) ([]byte, error) {
	dh, dn, err := v1.SHA256(bytes.NewReader(doc))
	if err != nil {
		return nil, err
	}
	layers := []v1.Descriptor{{MediaType: MediaType, Digest: dh, Size: dn}}
	if len(doc) <= MaxEmbedded {
		layers[0].Data = doc
	}
	if pack != nil {
		layers = append(layers, v1.Descriptor{MediaType: PackMediaType, Digest: pack.Digest, Size: pack.Size})
	}
	return artifact.Manifest(ArtifactType, subject, layers, created)
}

// Push uploads the profile document doc, and its pack when not nil (see PackWriter), as an
// artifact referring to the image manifest subject, in repository repo, and returns the
// artifact manifest's descriptor. The manifest
// is put by digest; go-containerregistry then adds it to the referrers tag schema's index
// when the registry has no referrers API (docker-registry 2.8), and leaves the index to the
// registry when it has. A failure to embed the manifest in that index is logged to log (nil:
// nowhere): the profile is pushed and found all the same.
func Push(log *slog.Logger, repo name.Repository, subject v1.Descriptor, doc, pack []byte, opts ...remote.Option) (v1.Descriptor, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p, err := Parse(doc)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("push profile: %w", err)
	}
	var packDesc *v1.Descriptor
	if pack != nil {
		d, err := artifact.PushBlob(repo, pack, PackMediaType, opts...)
		if err != nil {
			return v1.Descriptor{}, fmt.Errorf("push profile: %w", err)
		}
		packDesc = &d
	}
	if _, err := artifact.PushBlob(repo, doc, MediaType, opts...); err != nil {
		return v1.Descriptor{}, fmt.Errorf("push profile: %w", err)
	}
	raw, err := Manifest(subject, doc, packDesc, p.Created)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("push profile: %w", err)
	}
	desc, err := artifact.PushManifest(repo, ArtifactType, raw, opts...)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("push profile: %w", err)
	}
	desc.Annotations = map[string]string{AnnotationCreated: p.Created.UTC().Format(time.RFC3339)}
	if err := artifact.EmbedInTagIndex(repo, subject.Digest, desc, raw, opts...); err != nil {
		// The profile is pushed and found all the same; a mount only reads its manifest
		// in a round trip of its own.
		log.Warn("profile pushed, but not embedded in the referrers tag index", "repo", repo.String(), "profile", desc.Digest, "err", err)
	}
	return desc, nil
}
