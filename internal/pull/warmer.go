package pull

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"lazypull/internal/warm"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// warmTimeout bounds a warm request: the snapshotter answers once it has checked it.
const warmTimeout = 5 * time.Second

// warmer hands the snapshotter each image manifest that the pull gets (warm.Request),
// once each, in the background: the pull never waits for the snapshotter, and one that
// does not answer costs it nothing but a debug line. A manifest without lazypull layers
// goes too: the snapshotter looks for its index artifact (an unconverted image served
// lazily) while containerd fetches the config, as it would at the first Prepare, a round
// trip later.
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
// them here), unless it was sent already or has no layer (the snapshotter has nothing to
// open then).
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
	if len(m.Layers) == 0 {
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

// handler sends each image manifest containerd handles (the platform's, picked from an
// index) as soon as containerd has it, before the config.
// cached gives the bytes of a manifest the pull has in memory, else they are read from
// containerd's content store, where h has just written them.
func (w *warmer) handler(cached func(ocispec.Descriptor) []byte, h images.Handler) images.Handler {
	return images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		children, err := h.Handle(ctx, desc)
		if err != nil || w.client == nil || !images.IsManifestType(desc.MediaType) || w.was(desc.Digest) {
			return children, err
		}
		if !slices.ContainsFunc(children, func(c ocispec.Descriptor) bool { return images.IsLayerType(c.MediaType) }) {
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
