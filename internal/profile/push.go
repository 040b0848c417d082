package profile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/internal/jsonlimit"
)

// emptyConfig is the config of a profile artifact, which has nothing to say there. Its
// media type is ArtifactType rather than the OCI empty descriptor's, see ArtifactType.
var emptyConfig = []byte("{}")

// AnnotationCreated is the annotation of a profile's manifest saying when it was recorded.
const AnnotationCreated = "org.opencontainers.image.created"

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
	ch, cn, err := v1.SHA256(bytes.NewReader(emptyConfig))
	if err != nil {
		return nil, err
	}
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  ArtifactType,
		Config:        v1.Descriptor{MediaType: ArtifactType, Digest: ch, Size: cn},
		Layers:        []v1.Descriptor{{MediaType: MediaType, Digest: dh, Size: dn}},
		// Only what the referrers API and the tag schema need of the subject.
		Subject: &v1.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size},
		// Copied into the referrers list, so that a mount picks the newest profile
		// without fetching each.
		Annotations: map[string]string{AnnotationCreated: created.UTC().Format(time.RFC3339)},
	}
	if len(doc) <= MaxEmbedded {
		m.Layers[0].Data = doc
	}
	if pack != nil {
		m.Layers = append(m.Layers, v1.Descriptor{MediaType: PackMediaType, Digest: pack.Digest, Size: pack.Size})
	}
	return json.Marshal(m)
}

// Push uploads the profile document doc, and its pack when not nil (see PackWriter), as an
// artifact referring to the image manifest subject, in repository repo, and returns the
// artifact manifest's descriptor. The manifest
// is put by digest; go-containerregistry then adds it to the referrers tag schema's index
// when the registry has no referrers API (docker-registry 2.8), and leaves the index to the
// registry when it has.
func Push(repo name.Repository, subject v1.Descriptor, doc, pack []byte, opts ...remote.Option) (v1.Descriptor, error) {
	p, err := Parse(doc)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("push profile: %w", err)
	}
	type blob struct {
		data []byte
		mt   types.MediaType
	}
	blobs := []blob{{emptyConfig, ArtifactType}, {doc, MediaType}}
	var packDesc *v1.Descriptor
	if pack != nil {
		h, n, err := v1.SHA256(bytes.NewReader(pack))
		if err != nil {
			return v1.Descriptor{}, err
		}
		packDesc = &v1.Descriptor{Digest: h, Size: n}
		blobs = append(blobs, blob{pack, PackMediaType})
	}
	for _, b := range blobs {
		if err := remote.WriteLayer(repo, static.NewLayer(b.data, b.mt), opts...); err != nil {
			return v1.Descriptor{}, fmt.Errorf("push profile to %s: upload %s blob: %w", repo, b.mt, err)
		}
	}
	raw, err := Manifest(subject, doc, packDesc, p.Created)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("push profile: %w", err)
	}
	h, n, err := v1.SHA256(bytes.NewReader(raw))
	if err != nil {
		return v1.Descriptor{}, err
	}
	if err := remote.Put(repo.Digest(h.String()), rawManifest(raw), opts...); err != nil {
		return v1.Descriptor{}, fmt.Errorf("push profile to %s: put manifest %s: %w", repo, h, err)
	}
	desc := v1.Descriptor{MediaType: types.OCIManifestSchema1, ArtifactType: ArtifactType, Digest: h, Size: n,
		Annotations: map[string]string{AnnotationCreated: p.Created.UTC().Format(time.RFC3339)}}
	if err := embedInTagIndex(repo, subject.Digest, desc, raw, opts...); err != nil {
		// The profile is pushed and found all the same; a mount only reads its manifest
		// in a round trip of its own.
		slog.Warn("profile pushed, but not embedded in the referrers tag index", "repo", repo.String(), "profile", h, "err", err)
	}
	return desc, nil
}

// MaxEmbeddedManifest is the largest profile manifest embedInTagIndex puts in the referrers
// tag index (base64 in its descriptor's data field): a manifest embedding a document of
// MaxEmbedded bytes fits.
const MaxEmbeddedManifest = 32 << 10

// embedInTagIndex puts the profile manifest raw, described by desc, into its descriptor in
// the referrers tag schema's index of subject (which remote.Put has just written, on a
// registry without the referrers API), as its data field. The look-up then reads the
// profile, document included, with the index: one round trip, where it took two. Only the
// newest profile carries its manifest, so the index does not grow with every recording.
// On a registry with the referrers API there is no tag index and nothing to do: the API's
// list is the registry's to make.
func embedInTagIndex(repo name.Repository, subject v1.Hash, desc v1.Descriptor, raw []byte, opts ...remote.Option) error {
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
		d.Data = nil
		if d.Digest == desc.Digest {
			d.Data, found = raw, true
		}
	}
	if !found {
		return fmt.Errorf("%s does not list the profile %s", tag, desc.Digest)
	}
	b, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	if err := remote.Put(tag, rawIndex(b), opts...); err != nil {
		return fmt.Errorf("put %s: %w", tag, err)
	}
	return nil
}

// rawManifest is a manifest's bytes as remote.Put takes them.
type rawManifest []byte

func (m rawManifest) RawManifest() ([]byte, error)        { return m, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

// rawIndex is an image index's bytes as remote.Put takes them.
type rawIndex []byte

func (m rawIndex) RawManifest() ([]byte, error)        { return m, nil }
func (m rawIndex) MediaType() (types.MediaType, error) { return types.OCIImageIndex, nil }
