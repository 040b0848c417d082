package imageindex

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sync/errgroup"

	"lazypull/internal/artifact"
	"lazypull/internal/fetch"
)

// Options are Image's settings.
type Options struct {
	Client   *fetch.Client
	Platform *v1.Platform // of a multi-platform image; nil: this machine's
	// SpanSize is the compressed distance between checkpoints; <= 0: gzindex's default
	// for gzip layers, zstdindex's for zstd ones.
	SpanSize int64
	// Jobs is how many layers are read at once; <= 0: 4.
	Jobs int
	Log  *slog.Logger
}

// Result is what Image pushed.
type Result struct {
	Image     v1.Descriptor // the image manifest, the artifact's subject
	Artifact  v1.Descriptor // the artifact manifest
	Layers    []LayerResult
	ImageSize int64 // the layers' blobs, as the manifest sizes them
	IndexSize int64 // the artifact's index blobs, read whole by a mount
	// WindowsSize is the artifact's window blobs (compressed layers'), read by range only.
	WindowsSize int64
}

// LayerResult describes one layer's index.
type LayerResult struct {
	Layer v1.Descriptor // the image layer
	Blob  v1.Descriptor // its index, an artifact layer
	Kind  Kind
	// Windows is a compressed layer's window blob, an artifact layer too (none, size 0,
	// when no checkpoint needs a window).
	Windows     v1.Descriptor
	Entries     int
	Files       int // regular files
	TarSize     int64
	Checkpoints int // 0 for an uncompressed layer
}

// Image indexes the image at ref, as it is: it reads each layer blob once (opts.Jobs at
// a time, each streamed through BuildLayer and checked against the config's diff ID),
// uploads each layer's index as it is built (and a zstd layer's window blob), then the
// artifact manifest with the image manifest as subject: the index blobs in image layer
// order, then the window blobs. It writes a line per layer and one for the artifact to w.
// An image with a layer it cannot index fails before anything is read, with an error
// naming the layer.
func Image(ctx context.Context, w io.Writer, ref string, opts Options) (*Result, error) {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reg, err := opts.Client.Open(ref)
	if err != nil {
		return nil, err
	}
	img, err := reg.Resolve(ctx, "", opts.Platform)
	if err != nil {
		return nil, err
	}
	diffIDs, err := configDiffIDs(ctx, reg, img)
	if err != nil {
		return nil, err
	}
	layers := img.Manifest.Layers
	kinds := make([]Kind, len(layers))
	for i, desc := range layers {
		if kinds[i], err = KindOf(string(desc.MediaType)); err != nil {
			return nil, fmt.Errorf("image %s: layer %d %s: %w", img.Name, i, desc.Digest, err)
		}
	}
	var nameOpts []name.Option
	if opts.Client.AllPlainHTTP() { // go-containerregistry already uses it for loopback and private addresses
		nameOpts = append(nameOpts, name.Insecure)
	}
	repo, err := name.NewRepository(reg.Host()+"/"+reg.Repository(), nameOpts...)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", img.Name, err)
	}
	ropts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(opts.Client.Transport()),
		remote.WithAuthFromKeychain(opts.Client.Keychain()), remote.WithUserAgent("lazypull")}
	res := &Result{Image: img.Descriptor, Layers: make([]LayerResult, len(layers))}
	g, gctx := errgroup.WithContext(ctx)
	jobs := opts.Jobs
	if jobs <= 0 {
		jobs = 4
	}
	g.SetLimit(jobs)
	for i, desc := range layers {
		g.Go(func() error {
			start := time.Now()
			lr, err := indexLayer(gctx, reg, repo, desc, kinds[i], diffIDs[i], opts.SpanSize, ropts)
			if err != nil {
				return fmt.Errorf("image %s: layer %d %s: %w", img.Name, i, desc.Digest, err)
			}
			res.Layers[i] = lr
			log.Info("layer indexed", "layer", i, "digest", desc.Digest, "entries", lr.Entries, "index", lr.Blob.Size, "took", time.Since(start))
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	blobs := make([]v1.Descriptor, len(layers), 2*len(layers))
	for i, lr := range res.Layers {
		blobs[i] = lr.Blob
		res.ImageSize += lr.Layer.Size
		res.IndexSize += lr.Blob.Size
		res.WindowsSize += lr.Windows.Size
		kind := fmt.Sprintf("%v, %d checkpoints", lr.Kind, lr.Checkpoints)
		switch {
		case lr.Kind == Tar:
			kind = "uncompressed, no checkpoints"
		case lr.Windows.Size > 0:
			kind += fmt.Sprintf(", window blob %d bytes", lr.Windows.Size)
		}
		fmt.Fprintf(w, "layer %d %s: %d entries, %d files, tar %d bytes, %s: index %d bytes\n",
			i, lr.Layer.Digest, lr.Entries, lr.Files, lr.TarSize, kind, lr.Blob.Size)
	}
	for _, lr := range res.Layers {
		if lr.Windows.Size > 0 {
			blobs = append(blobs, lr.Windows)
		}
	}
	var embedErr error
	if res.Artifact, embedErr, err = pushManifest(repo, img.Descriptor, blobs, time.Now(), ropts); err != nil {
		return nil, fmt.Errorf("image %s: %w", img.Name, err)
	}
	if embedErr != nil {
		log.Warn("index pushed, but not embedded in the referrers tag index: a node reads its manifest in a round trip of its own",
			"image", img.Name, "index", res.Artifact.Digest, "err", embedErr)
	}
	windows := ""
	if res.WindowsSize > 0 {
		windows = fmt.Sprintf(", window blobs %d bytes", res.WindowsSize)
	}
	fmt.Fprintf(w, "image %s: index %s pushed (%d bytes%s for %d bytes of layers)\n", img.Name, res.Artifact.Digest, res.IndexSize, windows, res.ImageSize)
	return res, nil
}

// configDiffIDs reads the image config's diff IDs, one per layer.
func configDiffIDs(ctx context.Context, reg *fetch.Registry, img *fetch.Image) ([]v1.Hash, error) {
	raw, err := reg.Blob(img.Manifest.Config.Digest, img.Manifest.Config.Size).ReadAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("image %s: config: %w", img.Name, err)
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("image %s: config: %w", img.Name, err)
	}
	if n := len(cfg.RootFS.DiffIDs); n != len(img.Manifest.Layers) {
		return nil, fmt.Errorf("image %s: the config lists %d diff IDs for %d layers", img.Name, n, len(img.Manifest.Layers))
	}
	return cfg.RootFS.DiffIDs, nil
}

// indexLayer streams one layer blob (its digest checked at its end) through BuildLayer,
// checks its tar stream against the diff ID, and uploads its index (and a compressed
// layer's window blob, written to a temporary file as it is built, then streamed from there).
func indexLayer(ctx context.Context, reg *fetch.Registry, repo name.Repository, desc v1.Descriptor, kind Kind, diffID v1.Hash, span int64, ropts []remote.Option) (LayerResult, error) {
	rc, err := reg.Layer(desc).Open(ctx)
	if err != nil {
		return LayerResult{}, err
	}
	defer rc.Close()
	var win *windowFile
	if kind != Tar {
		if win, err = newWindowFile(); err != nil {
			return LayerResult{}, err
		}
		defer win.close()
	}
	b, err := BuildLayer(rc, kind, span, win.writer())
	if err != nil {
		return LayerResult{}, err
	}
	// BuildLayer reads to the end, where Open checks the digest; read once more in case
	// the stream's end came before the body's.
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return LayerResult{}, err
	}
	if got := b.DiffID.String(); got != diffID.String() {
		return LayerResult{}, fmt.Errorf("tar stream has digest %s, the config's diff ID is %s", got, diffID)
	}
	enc, err := b.Encode()
	if err != nil {
		return LayerResult{}, err
	}
	lr := LayerResult{Layer: desc, Kind: kind, Entries: len(b.Table.Entries), TarSize: b.Table.TarSize}
	if b.WindowsSize() > 0 {
		if lr.Windows, err = win.push(repo, b.WindowsSize(), ropts); err != nil {
			return LayerResult{}, err
		}
		lr.Windows.Annotations = map[string]string{AnnotationLayer: desc.Digest.String()}
	}
	if lr.Blob, err = artifact.PushBlob(repo, enc, LayerMediaType, ropts...); err != nil {
		return LayerResult{}, err
	}
	lr.Blob.Annotations = map[string]string{AnnotationLayer: desc.Digest.String(), AnnotationDiffID: diffID.String()}
	for i := range b.Table.Entries {
		if b.Table.Entries[i].IsRegular() {
			lr.Files++
		}
	}
	switch {
	case b.GZ != nil:
		lr.Checkpoints = b.GZ.NumSpans()
	case b.ZS != nil:
		lr.Checkpoints = b.ZS.NumSpans()
	}
	return lr, nil
}

// windowFile is a compressed layer's window blob while it is built: a temporary file and the
// running sha256 of what was written to it.
type windowFile struct {
	f *os.File
	h hash.Hash
}

func newWindowFile() (*windowFile, error) {
	f, err := os.CreateTemp("", "lazypull-index-windows-*")
	if err != nil {
		return nil, fmt.Errorf("window blob: %w", err)
	}
	return &windowFile{f: f, h: sha256.New()}, nil
}

// writer returns where BuildLayer writes the windows; nil for no window file.
func (w *windowFile) writer() io.Writer {
	if w == nil {
		return nil
	}
	return io.MultiWriter(w.f, w.h)
}

// push uploads the n bytes written as the window blob.
func (w *windowFile) push(repo name.Repository, n int64, ropts []remote.Option) (v1.Descriptor, error) {
	h := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(w.h.Sum(nil))}
	return artifact.PushFile(repo, w.f, h, n, WindowsMediaType, ropts...)
}

func (w *windowFile) close() {
	w.f.Close()
	os.Remove(w.f.Name())
}
