package cli

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/transfer"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"lazypull/format"
	"lazypull/internal/fetch"
	"lazypull/internal/warm"
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

// warmTimeout bounds a warm request: the snapshotter answers once it has checked it.
const warmTimeout = 5 * time.Second

// warmer hands the snapshotter each image manifest with lazypull layers that the pull
// gets (warm.Request), once each, in the background: the pull never waits for the
// snapshotter, and one that does not answer costs it nothing but a debug line.
type warmer struct {
	log     *slog.Logger
	ref     string
	addr    string
	content content.Provider
	client  *warm.Client // nil: none could be made
	profile string       // the profile pinned (pull --profile), "" for none

	mu   sync.Mutex
	sent map[digest.Digest]bool
	wg   sync.WaitGroup
}

func newWarmer(log *slog.Logger, ref, addr string, cs content.Provider) *warmer {
	w := &warmer{log: log, ref: ref, addr: addr, content: cs, sent: map[digest.Digest]bool{}}
	c, err := warm.NewClient(addr)
	if err != nil {
		log.Debug("no warm requests", "err", err)
		return w
	}
	w.client = c
	return w
}

// hint tells the snapshotter that the pull of w.ref starts (warm.Request.IsHint), so that
// it connects to the registry while the pull fetches the manifest.
func (w *warmer) hint(ctx context.Context) {
	if w.client == nil {
		return
	}
	w.wg.Go(func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), warmTimeout)
		defer cancel()
		if err := w.client.Send(ctx, warm.Request{Ref: w.ref}); err != nil {
			w.log.Debug("the snapshotter took no hint", "snapshotter", w.addr, "err", err)
		}
	})
}

// first reports whether d is not marked sent yet, and marks it.
func (w *warmer) first(d digest.Digest) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.sent[d] {
		return false
	}
	w.sent[d] = true
	return true
}

func (w *warmer) was(d digest.Digest) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sent[d]
}

// manifest sends the image manifest desc, whose bytes are raw (parsed: m, or nil to parse
// them here), unless it was sent already or has no lazypull layer (the snapshotter has
// nothing to open then).
func (w *warmer) manifest(ctx context.Context, desc ocispec.Descriptor, raw []byte, m *v1.Manifest) {
	if w.client == nil || !w.first(desc.Digest) {
		return
	}
	if m == nil {
		var err error
		if m, err = v1.ParseManifest(bytes.NewReader(raw)); err != nil {
			return
		}
	}
	if !slices.ContainsFunc(m.Layers, func(l v1.Descriptor) bool { return format.IsLayer(l.Annotations) }) {
		return
	}
	w.wg.Go(func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), warmTimeout)
		defer cancel()
		err := w.client.Send(ctx, warm.Request{Ref: w.ref, Digest: desc.Digest.String(), MediaType: desc.MediaType, Manifest: raw, Profile: w.profile})
		switch {
		case err == nil:
			w.log.Debug("the snapshotter opens the image early", "manifest", desc.Digest, "snapshotter", w.addr)
		case errors.Is(err, warm.ErrUnavailable):
			w.log.Debug("no snapshotter took the manifest early; it fetches it at the first layer", "snapshotter", w.addr, "err", err)
		default:
			w.log.Info("the snapshotter refused the manifest; it fetches it at the first layer", "err", err)
		}
	})
}

// handler sends each image manifest containerd handles with lazypull layers in it (the
// platform's, picked from an index) as soon as containerd has it, before the config.
// cached gives the bytes of a manifest the pull has in memory, else they are read from
// containerd's content store, where h has just written them.
func (w *warmer) handler(cached func(ocispec.Descriptor) []byte, h images.Handler) images.Handler {
	return images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		children, err := h.Handle(ctx, desc)
		if err != nil || w.client == nil || !images.IsManifestType(desc.MediaType) || w.was(desc.Digest) {
			return children, err
		}
		if !slices.ContainsFunc(children, func(c ocispec.Descriptor) bool {
			return images.IsLayerType(c.MediaType) && format.IsLayer(c.Annotations)
		}) {
			return children, nil
		}
		raw := cached(desc)
		if raw == nil {
			if raw, err = content.ReadBlob(ctx, w.content, desc); err != nil {
				w.log.Debug("no warm request: cannot read the manifest back", "manifest", desc.Digest, "err", err)
				return children, nil
			}
		}
		w.manifest(ctx, desc, raw, nil)
		return children, nil
	})
}

// wait waits for the requests sent, and closes the connection.
func (w *warmer) wait() {
	w.wg.Wait()
	if w.client != nil {
		w.client.Close()
	}
}
