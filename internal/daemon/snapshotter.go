package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/format"
	"lazypull/internal/fetch"
	"lazypull/internal/fusefs"
	"lazypull/internal/keeper"
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
	// LabelProfile is the digest of the prefetch profile `lazypull pull --profile` pinned
	// for the image. It counts only beside LabelImageRef: an image's own manifest can
	// carry any containerd.io/snapshot/ annotation on its layers, which containerd (CRI
	// too) passes on as labels, and the pull sets or removes this one on every layer.
	LabelProfile = LabelPrefix + "lazypull.profile"
	// The layer's index annotations, under the prefix (LabelPrefix + format.AnnotationIndex*).
	LabelIndexDigest = LabelPrefix + format.AnnotationIndexDigest

	// What containerd's CRI plugin (snapshotters.AppendInfoHandlerWrapper) puts on layers.
	LabelCRIImageRef       = LabelPrefix + "cri.image-ref"
	LabelCRILayerDigest    = LabelPrefix + "cri.layer-digest"
	LabelCRIManifestDigest = LabelPrefix + "cri.manifest-digest"
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
	client   *fetch.Client
	log      *slog.Logger

	keeper *keeper.Client // nil: mounts end with this process

	prefetch      *PrefetchOptions // nil: no profile is looked up
	noSpeculation bool             // OpenOptions.NoSpeculation
	minRTT        time.Duration    // OpenOptions.SpeculateMinRTT
	probe         []string         // fusefs.MountOptions.Probe of its mounts
	choice        ProfileChoice    // how the profile is chosen, for a pin a pull did not give
	fill          *FillOptions     // nil: no background fill

	fallbacks *FallbackMetrics // nil: not counted
	changed   func()           // called when an image opened or a layer mounted; nil: none

	mu         sync.Mutex
	images     map[string]*imageEntry
	mounts     map[string]*fusefs.Server
	mountImage map[string]*Image // the image of each mount's layer
	// uses counts, per image, its layers mounted and being mounted: the image is closed
	// (its pins in the store released) and forgotten when the last goes (release).
	uses map[*Image]int
	// notLazy are the images closed that had no lazy layer, for FailedImages.
	notLazy notLazyImages
	// stored caches the Usage of the remote snapshots not mounted by this process (after
	// a restart), by mountpoint, read from the store.
	stored map[string]*usageCache
	// noIndex says when an image with no lazypull layer was last found to have no index
	// artifact, by reference: its other layers' Prepares do not look again (noIndexTTL).
	noIndex noIndexCache
}

// SetPrefetch has every image opened look up its prefetch profile and fetch the profiled
// chunks first (Image.Prefetch). Call it before the first Mount.
func (f *SnapshotFS) SetPrefetch(o PrefetchOptions) { f.prefetch = &o }

// SetProfileChoice sets how every image opened chooses its profile: the policy, and the
// node's pins by image manifest digest (Pin is ignored: a pull pins with LabelProfile, or
// in its warm request). Call it before the first Mount.
func (f *SnapshotFS) SetProfileChoice(c ProfileChoice) {
	c.Pin = v1.Hash{}
	f.choice = c
}

// SetMountProbe sets the command that probes each new mount (fusefs.MountOptions.Probe);
// nil probes in this process. Call it before the first Mount.
func (f *SnapshotFS) SetMountProbe(cmd []string) { f.probe = cmd }

// SetSpeculation says whether a read that misses fetches more than it asks for (see
// OpenOptions.NoSpeculation); on by default. Call it before the first Mount.
func (f *SnapshotFS) SetSpeculation(on bool) { f.noSpeculation = !on }

// SetSpeculationMinRTT has speculation apply only while a registry's round trip is at
// least d (OpenOptions.SpeculateMinRTT); 0, the default, always. Call it before the first
// Mount.
func (f *SnapshotFS) SetSpeculationMinRTT(d time.Duration) { f.minRTT = d }

// SetFallbackMetrics counts in m the layers that fall back to a full download. Call it
// before the first Mount.
func (f *SnapshotFS) SetFallbackMetrics(m *FallbackMetrics) { f.fallbacks = m }

// OnChange has fn called (in the caller's goroutine, so quickly) after an image is opened
// or a layer mounted: the stats file is written then, not only at its next tick. Call it
// before the first Mount.
func (f *SnapshotFS) OnChange(fn func()) { f.changed = fn }

func (f *SnapshotFS) notify() {
	if f.changed != nil {
		f.changed()
	}
}

// SetBackgroundFetch has every image opened fetch the rest of its chunks in the
// background after the prefetch (Image.BackgroundFetch). Call it before the first Mount.
func (f *SnapshotFS) SetBackgroundFetch(o FillOptions) { f.fill = &o }

// SetKeeper makes the file system hand each mount's FUSE connection to k, so that the
// mounts outlive this process (a crash, a restart) and Restore in the next one takes them
// back. Call it before the first Mount.
func (f *SnapshotFS) SetKeeper(k *keeper.Client) { f.keeper = k }

// mountLayer is a layer the snapshotter mounts: a lazypull layer, or one served from its
// image's index artifact.
type mountLayer struct {
	Desc v1.Descriptor
	fusefs.Layer
}

// keptMount is what the keeper holds beside a mount's connection.
type keptMount struct {
	Labels map[string]string `json:"labels"`
	Init   []byte            `json:"init"` // the kernel's FUSE INIT request
}

type imageEntry struct {
	pin  v1.Hash // the profile the pull pinned (LabelProfile); zero: none
	done chan struct{}
	im   *Image
	err  error
	at   time.Time
	// warm: a pull's warm request opened it (Warm). Its failure is not remembered: the
	// layers' Prepares then open the image themselves, as if it had not been sent.
	warm bool
	// waited: a Prepare has waited for the image's prefetch (PrefetchOptions.Wait); one
	// does, the first to get the image, whoever opened it.
	waited atomic.Bool
}

var _ snapshot.FileSystem = (*SnapshotFS)(nil)

// NewSnapshotFS returns the snapshotter's file system over st; every image it opens reads
// its registry through client, the node's one. It and the images it opens log to log
// (nil: nowhere).
func NewSnapshotFS(st *store.Store, platform *v1.Platform, log *slog.Logger, client *fetch.Client) *SnapshotFS {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &SnapshotFS{store: st, platform: platform, client: client, log: log, images: map[string]*imageEntry{},
		mounts: map[string]*fusefs.Server{}, mountImage: map[string]*Image{}, uses: map[*Image]int{}, stored: map[string]*usageCache{}}
}

// pinOf reads from labels the profile a pull pinned (LabelProfile); zero for none. It
// counts only beside LabelImageRef (see LabelProfile).
func pinOf(labels map[string]string) (v1.Hash, error) {
	s := labels[LabelProfile]
	if s == "" || labels[LabelImageRef] == "" {
		return v1.Hash{}, nil
	}
	h, err := ParseProfileDigest(s)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("label %s: %w", LabelProfile, err)
	}
	return h, nil
}

// entryKey is what an image's entry is known by: its reference, and the profile pinned
// for it, if any. An image pulled again with another pin is opened again with it.
func entryKey(ref string, pin v1.Hash) string {
	if pin == (v1.Hash{}) {
		return ref
	}
	return ref + " profile=" + pin.String()
}

// layerOf reads from labels the image reference to open and the layer's digest.
//
// containerd passes every containerd.io/snapshot/ annotation of a layer descriptor on as a
// label: the image's own manifest can put lazypull's labels on its layers, and name there
// a layer of another image, in another repository, which the snapshotter would fetch with
// the node's credentials and mount as this image's. Lazypull's labels are therefore taken
// only beside CRI's (snapshotters.AppendInfoHandlerWrapper, which CRI and `lazypull pull`
// run after the manifest is read, so that they are the pull's, not the image's) and only
// when they agree with them: the same repository, manifest and layer (checkLabels).
func layerOf(labels map[string]string) (ref, layer string, err error) {
	set := labelSet{LabelCRIImageRef, LabelCRILayerDigest, LabelCRIManifestDigest}
	if labels[LabelImageRef] != "" && labels[LabelLayerDigest] != "" {
		if err := checkLabels(labels); err != nil {
			return "", "", err
		}
		set = labelSet{LabelImageRef, LabelLayerDigest, LabelManifestDigest}
	}
	return set.layerOf(labels)
}

// labelSet names the labels that say which image and layer to mount: lazypull's or CRI's.
type labelSet struct{ ref, layer, manifest string }

// layerOf reads the set's labels: the image to open is the one of the manifest pulled,
// when the labels name it (not the tag again, which may have moved since; a restarted
// snapshotter then mounts it again from the store, without its registry or the
// credentials of its pull), else the reference.
func (s labelSet) layerOf(labels map[string]string) (ref, layer string, err error) {
	ref, layer = labels[s.ref], labels[s.layer]
	if ref == "" || layer == "" {
		return "", "", ErrNotLazy
	}
	if md := labels[s.manifest]; md != "" {
		key, err := imageKey(ref, md)
		if err != nil {
			return "", "", fmt.Errorf("label %s: %w", s.ref, err)
		}
		return key, layer, nil
	}
	return ref, layer, nil
}

// checkLabels checks lazypull's labels against CRI's (see layerOf).
func checkLabels(labels map[string]string) error {
	ref, layer, md := labels[LabelImageRef], labels[LabelLayerDigest], labels[LabelManifestDigest]
	criRef, criLayer, criMD := labels[LabelCRIImageRef], labels[LabelCRILayerDigest], labels[LabelCRIManifestDigest]
	if criRef == "" || criLayer == "" {
		return fmt.Errorf("label %s without %s and %s, which say what the pull pulled: it may be the image's own annotation; not trusted",
			LabelImageRef, LabelCRIImageRef, LabelCRILayerDigest)
	}
	if layer != criLayer {
		return fmt.Errorf("label %s is %s, but the layer pulled is %s (%s): not trusted", LabelLayerDigest, layer, criLayer, LabelCRILayerDigest)
	}
	if md != "" && criMD != "" && md != criMD {
		return fmt.Errorf("label %s is %s, but the manifest pulled is %s (%s): not trusted", LabelManifestDigest, md, criMD, LabelCRIManifestDigest)
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return fmt.Errorf("label %s: %w", LabelImageRef, err)
	}
	cr, err := name.ParseReference(criRef)
	if err != nil {
		return fmt.Errorf("label %s: %w", LabelCRIImageRef, err)
	}
	if r.Context().String() != cr.Context().String() {
		return fmt.Errorf("label %s names the repository %s, but the image pulled is in %s (%s): not trusted",
			LabelImageRef, r.Context(), cr.Context(), LabelCRIImageRef)
	}
	return nil
}

// imageKey is how images are known to the file system: the reference ref names the
// repository of, by the digest of its image manifest.
func imageKey(ref, manifestDigest string) (string, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", err
	}
	return r.Context().Digest(manifestDigest).String(), nil
}

// entry returns the entry of ref, and whether the caller is the first and must open it
// (open): there is none yet, or the last open failed more than failedImageTTL ago.
func (f *SnapshotFS) entry(ref string, pin v1.Hash, warm bool) (e *imageEntry, first bool) {
	key := entryKey(ref, pin)
	f.mu.Lock()
	defer f.mu.Unlock()
	if e, ok := f.images[key]; ok {
		select {
		case <-e.done:
			if e.err == nil || time.Since(e.at) <= failedImageTTL {
				return e, false
			}
		default:
			return e, false
		}
	}
	e = &imageEntry{done: make(chan struct{}), warm: warm, pin: pin}
	f.images[key] = e
	return e, true
}

// open opens the image of e, ref, given its manifest or not (openImage), and starts its
// prefetch and fill.
func (f *SnapshotFS) open(ctx context.Context, e *imageEntry, ref string, given *fetch.Image) {
	// The image outlives the request that opened it.
	// Partially: a layer whose index is missing or bad is unpacked the ordinary way
	// while the others are still mounted.
	var choice *ProfileChoice
	if f.prefetch != nil {
		c := f.choice
		c.Pin = e.pin
		choice = &c
	}
	e.im, e.err = openImage(context.WithoutCancel(ctx), f.store, ref, OpenOptions{Platform: f.platform, Profile: choice, Client: f.client, Log: f.log,
		IndexPolicy: f.choice.Policy, NoSpeculation: f.noSpeculation, SpeculateMinRTT: f.minRTT, noIndex: f.noIndex.known(ref), manifest: given, partial: true})
	if e.err == nil && e.im.noIndex {
		f.noIndex.add(ref)
	}
	if e.err == nil && e.im.NumLayers() > 0 {
		f.mu.Lock()
		f.notLazy.remove(ref)
		f.mu.Unlock()
		f.log.Info("image opened", "image", e.im, "warm", e.warm)
		if f.prefetch != nil {
			// Before the first layer is mounted.
			o := *f.prefetch
			o.Wait = 0
			e.im.Prefetch(ctx, o)
		} else {
			e.im.WalkCommand()
		}
		if f.fill != nil {
			if err := e.im.BackgroundFetch(*f.fill); err != nil {
				f.log.Warn("no background fetch", "image", ref, "err", err)
			}
		}
		// Only now, with the prefetch under way (its fetches overlap the fsyncs), and
		// before any layer of the image is mounted.
		e.im.waitKept()
	}
	e.at = time.Now()
	if e.err != nil && e.warm {
		f.mu.Lock()
		if key := entryKey(ref, e.pin); f.images[key] == e {
			delete(f.images, key)
		}
		f.mu.Unlock()
	}
	close(e.done)
	f.notify()
}

// image opens ref, with the profile pin (zero: none), once; concurrent callers wait for
// the first. The caller holds a use of the image (hold), which its mount keeps or release
// gives back.
func (f *SnapshotFS) image(ctx context.Context, ref string, pin v1.Hash) (*Image, error) {
	for {
		e, first := f.entry(ref, pin, false)
		if first {
			f.open(ctx, e, ref, nil)
		} else {
			select {
			case <-e.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		switch {
		case e.err != nil && e.warm:
			// Forgotten (open): this Prepare opens the image itself, or joins the one
			// that does.
			continue
		case e.err != nil:
			// Each of the image's layers reports it (Mount): every layer that falls back
			// says why.
			return nil, e.err
		}
		if !f.hold(entryKey(ref, pin), e) {
			continue // closed meanwhile, its last layer unmounted: opened again
		}
		if f.prefetch != nil && f.prefetch.Wait > 0 && e.waited.CompareAndSwap(false, true) {
			// With Wait, container create waits (at most that long) for the start-up
			// reads to be local; the image's other layers need not.
			e.im.WaitPrefetch(ctx, f.prefetch.Wait, f.prefetch.Log)
		}
		return e.im, nil
	}
}

// hold counts a use of e's image, the entry of key; false when the entry was forgotten
// meanwhile (its image closed: release).
func (f *SnapshotFS) hold(key string, e *imageEntry) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.images[key] != e {
		return false
	}
	f.uses[e.im]++
	return true
}

// release gives back a use of im (hold). With the last, the image is forgotten and
// closed: its background fill stops and what its lease pins in the store may be evicted
// or pruned; the manifest and indexes the store keeps open it again.
func (f *SnapshotFS) release(im *Image) {
	if im == nil {
		return
	}
	f.mu.Lock()
	f.uses[im]--
	last := f.uses[im] <= 0
	if last {
		delete(f.uses, im)
		for key, e := range f.images {
			if e.im == im {
				delete(f.images, key)
			}
		}
		if im.NumLayers() == 0 {
			f.notLazy.add(imageStats(im))
		}
	}
	f.mu.Unlock()
	if last {
		im.StopBackgroundFetch()
		im.Close()
		f.log.Info("image closed: no layer of it is mounted", "image", im.Ref)
	}
}

// layer opens the layer the labels name, a lazypull layer or one the image's index
// artifact serves, and returns it with its image, of which the caller holds a use (image).
func (f *SnapshotFS) layer(ctx context.Context, labels map[string]string) (mountLayer, *Image, error) {
	ref, digest, err := layerOf(labels)
	if err != nil {
		if errors.Is(err, ErrNotLazy) {
			return mountLayer{}, nil, err
		}
		return mountLayer{}, nil, labelError{err}
	}
	pin, err := pinOf(labels)
	if err != nil {
		return mountLayer{}, nil, labelError{err}
	}
	im, err := f.image(ctx, ref, pin)
	if err != nil {
		return mountLayer{}, nil, err
	}
	for _, l := range im.Layers {
		if l.Desc.Digest.String() == digest {
			return mountLayer{Desc: l.Desc, Layer: fusefs.Layer{Index: l.Index, Content: l}}, im, nil
		}
	}
	il, err := im.indexedLayerOf(digest, labels[LabelChainID])
	if il != nil {
		return mountLayer{Desc: il.Desc, Layer: fusefs.Layer{Index: il.Index, Content: il}}, im, nil
	}
	f.release(im)
	if err != nil {
		return mountLayer{}, nil, err
	}
	if err, ok := im.Failed[digest]; ok {
		if errors.Is(err, ErrNotLazy) {
			return mountLayer{}, nil, err
		}
		return mountLayer{}, nil, indexError{err}
	}
	return mountLayer{}, nil, fmt.Errorf("image %s has no layer %s", ref, digest)
}

// mounted records that the layer mount at dir belongs to im; the mount keeps the use of
// im its caller holds. A mount it replaces is unmounted, and its use given back.
func (f *SnapshotFS) mounted(dir string, srv *fusefs.Server, im *Image) {
	f.mu.Lock()
	old, oldIm := f.mounts[dir], f.mountImage[dir]
	f.mounts[dir] = srv
	f.mountImage[dir] = im
	f.mu.Unlock()
	if old != nil {
		_ = old.Unmount()
		f.release(oldIm)
	}
}

// unmounted forgets the mount at dir and gives back its use of its image: when it was the
// last of the image's layers (the image removed from containerd), the image is closed.
func (f *SnapshotFS) unmounted(dir string) (*fusefs.Server, bool) {
	f.mu.Lock()
	srv, ok := f.mounts[dir]
	delete(f.mounts, dir)
	im := f.mountImage[dir]
	delete(f.mountImage, dir)
	delete(f.stored, dir)
	f.mu.Unlock()
	f.release(im)
	return srv, ok
}

// Mount mounts the single-layer view of the layer the labels name at mountpoint. A
// lazypull layer it cannot mount is logged, once, at warn level with why, and counted
// (FallbackMetrics); the snapshotter then downloads it whole (snapshot.ErrNotRemote).
func (f *SnapshotFS) Mount(ctx context.Context, mountpoint string, labels map[string]string) error {
	err := f.mount(ctx, mountpoint, labels)
	if err == nil || errors.Is(err, ErrNotLazy) || ctx.Err() != nil {
		return err
	}
	reason := fallbackReason(err)
	f.fallbacks.observe(reason)
	layer, image := labels[LabelLayerDigest], labels[LabelImageRef]
	if layer == "" || image == "" {
		layer, image = labels[LabelCRILayerDigest], labels[LabelCRIImageRef]
	}
	f.log.Warn("layer not mounted lazily: it is downloaded whole instead", "layer", layer, "image", image, "reason", reason, "err", err)
	return &fallbackError{reason: reason, err: err}
}

func (f *SnapshotFS) mount(ctx context.Context, mountpoint string, labels map[string]string) error {
	layer, im, err := f.layer(ctx, labels)
	if err != nil {
		return err
	}
	digest := layer.Desc.Digest.String()
	ref, _, _ := layerOf(labels)
	t0 := time.Now()
	root, err := fusefs.NewLayer(layer.Index, layer.Content, fusefs.WithLogger(f.log))
	if err != nil {
		f.release(im)
		return indexError{fmt.Errorf("layer %s: %w", digest, err)}
	}
	srv, err := fusefs.Mount(mountpoint, root, fusefs.MountOptions{FSName: "lazypull:" + digest, Logger: f.log, Probe: f.probe})
	if err != nil {
		f.release(im)
		return mountError{fmt.Errorf("mount layer %s at %s: %w", digest, mountpoint, err)}
	}
	t1 := time.Now()
	f.keep(srv, labels)
	t2 := time.Now()
	f.mounted(mountpoint, srv, im)
	f.log.Info("layer mounted", "layer", digest, "image", ref, "dir", mountpoint, "passthrough", srv.Passthrough(),
		"mount_s", t1.Sub(t0).Seconds(), "keep_s", t2.Sub(t1).Seconds())
	f.notify()
	return nil
}

// keep hands the mount's connection to the keeper; without it the mount still works, but
// ends with this process.
func (f *SnapshotFS) keep(srv *fusefs.Server, labels map[string]string) {
	if f.keeper == nil {
		return
	}
	conn, init, err := srv.Conn()
	if err == nil {
		defer conn.Close()
		var meta []byte
		if meta, err = json.Marshal(keptMount{Labels: labels, Init: init}); err == nil {
			err = f.keeper.Put(srv.Dir(), meta, conn)
		}
	}
	if err != nil {
		f.log.Warn("mount not kept: it will end if the snapshotter stops", "dir", srv.Dir(), "err", err)
	}
}

// Restore takes back the mounts an earlier snapshotter handed to the keeper: each is served
// again by this process, from the same layer (opened from the store when its registry is
// unreachable). Readers that waited meanwhile get their answers. A mount that cannot be
// served again is ended (its readers get errors rather than wait forever). It returns how
// many mounts were restored.
func (f *SnapshotFS) Restore(ctx context.Context) (int, error) {
	if f.keeper == nil {
		return 0, nil
	}
	entries, err := f.keeper.List()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range entries {
		if err := f.restore(ctx, e); err != nil {
			if errors.Is(err, fusefs.ErrGone) {
				f.log.Info("kept mount ended meanwhile; dropped", "dir", e.Key)
				_ = f.keeper.Delete(e.Key)
				continue
			}
			f.log.Error("kept mount cannot be served again; ended", "dir", e.Key, "err", err)
			_ = f.keeper.Delete(e.Key) // the last holder of the connection: the kernel ends it
			_ = fusefs.Unmount(e.Key)
			continue
		}
		n++
	}
	return n, nil
}

func (f *SnapshotFS) restore(ctx context.Context, e keeper.Entry) error {
	var km keptMount
	if err := json.Unmarshal(e.Meta, &km); err != nil {
		e.File.Close()
		return fmt.Errorf("kept description: %w", err)
	}
	layer, im, err := f.layer(ctx, km.Labels)
	if err != nil {
		e.File.Close()
		return err
	}
	root, err := fusefs.NewLayer(layer.Index, layer.Content, fusefs.WithLogger(f.log))
	if err != nil {
		f.release(im)
		e.File.Close()
		return err
	}
	srv, err := fusefs.Restore(e.Key, root, e.File, km.Init, fusefs.MountOptions{Logger: f.log})
	if err != nil {
		f.release(im)
		return err
	}
	f.mounted(e.Key, srv, im)
	f.log.Info("layer mount restored", "layer", layer.Desc.Digest, "dir", e.Key)
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
	srv, ok := f.unmounted(mountpoint)
	if f.keeper != nil {
		if err := f.keeper.Delete(mountpoint); err != nil {
			f.log.Warn("keeper", "err", err)
		}
	}
	if ok {
		return srv.Unmount()
	}
	return fusefs.Unmount(mountpoint)
}

// FailedImages lists the images whose open failed, and the last ones opened none of whose
// layers is lazy (their layers are downloaded whole, or are no lazypull layers), as
// `lazypull stats` shows them.
func (f *SnapshotFS) FailedImages() []ImageStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.notLazy.list()
	for key, e := range f.images {
		select {
		case <-e.done:
			if e.err != nil {
				out = append(out, ImageStats{Image: key, Err: fallbackReason(e.err) + ": " + e.err.Error()})
			}
		default:
		}
	}
	return out
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

// Close ends the file system's part in its mounts and closes the images. With a keeper, the
// mounts stay (their requests wait for the next process to Restore them); without one,
// every layer is unmounted.
func (f *SnapshotFS) Close() error {
	f.mu.Lock()
	mounts := f.mounts
	f.mounts, f.mountImage, f.uses = map[string]*fusefs.Server{}, map[string]*Image{}, map[*Image]int{}
	f.mu.Unlock()
	if f.keeper != nil {
		for _, srv := range mounts {
			srv.Freeze()
		}
		f.log.Info("layer mounts left to the keeper", "mounts", len(mounts))
		f.keeper.Close()
		for _, im := range f.Images() {
			im.Close()
		}
		return nil
	}
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
