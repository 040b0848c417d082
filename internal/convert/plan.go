package convert

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/format"
)

// plan is everything Convert will write, worked out from the source's manifests and configs
// before any layer is read, so an image lazypull cannot convert is refused before any work.
type plan struct {
	// index is the source index when the result is an index too; nil when it is one manifest.
	index  *v1.IndexManifest
	images []*imageJob
	layers []*layerJob // distinct layers, in the order first listed
	byKey  map[layerKey]*layerJob
}

// imageJob is one image (one platform) of the source and its converted manifest.
type imageJob struct {
	name       string        // as messages name it: the source, with the platform if from an index
	sourceDesc v1.Descriptor // as the source index lists it (platform, annotations)
	manifest   *v1.Manifest
	config     []byte        // the original config blob, written unchanged
	configDesc v1.Descriptor // its descriptor in the converted manifest

	outRaw  []byte // the converted manifest
	outDesc v1.Descriptor
}

// Annotations of index entries that are not images to convert.
const (
	annotationDockerRefType   = "vnd.docker.reference.type"
	dockerRefTypeAttestation  = "attestation-manifest"
	maxPlatformsInErrorString = 16
)

func (c *converter) plan(ctx context.Context) (*plan, error) {
	rootDesc, raw, err := c.src.root(ctx)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", c.srcLoc, err)
	}
	kind, err := classifyManifest(rootDesc.MediaType, raw)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", c.srcLoc, err)
	}
	p := &plan{byKey: map[layerKey]*layerJob{}}

	if kind == kindImage {
		img, cf, err := c.loadImage(ctx, c.srcLoc.raw, rootDesc, raw)
		if err != nil {
			return nil, err
		}
		// A config that names no platform has nothing to hold against the one asked for.
		if want := c.opts.Platform; want != nil && (cf.OS != "" || cf.Architecture != "") {
			have := &v1.Platform{OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant, OSVersion: cf.OSVersion}
			if !platformMatches(have, *want) {
				return nil, fmt.Errorf("read %s: image is for %s, not %s", c.srcLoc, platformString(have), want)
			}
		}
		p.add(img, cf)
		return p, nil
	}

	idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("read %s: parse index: %w", c.srcLoc, err)
	}
	children, err := c.selectChildren(idx)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", c.srcLoc, err)
	}
	for _, d := range children {
		name := fmt.Sprintf("%s (%s)", c.srcLoc, platformString(d.Platform))
		raw, err := c.src.manifest(ctx, d)
		if err != nil {
			return nil, fmt.Errorf("read manifest %s of %s: %w", d.Digest, name, err)
		}
		k, err := classifyManifest(d.MediaType, raw)
		if err != nil {
			return nil, fmt.Errorf("read manifest %s of %s: %w", d.Digest, name, err)
		}
		if k == kindIndex {
			return nil, fmt.Errorf("read manifest %s of %s: %w: an index inside an index", d.Digest, name, ErrUnsupportedMediaType)
		}
		img, cf, err := c.loadImage(ctx, name, d, raw)
		if err != nil {
			return nil, err
		}
		p.add(img, cf)
	}
	if c.opts.Platform == nil {
		p.index = idx
	}
	return p, nil
}

// selectChildren picks the index entries to convert: every image but attestations, or the
// first that matches Options.Platform.
func (c *converter) selectChildren(idx *v1.IndexManifest) ([]v1.Descriptor, error) {
	var picked []v1.Descriptor
	var have []string
	for _, d := range idx.Manifests {
		if d.Annotations[annotationDockerRefType] == dockerRefTypeAttestation {
			// It refers to the source manifest by digest, which the result does not keep.
			c.log.Info("skipping attestation manifest", "source", c.srcLoc.raw, "digest", d.Digest.String())
			continue
		}
		have = append(have, platformString(d.Platform))
		if c.opts.Platform == nil || platformMatches(d.Platform, *c.opts.Platform) {
			picked = append(picked, d)
		}
	}
	if c.opts.Platform != nil {
		if len(picked) == 0 {
			sort.Strings(have)
			if len(have) > maxPlatformsInErrorString {
				have = append(have[:maxPlatformsInErrorString], "...")
			}
			return nil, fmt.Errorf("no image for platform %s (the index has: %s)", c.opts.Platform, strings.Join(have, ", "))
		}
		if len(picked) > 1 {
			c.log.Info("several images match the platform; taking the first", "platform", c.opts.Platform.String(), "digest", picked[0].Digest.String())
		}
		return picked[:1], nil
	}
	if len(picked) == 0 {
		return nil, fmt.Errorf("the index lists no images")
	}
	return picked, nil
}

// loadImage reads an image's config and checks that every layer can be converted.
func (c *converter) loadImage(ctx context.Context, name string, desc v1.Descriptor, raw []byte) (*imageJob, *v1.ConfigFile, error) {
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: parse manifest: %w", name, err)
	}
	if err := checkConfigMediaType(m.Config.MediaType); err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", name, err)
	}
	rc, err := c.src.blob(ctx, m.Config)
	if err != nil {
		return nil, nil, fmt.Errorf("read config %s of %s: %w", m.Config.Digest, name, err)
	}
	config, err := readVerified(rc, m.Config)
	rc.Close()
	if err != nil {
		return nil, nil, fmt.Errorf("read config %s of %s: %w", m.Config.Digest, name, err)
	}
	cf, err := v1.ParseConfigFile(bytes.NewReader(config))
	if err != nil {
		return nil, nil, fmt.Errorf("read config %s of %s: %w", m.Config.Digest, name, err)
	}
	if n := len(cf.RootFS.DiffIDs); n != len(m.Layers) {
		return nil, nil, fmt.Errorf("read %s: config %s lists %d diff IDs for %d layers", name, m.Config.Digest, n, len(m.Layers))
	}
	for _, l := range m.Layers {
		if format.IsLayer(l.Annotations) {
			continue
		}
		if _, err := layerCompression(l.MediaType); err != nil {
			return nil, nil, fmt.Errorf("convert layer %s of %s: %w", l.Digest, name, err)
		}
	}
	img := &imageJob{
		name:       name,
		sourceDesc: desc,
		manifest:   m,
		config:     config,
		configDesc: v1.Descriptor{MediaType: types.OCIConfigJSON, Digest: m.Config.Digest, Size: m.Config.Size},
	}
	return img, cf, nil
}

// add records img and its layers, each distinct layer once.
func (p *plan) add(img *imageJob, cf *v1.ConfigFile) {
	p.images = append(p.images, img)
	for i, l := range img.manifest.Layers {
		k := keyOf(l)
		j, ok := p.byKey[k]
		if !ok {
			j = &layerJob{Layer: Layer{Image: img.name, Source: l, Copied: k.copy}}
			j.comp, _ = layerCompression(l.MediaType) // checked by loadImage
			p.byKey[k] = j
			p.layers = append(p.layers, j)
		}
		if !slices.Contains(j.diffIDs, cf.RootFS.DiffIDs[i]) {
			j.diffIDs = append(j.diffIDs, cf.RootFS.DiffIDs[i])
		}
	}
}

func keyOf(l v1.Descriptor) layerKey {
	return layerKey{digest: l.Digest, mt: l.MediaType, copy: format.IsLayer(l.Annotations)}
}

func (p *plan) layerFor(l v1.Descriptor) *layerJob { return p.byKey[keyOf(l)] }

// uniqueConfigs lists one image per distinct config blob.
func (p *plan) uniqueConfigs() []*imageJob {
	seen := map[v1.Hash]bool{}
	var out []*imageJob
	for _, img := range p.images {
		if !seen[img.configDesc.Digest] {
			seen[img.configDesc.Digest] = true
			out = append(out, img)
		}
	}
	return out
}

// maxEmbeddedConfig is the largest config the converted manifest carries in its config
// descriptor's data field (OCI image-spec 1.1), which saves a puller the config's round trip.
// Configs are a few KiB and base64 adds a third, so at this bound the manifest grows by at
// most about 22 KiB, bytes of a response the pull waits for anyway in place of a request of
// their own, and stays far below the 4 MiB a registry must accept and containerd (and
// lazypull's fetch) read for a manifest. A larger config (a long history) is left to its
// own request.
const maxEmbeddedConfig = 16 << 10

// buildOutput serializes the converted manifest: OCI media types, the original config blob
// (embedded in its descriptor too, up to maxEmbeddedConfig), the converted layers, the
// original annotations.
func (img *imageJob) buildOutput(layerFor func(v1.Descriptor) *layerJob) error {
	config := img.configDesc
	if len(img.config) <= maxEmbeddedConfig {
		// The config blob is written all the same: a reader that ignores data fetches it.
		config.Data = img.config
	}
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		Config:        config,
		Layers:        make([]v1.Descriptor, 0, len(img.manifest.Layers)),
		Annotations:   img.manifest.Annotations,
	}
	for _, l := range img.manifest.Layers {
		m.Layers = append(m.Layers, layerFor(l).Result)
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("manifest of %s: %w", img.name, err)
	}
	img.outRaw, img.outDesc = raw, descriptorOf(raw, types.OCIManifestSchema1)
	return nil
}

// newDiffIDs rewrites the config with the diff IDs of the converted layers where they
// differ from the source's (a layout by profile): rootfs.diff_ids is replaced, every
// other field is kept as it was. An image whose layers kept their diff IDs keeps its config
// byte for byte.
func (img *imageJob) newDiffIDs(layerFor func(v1.Descriptor) *layerJob) error {
	var cf v1.ConfigFile
	if err := json.Unmarshal(img.config, &cf); err != nil {
		return fmt.Errorf("config %s of %s: %w", img.configDesc.Digest, img.name, err)
	}
	ids := slices.Clone(cf.RootFS.DiffIDs) // as many as layers: checked by loadImage
	changed := false
	for i, l := range img.manifest.Layers {
		if d := layerFor(l).newDiffID; d != nil {
			ids[i], changed = *d, true
		}
	}
	if !changed {
		return nil
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(img.config, &top); err != nil {
		return fmt.Errorf("config %s of %s: %w", img.configDesc.Digest, img.name, err)
	}
	var rootfs map[string]json.RawMessage
	if err := json.Unmarshal(top["rootfs"], &rootfs); err != nil {
		return fmt.Errorf("config %s of %s: rootfs: %w", img.configDesc.Digest, img.name, err)
	}
	var err error
	if rootfs["diff_ids"], err = json.Marshal(ids); err != nil {
		return err
	}
	if top["rootfs"], err = json.Marshal(rootfs); err != nil {
		return err
	}
	raw, err := json.Marshal(top)
	if err != nil {
		return fmt.Errorf("config of %s: %w", img.name, err)
	}
	img.config, img.configDesc = raw, descriptorOf(raw, img.configDesc.MediaType)
	return nil
}

// platformMatches reports whether have satisfies want; fields want leaves empty match anything.
func platformMatches(have *v1.Platform, want v1.Platform) bool {
	if have == nil {
		return false
	}
	if have.OS != want.OS || have.Architecture != want.Architecture {
		return false
	}
	if want.Variant != "" && normalizedVariant(have.Architecture, have.Variant) != normalizedVariant(want.Architecture, want.Variant) {
		return false
	}
	return want.OSVersion == "" || want.OSVersion == have.OSVersion
}

// normalizedVariant fills in the variant an architecture implies when none is given, as
// containerd does: arm64 is v8, arm is v7.
func normalizedVariant(arch, variant string) string {
	if variant != "" {
		return variant
	}
	switch arch {
	case "arm64":
		return "v8"
	case "arm":
		return "v7"
	}
	return ""
}

func platformString(p *v1.Platform) string {
	if p == nil || (p.OS == "" && p.Architecture == "") {
		return "unknown platform"
	}
	return p.String()
}

func readerOf(b []byte) io.ReadCloser { return io.NopCloser(bytes.NewReader(b)) }
