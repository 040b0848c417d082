package imageindex

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
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
	// SpanSize is the compressed distance between checkpoints; <= 0: gzindex's default.
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
	IndexSize int64 // the artifact's layer blobs
}

// LayerResult describes one layer's index.
type LayerResult struct {
	Layer       v1.Descriptor // the image layer
	Blob        v1.Descriptor // its index, an artifact layer
	Entries     int
	Files       int // regular files
	TarSize     int64
	Checkpoints int // 0 for an uncompressed layer
}

// layerKind tells how a layer blob holds its tar stream, from its media type.
func layerKind(mt string) (gz bool, err error) {
	switch {
	case strings.HasSuffix(mt, "zstd"):
		return false, fmt.Errorf("zstd layers are not indexed yet (media type %s)", mt)
	case strings.HasSuffix(mt, "gzip"):
		return true, nil
	case strings.HasSuffix(mt, ".tar"):
		return false, nil
	}
	return false, fmt.Errorf("media type %s is not a tar layer lazypull indexes", mt)
}

// Image indexes the image at ref, as it is: it reads each layer blob once (opts.Jobs at
// a time, each streamed through BuildLayer and checked against the config's diff ID),
// uploads each layer's index as it is built, then the artifact manifest with the image
// manifest as subject. It writes a line per layer and one for the artifact to w. An
// image with a layer it cannot index (zstd, for now) fails before anything is read, with
// an error naming the layer.
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
	kinds := make([]bool, len(layers))
	for i, desc := range layers {
		if kinds[i], err = layerKind(string(desc.MediaType)); err != nil {
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
	blobs := make([]v1.Descriptor, len(layers))
	for i, lr := range res.Layers {
		blobs[i] = lr.Blob
		res.ImageSize += lr.Layer.Size
		res.IndexSize += lr.Blob.Size
		kind := fmt.Sprintf("%d checkpoints", lr.Checkpoints)
		if !kinds[i] {
			kind = "uncompressed, no checkpoints"
		}
		fmt.Fprintf(w, "layer %d %s: %d entries, %d files, tar %d bytes, %s: index %d bytes\n",
			i, lr.Layer.Digest, lr.Entries, lr.Files, lr.TarSize, kind, lr.Blob.Size)
	}
	if res.Artifact, err = pushManifest(repo, img.Descriptor, blobs, time.Now(), ropts); err != nil {
		return nil, fmt.Errorf("image %s: %w", img.Name, err)
	}
	fmt.Fprintf(w, "image %s: index %s pushed (%d bytes for %d bytes of layers)\n", img.Name, res.Artifact.Digest, res.IndexSize, res.ImageSize)
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
// checks its tar stream against the diff ID, and uploads its index.
func indexLayer(ctx context.Context, reg *fetch.Registry, repo name.Repository, desc v1.Descriptor, gz bool, diffID v1.Hash, span int64, ropts []remote.Option) (LayerResult, error) {
	rc, err := reg.Layer(desc).Open(ctx)
	if err != nil {
		return LayerResult{}, err
	}
	defer rc.Close()
	b, err := BuildLayer(rc, gz, span)
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
	blob, err := artifact.PushBlob(repo, enc, LayerMediaType, ropts...)
	if err != nil {
		return LayerResult{}, err
	}
	blob.Annotations = map[string]string{AnnotationLayer: desc.Digest.String(), AnnotationDiffID: diffID.String()}
	lr := LayerResult{Layer: desc, Blob: blob, Entries: len(b.Table.Entries), TarSize: b.Table.TarSize}
	for i := range b.Table.Entries {
		if b.Table.Entries[i].IsRegular() {
			lr.Files++
		}
	}
	if b.GZ != nil {
		lr.Checkpoints = b.GZ.NumSpans()
	}
	return lr, nil
}
