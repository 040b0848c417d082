package pull

import (
	"bytes"
	"context"
	"io"
	"log/slog"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/transfer"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"lazypull/internal/fetch"
)

// pinnedResolver is the resolver `lazypull pull` hands containerd. It answers Resolve for
// ref from the manifest the pull fetched itself (fetch.Registry.FetchManifest: one GET, where
// containerd's resolver sends a HEAD and then a GET), without a request, and serves that
// manifest or index from memory. Everything else (a platform's manifest picked from the
// index, the config, layers that are not lazy) goes to next, containerd's docker resolver.
type pinnedResolver struct {
	next remotes.Resolver
	ref  string
	desc ocispec.Descriptor
	raw  []byte
	// config is the image config, fetched as soon as the manifest was or taken from it
	// (fetchEarly); nil when the pull fetched none (an index: containerd picks the platform).
	config *earlyBlob
}

// maxEarlyBlob bounds a config fetched early: configs are kilobytes; one this large is
// left to containerd's own fetch.
const maxEarlyBlob = 4 << 20

// earlyBlob is a blob the pull fetches before containerd asks for it.
type earlyBlob struct {
	desc v1.Descriptor
	done chan struct{}
	b    []byte
	err  error
}

// fetchEarly starts fetching the blob d describes (checked against its digest). A blob the
// manifest embeds (d.Data, OCI image-spec 1.1, as lazypull convert writes configs) is there
// at once, without a request, when it checks out; embedded bytes that do not are ignored
// and the blob fetched as if there were none (dropBadData warns of them once containerd
// handles the manifest).
func fetchEarly(ctx context.Context, reg *fetch.Registry, d v1.Descriptor) *earlyBlob {
	if d.Data != nil && isBlob(d.Data, d.Size, d.Digest.String()) {
		e := &earlyBlob{desc: d, done: make(chan struct{}), b: d.Data}
		close(e.done)
		return e
	}
	if d.Size < 0 || d.Size > maxEarlyBlob {
		return nil
	}
	e := &earlyBlob{desc: d, done: make(chan struct{})}
	go func() {
		defer close(e.done)
		e.b, e.err = reg.Blob(d.Digest, d.Size).ReadAll(ctx)
	}()
	return e
}

// get returns the blob's bytes if desc is that blob and its fetch went well, else nil.
func (e *earlyBlob) get(ctx context.Context, desc ocispec.Descriptor) []byte {
	if e == nil || desc.Digest.String() != e.desc.Digest.String() || desc.Size != e.desc.Size {
		return nil
	}
	select {
	case <-e.done:
	case <-ctx.Done():
		return nil
	}
	if e.err != nil {
		return nil // containerd fetches it itself, and reports what goes wrong
	}
	return e.b
}

// isBlob reports whether data is the blob of that size and digest: a descriptor's data
// field is to be used only when it is (image-spec 1.1 has readers check).
func isBlob(data []byte, size int64, dgst string) bool {
	d, err := digest.Parse(dgst)
	return err == nil && int64(len(data)) == size && d.Algorithm().Available() && d.Algorithm().FromBytes(data) == d
}

// dropBadData wraps containerd's pull handler h: a child descriptor whose data field is not
// the blob it describes loses the field, with a warning, and containerd fetches the blob as
// if the manifest embedded nothing. containerd takes data for the blob whenever its length
// is the size, unchecked until the content store's commit, which then fails the pull.
func dropBadData(log *slog.Logger, ref string, h images.Handler) images.Handler {
	return images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		children, err := h.Handle(ctx, desc)
		for i, c := range children {
			if c.Data == nil || isBlob(c.Data, c.Size, c.Digest.String()) {
				continue
			}
			kind := "blob"
			if images.IsConfigType(c.MediaType) {
				kind = "config"
			}
			log.Warn("the manifest embeds data that is not the blob it describes; ignoring it and fetching the blob",
				"image", ref, "manifest", desc.Digest, kind, c.Digest, "size", c.Size, "dataSize", len(c.Data))
			children[i].Data = nil
		}
		return children, err
	})
}

var _ remotes.ResolverWithOptions = (*pinnedResolver)(nil)

func (r *pinnedResolver) Resolve(ctx context.Context, ref string) (string, ocispec.Descriptor, error) {
	if ref == r.ref {
		return ref, r.desc, nil
	}
	return r.next.Resolve(ctx, ref)
}

func (r *pinnedResolver) Fetcher(ctx context.Context, ref string) (remotes.Fetcher, error) {
	f, err := r.next.Fetcher(ctx, ref)
	if err != nil || ref != r.ref {
		return f, err
	}
	return &pinnedFetcher{next: f, r: r}, nil
}

func (r *pinnedResolver) Pusher(ctx context.Context, ref string) (remotes.Pusher, error) {
	return r.next.Pusher(ctx, ref)
}

// SetOptions passes containerd's download settings on to next.
func (r *pinnedResolver) SetOptions(opts ...transfer.ImageResolverOption) {
	if n, ok := r.next.(remotes.ResolverWithOptions); ok {
		n.SetOptions(opts...)
	}
}

// cached returns the bytes of desc if they are the pinned manifest's, else nil.
func (r *pinnedResolver) cached(desc ocispec.Descriptor) []byte {
	if desc.Digest == r.desc.Digest && desc.Size == int64(len(r.raw)) {
		return r.raw
	}
	return nil
}

type pinnedFetcher struct {
	next remotes.Fetcher
	r    *pinnedResolver
}

func (f *pinnedFetcher) Fetch(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	if raw := f.r.cached(desc); raw != nil {
		return io.NopCloser(bytes.NewReader(raw)), nil
	}
	if b := f.r.config.get(ctx, desc); b != nil {
		return io.NopCloser(bytes.NewReader(b)), nil
	}
	return f.next.Fetch(ctx, desc)
}
