package convert

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"

	"lazypull/internal/profile"
)

// Options configure Convert. The zero value converts every platform with default settings.
type Options struct {
	// Platform, if set, selects one image of a multi-platform source; the result is then a
	// single manifest. Unset fields (a missing variant) match anything.
	Platform *v1.Platform
	// Jobs is how many layers are converted at once; 0 means DefaultJobs().
	Jobs int
	// PlainHTTP talks to registries over http. Without it, go-containerregistry tries
	// http after https for loopback and private-network registries, unless Transport
	// decides otherwise (the command's, a fetch.Client's, applies lazypull's one
	// plain-HTTP rule and the hosts directory).
	PlainHTTP bool
	// Keychain supplies registry credentials; nil means authn.DefaultKeychain (the Docker
	// config and its credential helpers).
	Keychain authn.Keychain
	// Transport for registry requests; nil means remote.DefaultTransport.
	Transport http.RoundTripper
	// RemoteOptions are added to every registry client (tests shorten retries with them).
	RemoteOptions []remote.Option
	// TempDir holds the converted layers until they are written; "" means os.TempDir().
	TempDir string
	// Progress hears about each layer; nil means nothing does.
	Progress Progress
	// Logger gets one line per step that is not a layer; nil discards them.
	Logger *slog.Logger
	// Profile, if set, lays out every converted layer by it: the files it names first, in
	// first-access order (see layout.go). The layers' diff IDs then change, and so does
	// the config, which is rewritten with them; layers that are lazypull layers already
	// are copied as they are.
	Profile *profile.Profile
}

// DefaultJobs is the number of layers converted at once unless Options.Jobs says otherwise.
func DefaultJobs() int { return max(2, runtime.NumCPU()) }

// Summary is what Convert did.
type Summary struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
	// Digest is the digest of the manifest or index written under Destination.
	Digest string `json:"digest"`
	// Layers is the number of distinct layers converted or copied; Files and Chunks add up
	// what format.Write reported for them.
	Layers int `json:"layers"`
	Files  int `json:"files"`
	Chunks int `json:"chunks"`
	// Profiled is the number of files laid out first by Options.Profile, in all layers.
	Profiled int `json:"profiled_files,omitempty"`
	// BytesIn is the compressed size of the source layers read, BytesOut that of the layers
	// written.
	BytesIn  int64   `json:"bytes_in"`
	BytesOut int64   `json:"bytes_out"`
	Seconds  float64 `json:"seconds"`
}

// converter holds one run of Convert.
type converter struct {
	srcLoc, dstLoc   location
	src              source
	dst              sink
	opts             Options
	progress         Progress
	log              *slog.Logger
	jobs             int
	writeConcurrency int // format.Write concurrency per layer
	tmpDir           string
}

// Convert reads the image src names and writes it to dst with every layer in lazypull format.
// src and dst are registry references or oci:DIR[:TAG] (an OCI image layout). On error nothing
// is tagged under dst; blobs already written may remain, unreferenced.
func Convert(ctx context.Context, src, dst string, opts Options) (*Summary, error) {
	start := time.Now()
	c, err := newConverter(src, dst, opts)
	if err != nil {
		return nil, err
	}

	p, err := c.plan(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.dst.check(ctx); err != nil {
		return nil, fmt.Errorf("write %s: %w", c.dstLoc, err)
	}

	// The CPUs go to the layers converted at once: all of them to a lone large layer.
	c.writeConcurrency = max(1, runtime.GOMAXPROCS(0)/max(1, min(c.jobs, len(p.layers))))

	c.tmpDir, err = os.MkdirTemp(opts.TempDir, "lazypull-convert-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(c.tmpDir)

	if err := c.writeBlobs(ctx, p); err != nil {
		return nil, err
	}
	root, err := c.writeManifests(ctx, p)
	if err != nil {
		return nil, err
	}

	s := &Summary{
		Source:      c.srcLoc.raw,
		Destination: c.dstLoc.raw,
		Digest:      root.Digest.String(),
		Layers:      len(p.layers),
	}
	for _, j := range p.layers {
		s.Files += j.Files
		s.Chunks += j.Chunks
		s.Profiled += j.Profiled
		s.BytesIn += j.Source.Size
		s.BytesOut += j.Result.Size
	}
	s.Seconds = time.Since(start).Seconds()
	return s, nil
}

func newConverter(src, dst string, opts Options) (*converter, error) {
	c := &converter{opts: opts, progress: opts.Progress, log: opts.Logger, jobs: opts.Jobs}
	var err error
	if c.srcLoc, err = parseLocation(src, opts.PlainHTTP); err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	if c.dstLoc, err = parseLocation(dst, opts.PlainHTTP); err != nil {
		return nil, fmt.Errorf("destination: %w", err)
	}
	if _, ok := c.dstLoc.ref.(name.Digest); ok {
		return nil, fmt.Errorf("destination %s: must be a tag, not a digest (the converted image has a new digest)", dst)
	}
	if c.jobs < 0 {
		return nil, fmt.Errorf("jobs must be at least 1, not %d", c.jobs)
	}
	if c.jobs == 0 {
		c.jobs = DefaultJobs()
	}
	if c.progress == nil {
		c.progress = nopProgress{}
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}

	kc := opts.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	tr := opts.Transport
	if tr == nil {
		tr = remote.DefaultTransport
	}
	ropts := append([]remote.Option{
		remote.WithAuthFromKeychain(kc),
		remote.WithTransport(tr),
		remote.WithUserAgent("lazypull"),
		remote.WithJobs(c.jobs),
	}, opts.RemoteOptions...)

	if c.srcLoc.isLayout() {
		c.src = &layoutSource{loc: c.srcLoc}
	} else {
		p, err := remote.NewPuller(ropts...)
		if err != nil {
			return nil, err
		}
		c.src = &remoteSource{ref: c.srcLoc.ref, puller: p}
	}
	if c.dstLoc.isLayout() {
		c.dst = &layoutSink{loc: c.dstLoc}
	} else {
		p, err := remote.NewPusher(ropts...)
		if err != nil {
			return nil, err
		}
		c.dst = &remoteSink{ref: c.dstLoc.ref, pusher: p, keychain: kc, transport: tr}
	}
	return c, nil
}

// writeBlobs converts every distinct layer, jobs at a time, and writes it and every config
// to the destination.
func (c *converter) writeBlobs(ctx context.Context, p *plan) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.jobs)
	for _, j := range p.layers {
		g.Go(func() error { return c.runLayer(gctx, j) })
	}
	// A layout by profile changes diff IDs, so configs are known only once every layer is.
	if c.opts.Profile == nil {
		c.writeConfigs(gctx, g, p)
	}
	err := g.Wait()
	if err == nil && c.opts.Profile != nil {
		for _, img := range p.images {
			if err := img.newDiffIDs(p.layerFor); err != nil {
				return err
			}
		}
		g, gctx = errgroup.WithContext(ctx)
		c.writeConfigs(gctx, g, p)
		err = g.Wait()
	}
	if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return fmt.Errorf("convert %s: %w", c.srcLoc, ctx.Err())
	}
	return err
}

// writeConfigs writes every distinct config in g.
func (c *converter) writeConfigs(ctx context.Context, g *errgroup.Group, p *plan) {
	for _, img := range p.uniqueConfigs() {
		g.Go(func() error {
			err := c.dst.putBlob(ctx, img.configDesc, func() (io.ReadCloser, error) { return readerOf(img.config), nil })
			if err != nil {
				return fmt.Errorf("write config %s of %s to %s: %w", img.configDesc.Digest, img.name, c.dstLoc, err)
			}
			return nil
		})
	}
}

// writeManifests writes the converted manifests and, for a multi-platform result, the index,
// and tags the root last. It returns the root's descriptor.
func (c *converter) writeManifests(ctx context.Context, p *plan) (v1.Descriptor, error) {
	for _, img := range p.images {
		if err := img.buildOutput(p.layerFor); err != nil {
			return v1.Descriptor{}, err
		}
	}
	if p.index == nil {
		img := p.images[0]
		if err := c.dst.tag(ctx, img.outDesc, img.outRaw); err != nil {
			return v1.Descriptor{}, fmt.Errorf("write %s: %w", c.dstLoc, err)
		}
		c.log.Info("tagged", "destination", c.dstLoc.raw, "digest", img.outDesc.Digest.String(), "mediaType", string(img.outDesc.MediaType))
		return img.outDesc, nil
	}

	out := v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Annotations:   p.index.Annotations,
	}
	for _, img := range p.images {
		if err := c.dst.putManifest(ctx, img.outDesc, img.outRaw); err != nil {
			return v1.Descriptor{}, fmt.Errorf("write manifest of %s to %s: %w", img.name, c.dstLoc, err)
		}
		c.log.Info("wrote manifest", "image", img.name, "digest", img.outDesc.Digest.String())
		d := img.outDesc
		d.Platform = img.sourceDesc.Platform
		d.Annotations = img.sourceDesc.Annotations
		out.Manifests = append(out.Manifests, d)
	}
	raw, err := json.Marshal(out)
	if err != nil {
		return v1.Descriptor{}, err
	}
	desc := descriptorOf(raw, types.OCIImageIndex)
	if err := c.dst.tag(ctx, desc, raw); err != nil {
		return v1.Descriptor{}, fmt.Errorf("write %s: %w", c.dstLoc, err)
	}
	c.log.Info("tagged", "destination", c.dstLoc.raw, "digest", desc.Digest.String(), "mediaType", string(desc.MediaType), "images", len(p.images))
	return desc, nil
}
