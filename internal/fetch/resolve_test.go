package fetch

import (
	"errors"
	"net/http"
	"runtime"
	"strings"
	"testing"

	"lazypull/internal/testutil"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// testImage is an OCI image of two layers, the second annotated like a lazypull layer.
func testImage(t *testing.T, seed uint64) v1.Image {
	t.Helper()
	img, err := mutate.Append(mutate.MediaType(empty.Image, types.OCIManifestSchema1),
		mutate.Addendum{Layer: static.NewLayer(testutil.RandBytes(seed, 5000), types.OCILayer)},
		mutate.Addendum{Layer: static.NewLayer(testutil.RandBytes(seed+1, 7000), types.OCILayerZStd),
			Annotations: map[string]string{"dev.lazypull.layer.index.offset": "10"}},
	)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func ggcrRegistry(t *testing.T) string {
	t.Helper()
	return testutil.NewRegistry(t).Host
}

func TestResolve(t *testing.T) {
	host := ggcrRegistry(t)
	img := testImage(t, 40)
	ref, _ := name.NewTag(host + "/lib/img:v1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	digest, _ := img.Digest()
	want, _ := img.Manifest()

	reg, _ := newReg(t, host, "lib/img:v1")
	for _, r := range []string{"", "v1", digest.String(), "@" + digest.String(), host + "/lib/img:v1", host + "/lib/img@" + digest.String()} {
		got, err := reg.Resolve(t.Context(), r, nil)
		if err != nil {
			t.Fatalf("Resolve(%q): %v", r, err)
		}
		if got.Descriptor.Digest != digest || got.Index != nil || got.Name != host+"/lib/img@"+digest.String() {
			t.Fatalf("Resolve(%q): %+v", r, got)
		}
		if got.Descriptor.MediaType != types.OCIManifestSchema1 {
			t.Fatalf("media type %s", got.Descriptor.MediaType)
		}
		if len(got.Manifest.Layers) != 2 || got.Manifest.Layers[1].Digest != want.Layers[1].Digest ||
			got.Manifest.Layers[1].Size != 7000 || got.Manifest.Layers[1].MediaType != types.OCILayerZStd ||
			got.Manifest.Layers[1].Annotations["dev.lazypull.layer.index.offset"] != "10" ||
			got.Manifest.Config.Digest != want.Config.Digest {
			t.Fatalf("manifest %+v", got.Manifest)
		}
	}
	// The config reads and verifies.
	got, _ := reg.Resolve(t.Context(), "", nil)
	cfg, err := reg.Layer(got.Manifest.Config).ReadAll(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if raw, _ := img.RawConfigFile(); string(raw) != string(cfg) {
		t.Fatal("config differs")
	}
	// Errors: unknown tag, other repository, bad references.
	_, err = reg.Resolve(t.Context(), "nope", nil)
	var fe *Error
	if !errors.As(err, &fe) || fe.StatusCode != 404 || fe.Temporary() || !strings.Contains(err.Error(), "lib/img:nope") {
		t.Fatalf("unknown tag: %v", err)
	}
	for _, bad := range []string{host + "/other/img:v1", "sha256:zz", "bad tag!"} {
		if _, err := reg.Resolve(t.Context(), bad, nil); err == nil {
			t.Errorf("Resolve(%q): no error", bad)
		}
	}
}

func TestResolveIndex(t *testing.T) {
	host := ggcrRegistry(t)
	other := "arm64"
	if runtime.GOARCH == "arm64" {
		other = "amd64"
	}
	here, there := testImage(t, 41), testImage(t, 43)
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: there, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: other}}},
		mutate.IndexAddendum{Add: here, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}}},
	)
	ref, _ := name.NewTag(host + "/multi:latest")
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	idxDigest, _ := idx.Digest()
	hereDigest, _ := here.Digest()
	thereDigest, _ := there.Digest()

	reg, _ := newReg(t, host, "multi")
	got, err := reg.Resolve(t.Context(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.Descriptor.Digest != hereDigest || got.Index == nil || got.Index.Digest != idxDigest ||
		got.Descriptor.Platform.Architecture != runtime.GOARCH || got.Descriptor.MediaType != types.OCIManifestSchema1 {
		t.Fatalf("default platform: %+v", got)
	}
	got, err = reg.Resolve(t.Context(), "latest", &v1.Platform{OS: "linux", Architecture: other})
	if err != nil || got.Descriptor.Digest != thereDigest {
		t.Fatalf("platform %s: %+v, %v", other, got, err)
	}
	_, err = reg.Resolve(t.Context(), "latest", &v1.Platform{OS: "linux", Architecture: "s390x"})
	if err == nil || !strings.Contains(err.Error(), "linux/s390x") || !strings.Contains(err.Error(), "linux/"+other) {
		t.Fatalf("missing platform: %v", err)
	}
	// FetchManifest returns the index itself, as the registry sent it.
	desc, raw, err := reg.FetchManifest(t.Context(), "latest")
	wantRaw, _ := idx.RawManifest()
	if err != nil || desc.Digest != idxDigest || desc.MediaType != types.OCIImageIndex || desc.Size != int64(len(wantRaw)) || string(raw) != string(wantRaw) {
		t.Fatalf("FetchManifest(latest) = %+v, %d bytes, %v; want the index %s", desc, len(raw), err, idxDigest)
	}
	if desc, _, err := reg.FetchManifest(t.Context(), hereDigest.String()); err != nil || desc.Digest != hereDigest || desc.MediaType != types.OCIManifestSchema1 {
		t.Fatalf("FetchManifest(%s) = %+v, %v", hereDigest, desc, err)
	}
}

// Manifests are checked against the digest they are asked for, or that the registry names.
func TestResolveChecksDigests(t *testing.T) {
	f := newFake("r")
	raw := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` + strings.Repeat("a", 64) + `","size":2},"layers":[]}`)
	good := f.addManifest("good", "application/vnd.oci.image.manifest.v1+json", raw)
	// A tag and a digest that serve other bytes than they should.
	f.manifests["sha256:"+strings.Repeat("b", 64)] = fakeManifest{"application/vnd.oci.image.manifest.v1+json", raw}
	_, host := serve(t, f)
	reg, _ := newReg(t, host, "r")
	if got, err := reg.Resolve(t.Context(), "good", nil); err != nil || got.Descriptor.Digest != good || got.Descriptor.Size != int64(len(raw)) {
		t.Fatalf("good: %+v %v", got, err)
	}
	_, err := reg.Resolve(t.Context(), "sha256:"+strings.Repeat("b", 64), nil)
	var fe *Error
	if !errors.As(err, &fe) || fe.Temporary() || !errors.Is(err, errMalformed) {
		t.Fatalf("wrong digest: %v", err)
	}
	// A Docker-Content-Digest that disagrees.
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Header().Set("Docker-Content-Digest", "sha256:"+strings.Repeat("c", 64))
		_, _ = w.Write(raw)
	})
	_, host2 := serve(t, h)
	reg2, _ := newReg(t, host2, "r")
	if _, err := reg2.Resolve(t.Context(), "latest", nil); !errors.Is(err, errMalformed) {
		t.Fatalf("Docker-Content-Digest mismatch: %v", err)
	}
}

func TestResolveRetries(t *testing.T) {
	f := newFake("r")
	raw := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` + strings.Repeat("a", 64) + `","size":2},"layers":[]}`)
	f.addManifest("t", "application/vnd.oci.image.manifest.v1+json", raw)
	n := 0
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n++; n <= 2 {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		f.ServeHTTP(w, r)
	})
	_, host := serve(t, h)
	reg, _ := newReg(t, host, "r")
	if _, err := reg.Resolve(t.Context(), "t", nil); err != nil {
		t.Fatal(err)
	}
	if s := reg.Stats(); s.Requests != 3 || s.Retries != 2 {
		t.Fatalf("stats %+v", s)
	}
}
