package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/internal/fetch"
)

// maxWarmManifest bounds the manifest a warm request carries: containerd's limit, and
// fetch's, for any manifest.
const maxWarmManifest = 4 << 20

// ErrWarmRefused: a warm request was refused; nothing was opened.
var ErrWarmRefused = errors.New("warm request refused")

// Warm starts opening, in the background, the image whose manifest a pull has just
// fetched, so that its layer indexes, profile look-up and prefetch are under way while
// containerd still fetches the config and before it prepares the first layer. ref is the
// reference the pull labels the layers with (LabelImageRef), digest the image manifest's,
// manifest its bytes, and mediaType the media type containerd has for it, used when the
// manifest names none. The image is opened as the first Prepare of one of its layers
// would open it, under the same key, without fetching the manifest again: the Prepares
// then join it. Only an image manifest whose bytes match digest is taken, never an index:
// the pull sends the manifest of the platform containerd unpacks, and the snapshotter does
// not pick another. Warm returns once the request is checked; a failure of the open (also
// one that opens no layer at all) is logged here, once, and forgotten: the layers'
// Prepares then open the image themselves, and warn if that fails too. profile is the
// profile the pull pinned (LabelProfile), "" for none.
func (f *SnapshotFS) Warm(ctx context.Context, ref, digest, mediaType string, manifest []byte, profile string) error {
	_, err := f.warm(ctx, ref, digest, mediaType, manifest, profile)
	return err
}

// predialConns is how many connections Connect has dialed: the look-up's two requests
// (the referrers API and the tag schema) go out together, and then an unconverted image's
// index blobs and config, which would each wait a round trip for a connection of its
// own (python with a profile: its prefetch left 25 ms sooner with 4 than with 2).
const predialConns = 4

// Connect has connections to ref's registry dialed ahead (fetch.Client.Predial): a pull of ref is
// starting, and its manifest's warm request follows once the pull has it. The look-up
// that request starts then finds them open, instead of paying a round trip to set each up.
func (f *SnapshotFS) Connect(ref string) error {
	if err := f.client.Predial(ref, predialConns); err != nil {
		return fmt.Errorf("%w: %w", ErrWarmRefused, err)
	}
	return nil
}

// warm is Warm, returning the image's entry: a failed open forgets it at once, so a
// look-up in f.images after Warm may no longer find it.
func (f *SnapshotFS) warm(ctx context.Context, ref, digest, mediaType string, manifest []byte, profile string) (*imageEntry, error) {
	key, img, err := warmImage(ref, digest, mediaType, manifest)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrWarmRefused, err)
	}
	var pin v1.Hash
	if profile != "" {
		if pin, err = ParseProfileDigest(profile); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrWarmRefused, err)
		}
	}
	e, first := f.entry(key, pin, true)
	if !first {
		f.log.Debug("warm request for an image open, opening or failed already", "image", key)
		return e, nil
	}
	go func() {
		f.open(context.WithoutCancel(ctx), e, key, img)
		if e.err != nil {
			// Info: the Prepares' own open warns if it fails too.
			f.log.Info("warm open failed; the layers' Prepares open the image themselves", "image", key, "err", e.err)
		}
	}()
	return e, nil
}

// warmImage checks a warm request and returns the key the image is known by (imageKey)
// and its manifest as openImage takes it.
func warmImage(ref, digest, mediaType string, raw []byte) (string, *fetch.Image, error) {
	if len(raw) > maxWarmManifest {
		return "", nil, fmt.Errorf("manifest %s of %d bytes, more than %d", digest, len(raw), maxWarmManifest)
	}
	h, err := v1.NewHash(digest)
	if err != nil || h.Algorithm != "sha256" {
		return "", nil, fmt.Errorf("manifest digest %q: want sha256:<64 hex digits>", digest)
	}
	sum := sha256.Sum256(raw)
	if got := hex.EncodeToString(sum[:]); got != h.Hex {
		return "", nil, fmt.Errorf("manifest of %d bytes has digest sha256:%s, the request says %s", len(raw), got, digest)
	}
	key, err := imageKey(ref, digest)
	if err != nil {
		return "", nil, fmt.Errorf("image reference %q: %w", ref, err)
	}
	r, err := name.NewDigest(key)
	if err != nil {
		return "", nil, fmt.Errorf("image %s: %w", key, err)
	}
	img, err := manifestImage(r.Context().RegistryStr()+"/"+r.Context().RepositoryStr(), raw, h, types.MediaType(mediaType))
	if err != nil {
		return "", nil, fmt.Errorf("%w: send the manifest of the platform containerd unpacks", err)
	}
	return key, img, nil
}
