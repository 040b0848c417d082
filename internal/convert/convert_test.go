package convert

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"maps"
	"math/rand"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/format"
	"lazypull/internal/ocilayout"
	"lazypull/internal/testutil"
)

func convertOK(t *testing.T, src, dst string, opts Options) *Summary {
	t.Helper()
	if opts.TempDir == "" {
		opts.TempDir = t.TempDir()
	}
	s, err := Convert(context.Background(), src, dst, opts)
	if err != nil {
		t.Fatalf("Convert(%s, %s): %v", src, dst, err)
	}
	if s.Source != src || s.Destination != dst {
		t.Errorf("summary names %s -> %s", s.Source, s.Destination)
	}
	if left, _ := os.ReadDir(opts.TempDir); len(left) != 0 {
		t.Errorf("temp files left behind: %v", left)
	}
	return s
}

func randomImage(t *testing.T, seed int64, layers int64) v1.Image {
	t.Helper()
	img, err := random.Image(300<<10, layers, random.WithSource(rand.NewSource(seed)))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func rawConfig(t *testing.T, img v1.Image) []byte {
	t.Helper()
	b, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A random (Docker schema 2, gzip) image from one registry repository to another.
func TestConvertRandomImageRegistry(t *testing.T) {
	host := newRegistry(t, nil)
	img := randomImage(t, 1, 3)
	src, dst := host+"/random/src:v1", host+"/random/dst:lazy"
	testutil.Push(t, src, img)

	s := convertOK(t, src, dst, testOptions())

	desc, raw := dstReader{t, dst}.root()
	if desc.Digest.String() != s.Digest {
		t.Errorf("summary digest %s, tag points at %s", s.Digest, desc.Digest)
	}
	if k, _ := classifyManifest(desc.MediaType, raw); k != kindImage || desc.MediaType != types.OCIManifestSchema1 {
		t.Errorf("result is %s, want an OCI manifest", desc.MediaType)
	}
	dstReader{t, dst}.check(desc.Digest, rawConfig(t, img), tarsOf(t, img), nil)
	if s.Layers != 3 || s.Files != 3 || s.Chunks < 3 || s.BytesIn == 0 || s.BytesOut == 0 {
		t.Errorf("summary %+v", s)
	}
}

// A random multi-platform index from a registry into an OCI layout: the result is an OCI
// index with the same platforms and annotations.
func TestConvertRandomIndexRegistryToLayout(t *testing.T) {
	host := newRegistry(t, nil)
	platforms := []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64", Variant: "v8"}}
	var adds []mutate.IndexAddendum
	var imgs []v1.Image
	for i, p := range platforms {
		img := randomImage(t, int64(10+i), 2)
		imgs = append(imgs, img)
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p, Annotations: map[string]string{"n": string(rune('a' + i))}}})
	}
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.DockerManifestList), adds...)
	src := host + "/random/index:v1"
	ref, _ := name.ParseReference(src)
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	dst := "oci:" + filepath.Join(t.TempDir(), "out") + ":multi"

	s := convertOK(t, src, dst, testOptions())

	desc, raw := dstReader{t, dst}.root()
	if desc.MediaType != types.OCIImageIndex || desc.Digest.String() != s.Digest {
		t.Fatalf("result %s %s, want an OCI index with digest %s", desc.MediaType, desc.Digest, s.Digest)
	}
	out, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Manifests) != len(platforms) {
		t.Fatalf("%d manifests, want %d", len(out.Manifests), len(platforms))
	}
	for i, d := range out.Manifests {
		if d.MediaType != types.OCIManifestSchema1 || d.Platform == nil || !d.Platform.Equals(platforms[i]) || d.Annotations["n"] != string(rune('a'+i)) {
			t.Errorf("entry %d: %s %v %v", i, d.MediaType, d.Platform, d.Annotations)
		}
		dstReader{t, dst}.check(d.Digest, rawConfig(t, imgs[i]), tarsOf(t, imgs[i]), nil)
	}
	if s.Layers != 4 {
		t.Errorf("summary counts %d layers, want 4", s.Layers)
	}
}

// A random image from an OCI layout (tag from the ref.name annotation) to a registry.
func TestConvertRandomImageLayoutToRegistry(t *testing.T) {
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	img := randomImage(t, 2, 2)
	other := randomImage(t, 3, 1)
	if err := p.AppendImage(other, layout.WithAnnotations(map[string]string{ocilayout.AnnotationRefName: "other"})); err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{ocilayout.AnnotationRefName: "v2"})); err != nil {
		t.Fatal(err)
	}
	dst := newRegistry(t, nil) + "/from/layout:v2"

	convertOK(t, "oci:"+dir+":v2", dst, testOptions())

	desc, _ := dstReader{t, dst}.root()
	dstReader{t, dst}.check(desc.Digest, rawConfig(t, img), tarsOf(t, img), nil)
}

// Every layer media type lazypull reads, Docker and OCI manifests, layout and registry.
func TestConvertMediaTypes(t *testing.T) {
	rng := rand.New(rand.NewSource(4))
	host := newRegistry(t, nil)
	for _, tc := range []struct {
		name string
		oci  bool
		mts  []types.MediaType
	}{
		{"docker", false, []types.MediaType{types.DockerLayer, types.DockerUncompressedLayer, types.DockerLayer}},
		{"oci", true, []types.MediaType{types.OCILayer, types.OCILayerZStd, types.OCIUncompressedLayer}},
		{"empty", true, nil},
	} {
		var specs []layerSpec
		for _, mt := range tc.mts {
			specs = append(specs, layerSpec{mt: mt})
		}
		f := newFixture(t, rng, tc.oci, specs...)
		var annotations map[string]string
		if tc.oci {
			annotations = f.annotations
		}
		t.Run(tc.name+"/layout", func(t *testing.T) {
			dir := t.TempDir()
			writeFixtures(t, dir, "src", f.manifest, f.manifestMT, f)
			dst := "oci:" + dir + ":dst" // the same layout: blobs are shared, tags added
			s := convertOK(t, "oci:"+dir+":src", dst, testOptions())
			desc, _ := dstReader{t, dst}.root()
			dstReader{t, dst}.check(desc.Digest, f.config, f.tars, annotations)
			if tags := layoutTags(t, dir); !slices.Equal(tags, []string{"src", "dst"}) {
				t.Errorf("layout tags %v, want [src dst]", tags)
			}
			if s.Layers != len(tc.mts) {
				t.Errorf("summary counts %d layers, want %d", s.Layers, len(tc.mts))
			}
		})
		t.Run(tc.name+"/registry", func(t *testing.T) {
			src := host + "/mt/" + tc.name + ":src"
			pushFixtures(t, src, f.manifest, f.manifestMT, f)
			dst := host + "/mt/" + tc.name + ":dst"
			convertOK(t, src, dst, testOptions())
			desc, _ := dstReader{t, dst}.root()
			dstReader{t, dst}.check(desc.Digest, f.config, f.tars, annotations)
		})
	}
}

// --platform picks one image out of an index and writes it as a single manifest; without
// it every image is converted, attestations skipped, and a layer two platforms share is
// converted once.
func TestConvertPlatforms(t *testing.T) {
	rng := rand.New(rand.NewSource(5))
	amd := newFixture(t, rng, true, layerSpec{mt: types.OCILayer}, layerSpec{mt: types.OCILayer})
	arm := newFixture(t, rng, true, layerSpec{mt: types.OCILayer})
	arm.platform = &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}
	// arm shares amd's first layer.
	arm.layers = append([]v1.Descriptor{amd.layers[0]}, arm.layers...)
	arm.tars = append([][]byte{amd.tars[0]}, arm.tars...)
	arm.blobs[amd.layers[0].Digest] = amd.blobs[amd.layers[0].Digest]
	arm.setConfig(t, []v1.Hash{sha(arm.tars[0]), sha(arm.tars[1])})
	arm.build(t, true)
	attest := v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: sha([]byte("attestation")), Size: 11,
		Platform:    &v1.Platform{OS: "unknown", Architecture: "unknown"},
		Annotations: map[string]string{annotationDockerRefType: dockerRefTypeAttestation}}
	root := rawIndex(t, types.OCIImageIndex, []*fixture{amd, arm}, attest)
	dir := t.TempDir()
	writeFixtures(t, dir, "latest", root, types.OCIImageIndex, amd, arm)

	t.Run("all", func(t *testing.T) {
		dst := "oci:" + filepath.Join(t.TempDir(), "all")
		s := convertOK(t, "oci:"+dir, dst, testOptions())
		desc, raw := dstReader{t, dst}.root()
		if desc.MediaType != types.OCIImageIndex {
			t.Fatalf("result is %s", desc.MediaType)
		}
		idx, _ := v1.ParseIndexManifest(bytes.NewReader(raw))
		if len(idx.Manifests) != 2 || idx.Annotations["index"] != "kept" {
			t.Fatalf("index %+v", idx)
		}
		for i, f := range []*fixture{amd, arm} {
			if !idx.Manifests[i].Platform.Equals(*f.platform) {
				t.Errorf("entry %d platform %v", i, idx.Manifests[i].Platform)
			}
			dstReader{t, dst}.check(idx.Manifests[i].Digest, f.config, f.tars, f.annotations)
		}
		if s.Layers != 3 {
			t.Errorf("converted %d layers, want 3 (one shared)", s.Layers)
		}
	})
	t.Run("single manifest source", func(t *testing.T) {
		single := t.TempDir()
		writeFixtures(t, single, "latest", amd.manifest, amd.manifestMT, amd)
		opts := testOptions()
		opts.Platform = amd.platform
		dst := "oci:" + filepath.Join(t.TempDir(), "amd")
		convertOK(t, "oci:"+single, dst, opts)
		desc, _ := dstReader{t, dst}.root()
		dstReader{t, dst}.check(desc.Digest, amd.config, amd.tars, amd.annotations)
	})
	for _, want := range []string{"linux/arm64", "linux/arm64/v8"} {
		t.Run(want, func(t *testing.T) {
			opts := testOptions()
			opts.Platform, _ = v1.ParsePlatform(want)
			dst := "oci:" + filepath.Join(t.TempDir(), "arm")
			s := convertOK(t, "oci:"+dir+":latest", dst, opts)
			desc, _ := dstReader{t, dst}.root()
			if desc.MediaType != types.OCIManifestSchema1 || s.Layers != 2 {
				t.Fatalf("result is %s with %d layers, want one manifest with 2", desc.MediaType, s.Layers)
			}
			dstReader{t, dst}.check(desc.Digest, arm.config, arm.tars, arm.annotations)
		})
	}
}

// Converting a converted image copies its layers unchanged; converting into a tag that
// exists replaces its entry and keeps the other tags.
func TestConvertTwice(t *testing.T) {
	rng := rand.New(rand.NewSource(6))
	f := newFixture(t, rng, false, layerSpec{mt: types.DockerLayer}, layerSpec{mt: types.DockerLayer})
	dir := t.TempDir()
	writeFixtures(t, dir, "src", f.manifest, f.manifestMT, f)
	first := convertOK(t, "oci:"+dir+":src", "oci:"+dir+":lazy", testOptions())
	again := convertOK(t, "oci:"+dir+":lazy", "oci:"+dir+":lazy", testOptions())
	if again.Digest != first.Digest || again.BytesIn != again.BytesOut || again.Files != 0 {
		t.Errorf("second conversion %+v, want the first's digest %s with layers copied", again, first.Digest)
	}
	if tags := layoutTags(t, dir); !slices.Equal(tags, []string{"src", "lazy"}) {
		t.Errorf("layout tags %v, want [src lazy]", tags)
	}
	desc, _ := dstReader{t, "oci:" + dir + ":lazy"}.root()
	dstReader{t, "oci:" + dir + ":lazy"}.check(desc.Digest, f.config, f.tars, nil)

	// Another image into the same tag replaces the entry.
	g := newFixture(t, rng, true, layerSpec{mt: types.OCILayerZStd})
	other := t.TempDir()
	writeFixtures(t, other, "latest", g.manifest, g.manifestMT, g)
	third := convertOK(t, "oci:"+other, "oci:"+dir+":lazy", testOptions())
	if tags := layoutTags(t, dir); !slices.Equal(tags, []string{"src", "lazy"}) {
		t.Errorf("layout tags %v, want [src lazy]", tags)
	}
	desc, _ = dstReader{t, "oci:" + dir + ":lazy"}.root()
	if desc.Digest.String() != third.Digest || third.Digest == first.Digest {
		t.Errorf("tag points at %s, want the new conversion %s", desc.Digest, third.Digest)
	}
	dstReader{t, "oci:" + dir + ":lazy"}.check(desc.Digest, g.config, g.tars, g.annotations)
}

// The converted manifest as JSON: media types, config descriptor, layer annotations.
func TestConvertManifestJSON(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	f := newFixture(t, rng, true, layerSpec{mt: types.OCILayerZStd})
	dir := t.TempDir()
	writeFixtures(t, dir, "latest", f.manifest, f.manifestMT, f)
	dst := "oci:" + filepath.Join(t.TempDir(), "out")
	convertOK(t, "oci:"+dir, dst, testOptions())
	_, raw := dstReader{t, dst}.root()
	var m struct {
		SchemaVersion int               `json:"schemaVersion"`
		MediaType     string            `json:"mediaType"`
		Config        v1.Descriptor     `json:"config"`
		Layers        []v1.Descriptor   `json:"layers"`
		Annotations   map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	if m.SchemaVersion != 2 || m.MediaType != string(types.OCIManifestSchema1) || m.Config.MediaType != types.OCIConfigJSON ||
		m.Config.Digest != f.configDesc.Digest || m.Annotations["org.opencontainers.image.title"] != "fixture" {
		t.Errorf("manifest %s", raw)
	}
	if len(m.Layers) != 1 || m.Layers[0].MediaType != format.MediaTypeLayer || m.Layers[0].Annotations[format.AnnotationIndexDigest] == "" {
		t.Errorf("layers %+v", m.Layers)
	}
}

// A registry that is not on loopback or a private network is spoken to over https unless
// PlainHTTP says otherwise.
func TestConvertPlainHTTP(t *testing.T) {
	addr := newRegistry(t, nil)
	_, port, _ := net.SplitHostPort(addr)
	// lazypull.test resolves to the test registry through this transport only.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = func(ctx context.Context, network, a string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, strings.Replace(a, "lazypull.test", "127.0.0.1", 1))
	}
	rng := rand.New(rand.NewSource(9))
	f := newFixture(t, rng, true, layerSpec{mt: types.OCILayer})
	dir := t.TempDir()
	writeFixtures(t, dir, "latest", f.manifest, f.manifestMT, f)
	dst := "lazypull.test:" + port + "/plain/http:v1"

	opts := testOptions()
	opts.Transport = tr
	opts.TempDir = t.TempDir()
	_, err := Convert(context.Background(), "oci:"+dir, dst, opts)
	if err == nil || !strings.Contains(err.Error(), "--plain-http") {
		t.Fatalf("without PlainHTTP: %v, want an error that suggests --plain-http", err)
	}
	opts.PlainHTTP = true
	s := convertOK(t, "oci:"+dir, dst, opts)
	ref, _ := name.ParseReference(addr + "/plain/http:v1")
	desc, err := remote.Head(ref)
	if err != nil || desc.Digest.String() != s.Digest {
		t.Errorf("tag: %v %v, want %s", desc, err, s.Digest)
	}
}

// With no Keychain given, credentials come from the Docker config (authn.DefaultKeychain).
func TestConvertDockerConfigCredentials(t *testing.T) {
	const user, pass = "lazy", "pull"
	needAuth := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
				w.Header().Set("WWW-Authenticate", `Basic realm="lazypull test"`)
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	host := newRegistry(t, needAuth)
	rng := rand.New(rand.NewSource(10))
	f := newFixture(t, rng, true, layerSpec{mt: types.OCILayer})
	dir := t.TempDir()
	writeFixtures(t, dir, "latest", f.manifest, f.manifestMT, f)
	dst := host + "/private/image:v1"

	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("DOCKER_CONFIG", filepath.Join(home, ".docker"))
	opts := testOptions()
	opts.Keychain = nil
	opts.TempDir = t.TempDir()
	if _, err := Convert(context.Background(), "oci:"+dir, dst, opts); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("without credentials: %v, want a 401", err)
	}

	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	cfg := `{"auths":{"` + host + `":{"auth":"` + auth + `"}}}`
	os.MkdirAll(filepath.Join(home, ".docker"), 0o700)
	if err := os.WriteFile(filepath.Join(home, ".docker", "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	convertOK(t, "oci:"+dir, dst, opts)
	convertOK(t, dst, "oci:"+filepath.Join(t.TempDir(), "back"), opts)
}

// The converted manifest carries a config up to maxEmbeddedConfig in its descriptor's data
// field, in either output, and writes the config blob all the same; a larger config is
// only written.
func TestConvertEmbedsConfig(t *testing.T) {
	rng := rand.New(rand.NewSource(11))
	host := newRegistry(t, nil)
	base := newFixture(t, rng, true, layerSpec{mt: types.OCILayer})
	// Leading blanks keep the config valid JSON: sized to just the bound and one past it.
	padded := func(size int) *fixture {
		f := *base
		f.blobs = maps.Clone(base.blobs)
		f.config = append(bytes.Repeat([]byte(" "), size-len(base.config)), base.config...)
		f.configDesc = v1.Descriptor{MediaType: types.OCIConfigJSON, Digest: sha(f.config), Size: int64(len(f.config))}
		f.blobs[f.configDesc.Digest] = f.config
		f.build(t, true)
		return &f
	}
	for _, tc := range []struct {
		name  string
		f     *fixture
		embed bool
	}{
		{"small", base, true},
		{"at the bound", padded(maxEmbeddedConfig), true},
		{"over the bound", padded(maxEmbeddedConfig + 1), false},
	} {
		dir := t.TempDir()
		writeFixtures(t, dir, "src", tc.f.manifest, tc.f.manifestMT, tc.f)
		for out, dst := range map[string]string{
			"layout":   "oci:" + t.TempDir() + ":dst", // not the source's: its blobs are not there
			"registry": host + "/embed/" + strings.ReplaceAll(tc.name, " ", "-") + ":dst",
		} {
			t.Run(tc.name+"/"+out, func(t *testing.T) {
				convertOK(t, "oci:"+dir+":src", dst, testOptions())
				_, raw := dstReader{t, dst}.root()
				m, err := v1.ParseManifest(bytes.NewReader(raw))
				if err != nil {
					t.Fatal(err)
				}
				if m.Config.Digest != sha(tc.f.config) || m.Config.Size != int64(len(tc.f.config)) {
					t.Fatalf("config descriptor %s %d, want %s %d", m.Config.Digest, m.Config.Size, sha(tc.f.config), len(tc.f.config))
				}
				switch {
				case tc.embed && !bytes.Equal(m.Config.Data, tc.f.config):
					t.Errorf("config data is %d bytes, want the %d-byte config blob", len(m.Config.Data), len(tc.f.config))
				case !tc.embed && m.Config.Data != nil:
					t.Errorf("a %d-byte config is embedded; the bound is %d", len(tc.f.config), maxEmbeddedConfig)
				}
				if b := (dstReader{t, dst}).blob(m.Config.Digest); !bytes.Equal(b, tc.f.config) {
					t.Errorf("config blob not written as it is: %d bytes", len(b))
				}
			})
		}
	}
}
