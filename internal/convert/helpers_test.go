package convert

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"lazypull/format"
	"lazypull/internal/artifact"
	"lazypull/internal/ocilayout"
	"lazypull/internal/testutil"
)

// testOptions are Options for tests: no credentials from the machine, quick retries.
func testOptions() Options {
	return Options{
		Keychain: authn.NewMultiKeychain(), // anonymous
		Jobs:     2,
		RemoteOptions: []remote.Option{
			remote.WithRetryBackoff(remote.Backoff{Duration: 10 * time.Millisecond, Factor: 1, Steps: 1}),
		},
	}
}

// newRegistry starts an in-process registry; wrap, if not nil, wraps its handler.
func newRegistry(t *testing.T, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	return testutil.NewRegistry(t, testutil.WithHandler(wrap)).Host
}

// randomTar makes a layer tar with directories, small and large files (several chunks),
// an empty file, a symlink and a hard link.
func randomTar(t *testing.T, rng *rand.Rand, nfiles int) []byte {
	t.Helper()
	dir := fmt.Sprintf("d%d/", rng.Intn(1000))
	es := []testutil.Entry{testutil.Dir(dir)}
	for i := range nfiles {
		size := rng.Intn(4096)
		if i == 0 {
			size = 600<<10 + rng.Intn(1000) // more than one chunk
		}
		data := make([]byte, size)
		rng.Read(data)
		es = append(es, testutil.File(fmt.Sprintf("%sf%d", dir, i), data))
	}
	empty := testutil.File(dir+"empty", nil)
	empty.Hdr.Mode = 0o600
	es = append(es, empty, testutil.Symlink(dir+"link", "f0"), testutil.Link(dir+"hard", dir+"f0"))
	return testutil.Tar(t, es...)
}

func compress(t *testing.T, data []byte, mt types.MediaType) []byte {
	t.Helper()
	var buf bytes.Buffer
	switch mt {
	case types.DockerLayer, types.OCILayer:
		zw := gzip.NewWriter(&buf)
		zw.Write(data)
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
	case types.OCILayerZStd:
		zw, err := zstd.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		zw.Write(data)
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
	default:
		buf.Write(data)
	}
	return buf.Bytes()
}

func sha(b []byte) v1.Hash {
	s := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
}

// fixture is an image built by hand, blob by blob, so tests can put anything in it.
type fixture struct {
	manifestMT  types.MediaType
	manifest    []byte
	config      []byte
	configDesc  v1.Descriptor
	layers      []v1.Descriptor
	blobs       map[v1.Hash][]byte
	tars        [][]byte // uncompressed layer content, by position
	annotations map[string]string
	platform    *v1.Platform
}

// layerSpec is one layer of a fixture: its media type and, to break it, its blob.
type layerSpec struct {
	mt   types.MediaType
	blob []byte // nil: the tar compressed as mt says
	// descSize, if not zero, is put in the descriptor in place of the blob's size.
	descSize int64
}

func newFixture(t *testing.T, rng *rand.Rand, oci bool, specs ...layerSpec) *fixture {
	t.Helper()
	f := &fixture{blobs: map[v1.Hash][]byte{}, platform: &v1.Platform{OS: "linux", Architecture: "amd64"},
		annotations: map[string]string{"org.opencontainers.image.title": "fixture"}}
	var diffIDs []v1.Hash
	for _, s := range specs {
		tr := randomTar(t, rng, 3+rng.Intn(5))
		blob := s.blob
		if blob == nil {
			blob = compress(t, tr, s.mt)
		}
		d := v1.Descriptor{MediaType: s.mt, Digest: sha(blob), Size: int64(len(blob))}
		if s.descSize != 0 {
			d.Size = s.descSize
		}
		f.blobs[d.Digest] = blob
		f.layers = append(f.layers, d)
		f.tars = append(f.tars, tr)
		diffIDs = append(diffIDs, sha(tr))
	}
	f.setConfig(t, diffIDs)
	f.build(t, oci)
	return f
}

func (f *fixture) setConfig(t *testing.T, diffIDs []v1.Hash) {
	t.Helper()
	cf := v1.ConfigFile{OS: f.platform.OS, Architecture: f.platform.Architecture, Variant: f.platform.Variant,
		RootFS: v1.RootFS{Type: "layers", DiffIDs: diffIDs}, Config: v1.Config{Cmd: []string{"/bin/sh"}}}
	b, err := json.Marshal(cf)
	if err != nil {
		t.Fatal(err)
	}
	// Not the way json.Marshal would write it: the bytes must survive unchanged, not be
	// re-serialized.
	f.config = append([]byte("  "), b...)
	f.configDesc = v1.Descriptor{MediaType: types.DockerConfigJSON, Digest: sha(f.config), Size: int64(len(f.config))}
	f.blobs[f.configDesc.Digest] = f.config
}

func (f *fixture) build(t *testing.T, oci bool) {
	t.Helper()
	f.manifestMT = types.DockerManifestSchema2
	if oci {
		f.manifestMT = types.OCIManifestSchema1
		f.configDesc.MediaType = types.OCIConfigJSON
	}
	m := v1.Manifest{SchemaVersion: 2, MediaType: f.manifestMT, Config: f.configDesc, Layers: f.layers}
	if oci {
		m.Annotations = f.annotations
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	f.manifest = b
}

func (f *fixture) desc() v1.Descriptor {
	d := descriptorOf(f.manifest, f.manifestMT)
	d.Platform = f.platform
	return d
}

// rawIndex builds an index over fixtures (and extra descriptors, such as attestations).
func rawIndex(t *testing.T, mt types.MediaType, fs []*fixture, extra ...v1.Descriptor) []byte {
	t.Helper()
	idx := v1.IndexManifest{SchemaVersion: 2, MediaType: mt, Annotations: map[string]string{"index": "kept"}}
	for _, f := range fs {
		idx.Manifests = append(idx.Manifests, f.desc())
	}
	idx.Manifests = append(idx.Manifests, extra...)
	b, err := json.Marshal(idx)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pushFixtures writes fixtures' blobs and manifests to a registry and tags root (a manifest
// or index of mt) as ref.
func pushFixtures(t *testing.T, ref string, root []byte, mt types.MediaType, fs ...*fixture) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fs {
		for h, b := range f.blobs {
			l := &blobLayer{desc: v1.Descriptor{Digest: h, Size: int64(len(b)), MediaType: types.OCILayer}, open: func() (io.ReadCloser, error) { return readerOf(b), nil }}
			if err := remote.WriteLayer(r.Context(), l); err != nil {
				t.Fatal(err)
			}
		}
		if err := remote.Put(r.Context().Digest(sha(f.manifest).String()), artifact.Raw{Bytes: f.manifest, Type: f.manifestMT}); err != nil {
			t.Fatal(err)
		}
	}
	if err := remote.Put(r, artifact.Raw{Bytes: root, Type: mt}); err != nil {
		t.Fatal(err)
	}
}

// blobPath is where the OCI layout at dir keeps the blob h.
func blobPath(dir string, h v1.Hash) string {
	return filepath.Join(dir, "blobs", h.Algorithm, h.Hex)
}

// writeFixtures writes fixtures into an OCI layout at dir and tags root as tag.
func writeFixtures(t *testing.T, dir, tag string, root []byte, mt types.MediaType, fs ...*fixture) {
	t.Helper()
	put := func(b []byte) { testutil.WriteFile(t, blobPath(dir, sha(b)), b, 0o644) }
	for _, f := range fs {
		for _, b := range f.blobs {
			put(b)
		}
		put(f.manifest)
	}
	put(root)
	if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	idx := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{{
		MediaType: mt, Digest: sha(root), Size: int64(len(root)), Annotations: map[string]string{ocilayout.AnnotationRefName: tag},
	}}}
	b, _ := json.Marshal(idx)
	if err := os.WriteFile(filepath.Join(dir, "index.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// layoutTags lists the tags in dir/index.json; none if there is no layout.
func layoutTags(t *testing.T, dir string) []string {
	t.Helper()
	idx, err := ocilayout.At(dir).Index()
	if err != nil {
		return nil
	}
	var tags []string
	for _, d := range idx.Manifests {
		tags = append(tags, d.Annotations[ocilayout.AnnotationRefName])
	}
	return tags
}

// registryHasTag asks the registry at host (unwrapped, or through a handler that lets GETs
// pass) whether repo:tag exists.
func registryHasTag(t *testing.T, ref string) bool {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	_, err = remote.Head(r)
	return err == nil
}

// readDst reads a converted manifest or index from a layout or registry location, as the
// generic ggcr library sees it.
type dstReader struct {
	t   *testing.T
	loc string
}

func (d dstReader) root() (v1.Descriptor, []byte) {
	d.t.Helper()
	loc, err := parseLocation(d.loc, false)
	if err != nil {
		d.t.Fatal(err)
	}
	var src source
	if loc.isLayout() {
		src = &layoutSource{loc: loc}
	} else {
		p, err := remote.NewPuller()
		if err != nil {
			d.t.Fatal(err)
		}
		src = &remoteSource{ref: loc.ref, puller: p}
	}
	desc, raw, err := src.root(context.Background())
	if err != nil {
		d.t.Fatalf("read %s: %v", d.loc, err)
	}
	return desc, raw
}

// image opens a converted image with ggcr, from a layout or registry.
func (d dstReader) image(h v1.Hash) v1.Image {
	d.t.Helper()
	loc, _ := parseLocation(d.loc, false)
	var img v1.Image
	var err error
	if loc.isLayout() {
		// ggcr finds only what index.json lists; an index's children through the index.
		var p layout.Path
		if p, err = layout.FromPath(loc.dir); err == nil {
			if img, err = p.Image(h); err != nil {
				rootDesc, _ := d.root()
				var ii v1.ImageIndex
				if ii, err = p.ImageIndex(); err == nil {
					if ii, err = ii.ImageIndex(rootDesc.Digest); err == nil {
						img, err = ii.Image(h)
					}
				}
			}
		}
	} else {
		img, err = remote.Image(loc.ref.Context().Digest(h.String()))
	}
	if err != nil {
		d.t.Fatal(err)
	}
	return img
}

// blob reads the blob h from the layout or registry by digest alone, as a reader that
// ignores a descriptor's data field does.
func (d dstReader) blob(h v1.Hash) []byte {
	d.t.Helper()
	loc, _ := parseLocation(d.loc, false)
	if loc.isLayout() {
		b, err := os.ReadFile(blobPath(loc.dir, h))
		if err != nil {
			d.t.Fatalf("blob %s: %v", h, err)
		}
		return b
	}
	l, err := remote.Layer(loc.ref.Context().Digest(h.String()))
	if err != nil {
		d.t.Fatalf("blob %s: %v", h, err)
	}
	rc, err := l.Compressed()
	if err != nil {
		d.t.Fatalf("blob %s: %v", h, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		d.t.Fatalf("blob %s: %v", h, err)
	}
	return b
}

// check runs checkConverted on the image h names and reads its config blob on its own:
// ggcr takes a registry image's config from the manifest when the manifest embeds it, so
// checkConverted alone would not see a config blob that was never written.
func (d dstReader) check(h v1.Hash, config []byte, tars [][]byte, annotations map[string]string) {
	d.t.Helper()
	checkConverted(d.t, d.image(h), config, tars, annotations)
	if b := d.blob(sha(config)); !bytes.Equal(b, config) {
		d.t.Errorf("config blob %s: %d bytes stored, not the config", sha(config), len(b))
	}
}

// checkConverted checks a converted image against the tars it was made from: OCI media
// types, the config blob unchanged, the annotations kept, and every layer a lazypull layer
// that decompresses to exactly the original tar and opens through its index.
func checkConverted(t *testing.T, img v1.Image, config []byte, tars [][]byte, annotations map[string]string) {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.MediaType != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %s", m.MediaType)
	}
	if m.Config.MediaType != types.OCIConfigJSON || m.Config.Digest != sha(config) || m.Config.Size != int64(len(config)) {
		t.Errorf("config descriptor %+v, want %s with OCI media type", m.Config, sha(config))
	}
	rawConfig, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rawConfig, config) {
		t.Errorf("config blob changed")
	}
	for k, v := range annotations {
		if m.Annotations[k] != v {
			t.Errorf("manifest annotation %s = %q, want %q", k, m.Annotations[k], v)
		}
	}
	if len(m.Layers) != len(tars) {
		t.Fatalf("%d layers, want %d", len(m.Layers), len(tars))
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for i, ld := range m.Layers {
		if ld.MediaType != format.MediaTypeLayer || !format.IsLayer(ld.Annotations) {
			t.Errorf("layer %d: media type %s, annotations %v", i, ld.MediaType, ld.Annotations)
		}
		blob := testutil.Compressed(t, layers[i])
		if sha(blob) != ld.Digest || int64(len(blob)) != ld.Size {
			t.Errorf("layer %d: blob does not match its descriptor", i)
		}
		zr, err := zstd.NewReader(bytes.NewReader(blob))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(zr)
		zr.Close()
		if err != nil {
			t.Fatalf("layer %d: zstd: %v", i, err)
		}
		if !bytes.Equal(got, tars[i]) {
			t.Errorf("layer %d: decompresses to %d bytes (%s), want the original %d bytes (%s)", i, len(got), sha(got), len(tars[i]), sha(tars[i]))
		}
		fl, err := format.Open(bytes.NewReader(blob), int64(len(blob)), ld.Annotations)
		if err != nil {
			t.Errorf("layer %d: open index: %v", i, err)
			continue
		}
		// The index gives each header run a digest (version 2), which the blob's frames
		// match: VerifyLayer checks them as it streams.
		loc, err := format.LocationFromAnnotations(ld.Annotations)
		if err != nil {
			t.Fatal(err)
		}
		if c, err := format.VerifyLayer(bytes.NewReader(blob), fl.Index, loc.Offset); err != nil || fl.Index.RunDigests == nil || c.Runs != len(fl.Index.RunDigests) {
			t.Errorf("layer %d: %d run digests, %d runs checked: %v; want a version 2 index whose runs match", i, len(fl.Index.RunDigests), c.Runs, err)
		}
	}
}

// tarsOf reads the uncompressed layers of a ggcr image.
func tarsOf(t *testing.T, img v1.Image) [][]byte {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, l := range ls {
		out = append(out, testutil.Uncompressed(t, l))
	}
	return out
}
