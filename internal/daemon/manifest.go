package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/format"
	"lazypull/internal/fetch"
	"lazypull/internal/jsonlimit"
	"lazypull/internal/store"
)

// An image's manifest: where an open gets it (resolve), how it is kept in the store for
// the next open without the registry (keepManifest, keepMeta), and how a manifest is read
// (manifestImage).

// resolve returns the image manifest ref names. A reference by digest to an image manifest
// the store keeps is answered from the store, without the registry: that is what lets a
// restarted snapshotter mount its layers again while the registry is unreachable. fetched
// says it came from the registry; the caller keeps it for next time (keepManifest).
func resolve(ctx context.Context, st *store.Store, reg *fetch.Registry, ref string, platform *v1.Platform) (img *fetch.Image, fetched bool, err error) {
	if r, err := name.NewDigest(ref); err == nil {
		if d, err := format.ParseDigest(r.DigestStr()); err == nil {
			if raw, err := st.Meta(d); err == nil {
				if img, err := cachedImage(reg, raw, d); err == nil {
					return img, false, nil
				}
			}
		}
	}
	img, err = reg.Resolve(ctx, "", platform)
	if err != nil {
		return nil, false, err
	}
	return img, true, nil
}

// keepManifest stores img's manifest for resolve, in the background (keepMeta).
func keepManifest(st *store.Store, log *slog.Logger, img *fetch.Image, ref string) (wait func()) {
	return keepMeta(st, log, img.RawManifest, "cannot keep the image manifest in the store; the image will need its registry to be mounted again", "image", ref)
}

// keepMeta stores b in st's metadata in the background: its fsyncs overlap the other
// index reads, the profile look-up and the prefetch instead of delaying them. wait returns
// once it is stored (or could not be: then warn is logged with the attributes). Wait
// before the image is mounted (waitKept), so that a mounted image can always be mounted
// again without its registry.
func keepMeta(st *store.Store, log *slog.Logger, b []byte, warn string, attrs ...any) (wait func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := st.PutMeta(b); err != nil {
			log.Warn(warn, append(attrs, "err", err)...)
		}
	}()
	return func() { <-done }
}

// cachedImage is the image manifest raw, digest d, of the registry's repository.
func cachedImage(reg *fetch.Registry, raw []byte, d format.Digest) (*fetch.Image, error) {
	h := v1.Hash{Algorithm: "sha256", Hex: d.String()[len("sha256:"):]}
	img, err := manifestImage(reg.Host()+"/"+reg.Repository(), raw, h, "")
	if err != nil {
		return nil, fmt.Errorf("kept %w", err)
	}
	return img, nil
}

// manifestImage is the image manifest raw, already checked against its digest h, of the
// repository repo (host/path). mt is the media type it came as, which counts only where the
// manifest names none (OCI makes it optional); the one it names is covered by h. An index,
// or anything else than an image manifest, is refused.
func manifestImage(repo string, raw []byte, h v1.Hash, mt types.MediaType) (*fetch.Image, error) {
	if err := jsonlimit.Check(raw, "manifest "+h.String()); err != nil {
		return nil, err
	}
	var probe struct {
		MediaType types.MediaType `json:"mediaType"`
		Manifests json.RawMessage `json:"manifests"`
	}
	if err := json.Unmarshal(raw, &probe); err != nil {
		return nil, fmt.Errorf("manifest %s is not JSON: %w", h, err)
	}
	if probe.MediaType != "" {
		mt = probe.MediaType
	}
	if !mt.IsImage() || probe.Manifests != nil {
		return nil, fmt.Errorf("manifest %s is a %q, not an image manifest", h, mt)
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", h, err)
	}
	return &fetch.Image{
		Name:        repo + "@" + h.String(),
		Descriptor:  v1.Descriptor{MediaType: mt, Size: int64(len(raw)), Digest: h},
		Manifest:    m,
		RawManifest: raw,
	}, nil
}

// rawConfig returns the bytes of the image's config: embedded in its descriptor, kept in
// st's metadata (st may be nil), or from the registry (fetched true), of at most max bytes,
// checked against its digest either way.
func (im *Image) rawConfig(ctx context.Context, st *store.Store, max int64) (raw []byte, fetched bool, err error) {
	cd := im.Image.Manifest.Config
	if raw, err = embedded(cd); err != nil || raw != nil {
		return raw, false, err
	}
	if cd.Size > max {
		return nil, false, fmt.Errorf("a config of %d bytes, over the %d read", cd.Size, max)
	}
	if d, perr := format.ParseDigest(cd.Digest.String()); perr == nil && st != nil {
		if b, merr := st.Meta(d); merr == nil && int64(len(b)) == cd.Size {
			return b, false, nil
		}
	}
	raw, err = im.Registry.Blob(cd.Digest, cd.Size).ReadAll(ctx)
	return raw, err == nil, err
}
