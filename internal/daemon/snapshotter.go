package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/format"
	"lazypull/internal/fetch"
	"lazypull/internal/fusefs"
	"lazypull/internal/snapshot"
	"lazypull/internal/store"
)

// Labels the snapshotter reads, as containerd passes them to Prepare: annotations that the
// pull put on a layer descriptor with the prefix "containerd.io/snapshot/".
const (
	LabelPrefix         = "containerd.io/snapshot/"
	LabelImageRef       = LabelPrefix + "lazypull.image-ref"       // the image reference pulled
	LabelManifestDigest = LabelPrefix + "lazypull.manifest-digest" // the image manifest holding the layer
	LabelLayerDigest    = LabelPrefix + "lazypull.layer-digest"
	// The layer's index annotations, under the prefix (LabelPrefix + format.AnnotationIndex*).
	LabelIndexDigest = LabelPrefix + format.AnnotationIndexDigest

	// What containerd's CRI plugin (snapshotters.AppendInfoHandlerWrapper) puts on layers.
	LabelCRIImageRef    = LabelPrefix + "cri.image-ref"
	LabelCRILayerDigest = LabelPrefix + "cri.layer-digest"
)

// SnapshotLabels returns the annotations `lazypull pull` adds to a layer descriptor of the
// image manifest manifestDigest of ref: nothing for a layer that is not a lazypull layer.
func SnapshotLabels(ref, manifestDigest, layerDigest string, annotations map[string]string) map[string]string {
	if !format.IsLayer(annotations) {
		return nil
	}
	out := map[string]string{LabelImageRef: ref, LabelManifestDigest: manifestDigest, LabelLayerDigest: layerDigest}
	for k, v := range annotations {
		if strings.HasPrefix(k, "dev.lazypull.layer.") {
			out[LabelPrefix+k] = v
		}
	}
	return out
}

// ErrNotLazy: the labels do not name a lazypull layer; the snapshotter unpacks it as usual.
var ErrNotLazy = fmt.Errorf("not a lazypull layer: %w", snapshot.ErrNotRemote)

// failedImageTTL is how long a failed image open is remembered: the layers of an image that
// is not a lazypull image are prepared one after another, and each would try again.
const failedImageTTL = 30 * time.Second

// SnapshotFS mounts lazypull layers for the snapshotter: it is its snapshot.FileSystem.
// Images are opened once per reference (manifest and indexes read) and kept open.
type SnapshotFS struct {
	store    *store.Store
	platform *v1.Platform
	fopts    []fetch.Option
	log      *slog.Logger

	mu     sync.Mutex
	images map[string]*imageEntry
	mounts map[string]*fusefs.Server
}

type imageEntry struct {
	done chan struct{}
	im   *Image
	err  error
	at   time.Time
}

var _ snapshot.FileSystem = (*SnapshotFS)(nil)

// NewSnapshotFS returns the snapshotter's file system over st; fopts configure registry access.
func NewSnapshotFS(st *store.Store, platform *v1.Platform, log *slog.Logger, fopts ...fetch.Option) *SnapshotFS {
	return &SnapshotFS{store: st, platform: platform, fopts: fopts, log: log, images: map[string]*imageEntry{}, mounts: map[string]*fusefs.Server{}}
}

// layerOf reads from labels the image reference to open and the layer's digest.
func layerOf(labels map[string]string) (ref, layer string, err error) {
	ref, layer = labels[LabelImageRef], labels[LabelLayerDigest]
	if ref != "" && layer != "" {
		if md := labels[LabelManifestDigest]; md != "" {
			r, err := name.ParseReference(ref)
			if err != nil {
				return "", "", fmt.Errorf("label %s: %w", LabelImageRef, err)
			}
			ref = r.Context().Digest(md).String()
		}
		return ref, layer, nil
	}
	ref, layer = labels[LabelCRIImageRef], labels[LabelCRILayerDigest]
	if ref != "" && layer != "" {
		return ref, layer, nil
	}
	return "", "", ErrNotLazy
}

// image opens ref once; concurrent callers wait for the first.
func (f *SnapshotFS) image(ctx context.Context, ref string) (*Image, error) {
	f.mu.Lock()
	e, ok := f.images[ref]
	if ok {
		select {
		case <-e.done:
			if e.err != nil && time.Since(e.at) > failedImageTTL {
				ok = false
			}
		default:
		}
	}
	if !ok {
		e = &imageEntry{done: make(chan struct{})}
		f.images[ref] = e
		f.mu.Unlock()
		// The image outlives the request that opened it.
		e.im, e.err = OpenImage(context.WithoutCancel(ctx), f.store, ref, f.platform, f.fopts...)
		e.at = time.Now()
		close(e.done)
		if e.err == nil {
			f.log.Info("image opened", "image", e.im)
		}
		return e.im, e.err
	}
	f.mu.Unlock()
	select {
	case <-e.done:
		return e.im, e.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Mount mounts the single-layer view of the layer the labels name at mountpoint.
func (f *SnapshotFS) Mount(ctx context.Context, mountpoint string, labels map[string]string) error {
	ref, digest, err := layerOf(labels)
	if err != nil {
		return err
	}
	im, err := f.image(ctx, ref)
	if err != nil {
		return err
	}
	var layer *Layer
	for _, l := range im.Layers {
		if l.Desc.Digest.String() == digest {
			layer = l
			break
		}
	}
	if layer == nil {
		return fmt.Errorf("image %s has no layer %s", ref, digest)
	}
	root, err := fusefs.NewLayer(layer.Index, layer, fusefs.WithLogger(f.log))
	if err != nil {
		return fmt.Errorf("layer %s: %w", digest, err)
	}
	srv, err := fusefs.Mount(mountpoint, root, fusefs.MountOptions{FSName: "lazypull:" + digest, Logger: f.log})
	if err != nil {
		return fmt.Errorf("mount layer %s at %s: %w", digest, mountpoint, err)
	}
	f.mu.Lock()
	old := f.mounts[mountpoint]
	f.mounts[mountpoint] = srv
	f.mu.Unlock()
	if old != nil {
		_ = old.Unmount()
	}
	f.log.Info("layer mounted", "layer", digest, "image", ref, "dir", mountpoint, "passthrough", srv.Passthrough())
	return nil
}

// Check fails unless this process serves a mount at mountpoint that answers.
func (f *SnapshotFS) Check(ctx context.Context, mountpoint string, labels map[string]string) error {
	f.mu.Lock()
	_, ok := f.mounts[mountpoint]
	f.mu.Unlock()
	if !ok {
		return fmt.Errorf("%s: no lazypull mount", mountpoint)
	}
	if _, err := os.Stat(mountpoint); err != nil {
		return err
	}
	return nil
}

// Unmount ends the mount at mountpoint: this process's, or a stale one.
func (f *SnapshotFS) Unmount(ctx context.Context, mountpoint string) error {
	f.mu.Lock()
	srv, ok := f.mounts[mountpoint]
	delete(f.mounts, mountpoint)
	f.mu.Unlock()
	if ok {
		return srv.Unmount()
	}
	return fusefs.Unmount(mountpoint)
}

// Images returns the images open now.
func (f *SnapshotFS) Images() []*Image {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*Image
	for _, e := range f.images {
		select {
		case <-e.done:
			if e.im != nil {
				out = append(out, e.im)
			}
		default:
		}
	}
	return out
}

// Close unmounts every layer and closes the images.
func (f *SnapshotFS) Close() error {
	f.mu.Lock()
	mounts := f.mounts
	f.mounts = map[string]*fusefs.Server{}
	f.mu.Unlock()
	var errs []error
	for dir, srv := range mounts {
		if err := srv.Unmount(); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", dir, err))
		}
	}
	for _, im := range f.Images() {
		im.Close()
	}
	return errors.Join(errs...)
}
