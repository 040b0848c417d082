// Package imagebuild packs layer directories into an OCI image layout (oci-layout, index.json,
// blobs/sha256) with gzip-compressed tar layers, the way Docker would have written them. It
// builds lazypull's test images from a root filesystem plus overlayfs upper directories,
// without needing a container engine.
package imagebuild

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"runtime"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"golang.org/x/sync/errgroup"

	"lazypull/internal/ocilayout"
)

// Media types and annotations of the OCI image spec.
const (
	MediaTypeIndex     = "application/vnd.oci.image.index.v1+json"
	MediaTypeManifest  = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeConfig    = "application/vnd.oci.image.config.v1+json"
	MediaTypeLayerGzip = "application/vnd.oci.image.layer.v1.tar+gzip"
	AnnotationRefName  = ocilayout.AnnotationRefName
)

// Options describes the image Build writes.
type Options struct {
	// Tag is stored as the org.opencontainers.image.ref.name annotation of the manifest in
	// index.json (e.g. "python", used as oci:DIR:python by skopeo). Required.
	Tag string
	// Cmd, Entrypoint, Env, WorkingDir and Labels go into the image config's "config".
	Cmd        []string
	Entrypoint []string
	Env        []string
	WorkingDir string
	Labels     map[string]string
	// Created is the config's creation time; zero leaves it out, keeping the output a pure
	// function of the layer contents.
	Created time.Time
	// OS and Architecture default to runtime.GOOS and runtime.GOARCH.
	OS, Architecture string
	// GzipLevel is the gzip compression level; 0 means gzip.DefaultCompression.
	GzipLevel int
}

// Descriptor is an OCI content descriptor.
type Descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *Platform         `json:"platform,omitempty"`
}

// Platform is the platform of an image manifest in an index.
type Platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Variant      string `json:"variant,omitempty"`
}

// Layer describes one written layer blob.
type Layer struct {
	Descriptor
	// DiffID is the digest of the uncompressed tar, UncompressedSize its length.
	DiffID           string
	UncompressedSize int64
	// Dir is the directory the layer was made from.
	Dir string
}

// Result describes the image Build wrote.
type Result struct {
	Manifest Descriptor // as listed in index.json
	Config   Descriptor
	Layers   []Layer
}

type manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        Descriptor   `json:"config"`
	Layers        []Descriptor `json:"layers"`
}

type imageConfig struct {
	Created      *time.Time      `json:"created,omitempty"`
	Architecture string          `json:"architecture"`
	Variant      string          `json:"variant,omitempty"`
	OS           string          `json:"os"`
	Config       containerConfig `json:"config"`
	RootFS       rootFS          `json:"rootfs"`
}

type containerConfig struct {
	Env        []string          `json:"Env,omitempty"`
	Entrypoint []string          `json:"Entrypoint,omitempty"`
	Cmd        []string          `json:"Cmd,omitempty"`
	WorkingDir string            `json:"WorkingDir,omitempty"`
	Labels     map[string]string `json:"Labels,omitempty"`
}

type rootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

// Build writes an image made of layerDirs into the OCI layout at outDir, creating the layout if
// needed. layerDirs[0] is a full root filesystem; every later one is an overlayfs upper
// directory on top of the ones before it (see LayerOptions.Overlay). If index.json already
// lists a manifest with the same tag, that entry is replaced; other entries are kept. Layers
// are compressed in parallel (up to GOMAXPROCS at a time).
func Build(outDir string, layerDirs []string, opts Options) (*Result, error) {
	if opts.Tag == "" {
		return nil, errors.New("imagebuild: no tag given")
	}
	if len(layerDirs) == 0 {
		return nil, errors.New("imagebuild: no layer directories given")
	}
	if opts.OS == "" {
		opts.OS = runtime.GOOS
	}
	var variant string
	if opts.Architecture == "" {
		opts.Architecture = runtime.GOARCH
		if runtime.GOARCH == "arm64" {
			variant = "v8"
		}
	}
	if opts.GzipLevel == 0 {
		opts.GzipLevel = gzip.DefaultCompression
	}
	lay := ocilayout.At(outDir)
	if err := lay.Init(); err != nil {
		return nil, fmt.Errorf("imagebuild: %w", err)
	}

	res := &Result{Layers: make([]Layer, len(layerDirs))}
	var g errgroup.Group
	g.SetLimit(runtime.GOMAXPROCS(0))
	for i, dir := range layerDirs {
		g.Go(func() error {
			l, err := writeLayerBlob(lay, dir, LayerOptions{Overlay: i > 0}, opts.GzipLevel)
			if err != nil {
				return fmt.Errorf("imagebuild: layer %d: %w", i, err)
			}
			res.Layers[i] = *l
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}

	cfg := imageConfig{
		Architecture: opts.Architecture,
		Variant:      variant,
		OS:           opts.OS,
		Config: containerConfig{
			Env:        opts.Env,
			Entrypoint: opts.Entrypoint,
			Cmd:        opts.Cmd,
			WorkingDir: opts.WorkingDir,
			Labels:     opts.Labels,
		},
		RootFS: rootFS{Type: "layers"},
	}
	if !opts.Created.IsZero() {
		t := opts.Created.UTC()
		cfg.Created = &t
	}
	mf := manifest{SchemaVersion: 2, MediaType: MediaTypeManifest}
	for _, l := range res.Layers {
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, l.DiffID)
		mf.Layers = append(mf.Layers, l.Descriptor)
	}
	var err error
	if res.Config, err = writeJSONBlob(lay, MediaTypeConfig, cfg); err != nil {
		return nil, fmt.Errorf("imagebuild: config: %w", err)
	}
	mf.Config = res.Config
	if res.Manifest, err = writeJSONBlob(lay, MediaTypeManifest, mf); err != nil {
		return nil, fmt.Errorf("imagebuild: manifest: %w", err)
	}
	res.Manifest.Annotations = map[string]string{AnnotationRefName: opts.Tag}
	res.Manifest.Platform = &Platform{Architecture: opts.Architecture, OS: opts.OS, Variant: variant}

	mdesc, err := res.Manifest.v1()
	if err != nil {
		return nil, fmt.Errorf("imagebuild: %w", err)
	}
	if err := lay.Tag(mdesc, opts.Tag); err != nil {
		return nil, fmt.Errorf("imagebuild: %w", err)
	}
	return res, nil
}

// writeLayerBlob writes dir as a gzip layer blob into the layout.
func writeLayerBlob(lay *ocilayout.Layout, dir string, lopts LayerOptions, level int) (*Layer, error) {
	w, err := lay.NewBlob()
	if err != nil {
		return nil, err
	}
	defer w.Close()
	zw, err := gzip.NewWriterLevel(w, level)
	if err != nil {
		return nil, fmt.Errorf("gzip writer: %w", err)
	}
	uncompressed := newDigester(zw)
	if err := WriteLayer(uncompressed, dir, lopts); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("finish gzip: %w", err)
	}
	digest, size, err := w.Commit()
	if err != nil {
		return nil, fmt.Errorf("store blob: %w", err)
	}
	return &Layer{
		Descriptor:       Descriptor{MediaType: MediaTypeLayerGzip, Digest: digest.String(), Size: size},
		DiffID:           uncompressed.digest(),
		UncompressedSize: uncompressed.n,
		Dir:              dir,
	}, nil
}

func writeJSONBlob(lay *ocilayout.Layout, mediaType string, v any) (Descriptor, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return Descriptor{}, fmt.Errorf("encode: %w", err)
	}
	sum := sha256.Sum256(data)
	d := Descriptor{MediaType: mediaType, Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(data))}
	desc, err := d.v1()
	if err != nil {
		return Descriptor{}, err
	}
	if err := lay.WriteBlob(desc, bytes.NewReader(data)); err != nil {
		return Descriptor{}, err
	}
	return d, nil
}

// v1 is d as go-containerregistry's descriptor.
func (d Descriptor) v1() (v1.Descriptor, error) {
	h, err := v1.NewHash(d.Digest)
	if err != nil {
		return v1.Descriptor{}, err
	}
	out := v1.Descriptor{MediaType: types.MediaType(d.MediaType), Digest: h, Size: d.Size, Annotations: d.Annotations}
	if d.Platform != nil {
		out.Platform = &v1.Platform{Architecture: d.Platform.Architecture, OS: d.Platform.OS, Variant: d.Platform.Variant}
	}
	return out, nil
}

// digester passes writes through to w while hashing and counting them.
type digester struct {
	w io.Writer
	h hash.Hash
	n int64
}

func newDigester(w io.Writer) *digester { return &digester{w: w, h: sha256.New()} }

func (d *digester) Write(p []byte) (int, error) {
	n, err := d.w.Write(p)
	d.h.Write(p[:n])
	d.n += int64(n)
	return n, err
}

func (d *digester) digest() string { return "sha256:" + hex.EncodeToString(d.h.Sum(nil)) }
