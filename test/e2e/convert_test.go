package e2e

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"lazypull/format"
	"lazypull/internal/convert"
	"lazypull/internal/testutil"
)

const pythonOutput = "hello from python"

// convert runs `lazypull convert --json` and decodes the summary it prints.
func (e *env) convert(t *testing.T, src, dst string) convert.Summary {
	t.Helper()
	out := mustEnv(t, e.cmdEnv, e.bin, "convert", "--json", src, dst)
	var s convert.Summary
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("convert --json printed %q: %v", out, err)
	}
	return s
}

// parseRef parses ref, an image reference to a registry of the test's (plain http).
func parseRef(t *testing.T, ref string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// remoteHead returns the descriptor of the image ref in its registry.
func remoteHead(t *testing.T, ref string) v1.Descriptor {
	t.Helper()
	d, err := remote.Head(parseRef(t, ref))
	if err != nil {
		t.Fatalf("head %s: %v", ref, err)
	}
	return *d
}

// pushImage writes img to the registry as ref.
func pushImage(t *testing.T, ref string, img v1.Image) {
	t.Helper()
	if err := remote.Write(parseRef(t, ref), img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

func remoteImage(t *testing.T, ref string, opts ...remote.Option) v1.Image {
	t.Helper()
	img, err := remote.Image(parseRef(t, ref), opts...)
	if err != nil {
		t.Fatalf("read %s: %v", ref, err)
	}
	return img
}

// remoteManifest reads the manifest of the image ref from its registry.
func remoteManifest(t *testing.T, ref string, opts ...remote.Option) *v1.Manifest {
	t.Helper()
	m, err := remoteImage(t, ref, opts...).Manifest()
	if err != nil {
		t.Fatalf("manifest of %s: %v", ref, err)
	}
	return m
}

// TestConvertedImageRunsInPlainContainerd converts the Debian + python3 image from an OCI
// layout and from the registry, and runs the original and both conversions with plain
// containerd (overlayfs snapshotter, runc): every one prints the same.
func TestConvertedImageRunsInPlainContainerd(t *testing.T) {
	e := setup(t)
	layout := filepath.Join(e.images, "python")
	repo := fmt.Sprintf("%s/e2e/python-%d", e.registry, os.Getpid())
	orig, fromLayout, fromRegistry := repo+":orig", repo+":lazy", repo+":lazy-from-registry"

	e.push(t, layout, "python", orig)
	s1 := e.convert(t, "oci:"+layout+":python", fromLayout)
	s2 := e.convert(t, orig, fromRegistry)
	if s1.Layers != 2 || s1.Files < 1000 || s1.Chunks < s1.Files {
		t.Errorf("summary of the layout conversion: %+v; want 2 layers, > 1000 files, a chunk or more per file", s1)
	}
	if s1.Digest != s2.Digest {
		t.Errorf("conversions differ: %s from the layout, %s from the registry", s1.Digest, s2.Digest)
	}

	origImg := remoteImage(t, orig)
	origCfg, _ := origImg.ConfigName()
	for _, ref := range []string{fromLayout, fromRegistry} {
		checkConverted(t, remoteImage(t, ref), origCfg)
	}

	for i, ref := range []string{orig, fromLayout, fromRegistry} {
		e.ctr(t, "image", "pull", "--plain-http", ref)
		id := fmt.Sprintf("e2e-%d-%d", os.Getpid(), i)
		out := e.ctr(t, "run", "--rm", ref, id)
		if strings.TrimSpace(out) != pythonOutput {
			t.Errorf("ctr run %s printed %q, want %q", ref, out, pythonOutput)
		}
	}
}

// manifestLayers returns img's manifest and its layers.
func manifestLayers(t *testing.T, img v1.Image) (*v1.Manifest, []v1.Layer) {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	return m, layers
}

// checkConverted checks a converted image against the format: zstd layers with the
// index annotations, the original config, and layers that decompress (with the zstd CLI)
// to the config's diff IDs.
func checkConverted(t *testing.T, img v1.Image, wantCfg v1.Hash) {
	t.Helper()
	m, layers := manifestLayers(t, img)
	if m.MediaType != "application/vnd.oci.image.manifest.v1+json" || m.Config.Digest != wantCfg {
		t.Errorf("manifest %s with config %s; want an OCI manifest with config %s", m.MediaType, m.Config.Digest, wantCfg)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	for i, desc := range m.Layers {
		if desc.MediaType != format.MediaTypeLayer || !format.IsLayer(desc.Annotations) {
			t.Errorf("layer %d: %s with annotations %v", i, desc.MediaType, desc.Annotations)
			continue
		}
		blob := testutil.Compressed(t, layers[i])
		cmd := exec.Command("zstd", "-dc")
		cmd.Stdin = strings.NewReader(string(blob))
		plain, err := cmd.Output()
		if err != nil {
			t.Fatalf("zstd -dc layer %d: %v", i, err)
		}
		if got := fmt.Sprintf("sha256:%x", sha256.Sum256(plain)); got != cfg.RootFS.DiffIDs[i].String() {
			t.Errorf("layer %d decompresses to %s, config diff ID %s", i, got, cfg.RootFS.DiffIDs[i])
		}
		l, err := format.Open(strings.NewReader(string(blob)), int64(len(blob)), desc.Annotations)
		if err != nil {
			t.Fatalf("open layer %d: %v", i, err)
		}
		if i == 1 {
			e, ok := l.Index.Lookup("/usr/lib/python3.11/os.py")
			if !ok {
				t.Fatal("usr/lib/python3.11/os.py not in the python layer")
			}
			b, err := l.ReadFile(e)
			if err != nil || !strings.Contains(string(b), "def makedirs") {
				t.Errorf("os.py through the index: %d bytes, %v", len(b), err)
			}
		}
	}
}

// TestConvertToLayout writes the result into an OCI layout that skopeo can read back.
func TestConvertToLayout(t *testing.T) {
	e := setup(t)
	dst := t.TempDir()
	s := e.convert(t, "oci:"+filepath.Join(e.images, "python")+":python", "oci:"+dst+":lazy")
	out := must(t, "skopeo", "inspect", "--raw", "oci:"+dst+":lazy")
	if !strings.Contains(out, format.AnnotationIndexDigest) {
		t.Fatalf("skopeo reads a manifest without lazypull annotations: %s", out)
	}
	if s.BytesOut == 0 || s.BytesIn == 0 {
		t.Errorf("summary %+v: no bytes counted", s)
	}
}

// TestConvertBadInput: each failure is one clear line and a non-zero exit, and no tag.
func TestConvertBadInput(t *testing.T) {
	e := setup(t)
	layout := "oci:" + filepath.Join(e.images, "python") + ":python"
	cases := []struct {
		name     string
		args     []string
		code     int
		contains string
	}{
		{"registry unreachable", []string{"convert", "127.0.0.1:1/none:x", "oci:" + t.TempDir() + ":x"}, 1, "127.0.0.1:1"},
		{"tag missing", []string{"convert", e.registry + "/e2e/none:missing", "oci:" + t.TempDir() + ":x"}, 1, "missing"},
		{"dst not writable", []string{"convert", layout, "oci:/proc/lazypull-nowhere:x"}, 1, "/proc/lazypull-nowhere"},
		{"unknown flag", []string{"convert", "--frobnicate", layout, "oci:" + t.TempDir()}, 2, "frobnicate"},
		{"missing args", []string{"convert", layout}, 2, "usage"},
		{"layout without oci:", []string{"convert", strings.TrimPrefix(layout, "oci:"), "oci:" + t.TempDir() + ":x"}, 1, "an OCI image layout wants oci:/abs/path[:tag]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := run(t, e.bin, c.args...)
			if r.code != c.code {
				t.Fatalf("exit %d, want %d; stderr: %s", r.code, c.code, r.stderr)
			}
			if !strings.Contains(r.stderr, c.contains) {
				t.Errorf("stderr %q does not name %q", r.stderr, c.contains)
			}
		})
	}
}
