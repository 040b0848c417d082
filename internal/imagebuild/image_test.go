package imagebuild

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"
	"golang.org/x/sys/unix"
)

func readBlob(t *testing.T, layout, digest string) []byte {
	t.Helper()
	hexSum, ok := strings.CutPrefix(digest, "sha256:")
	if !ok {
		t.Fatalf("bad digest %q", digest)
	}
	data, err := os.ReadFile(filepath.Join(layout, "blobs", "sha256", hexSum))
	if err != nil {
		t.Fatalf("read blob: %v", err)
	}
	sum := sha256.Sum256(data)
	if got := hex.EncodeToString(sum[:]); got != hexSum {
		t.Fatalf("blob %s has digest %s", hexSum, got)
	}
	return data
}

func testLayers(t *testing.T) (base, upper string) {
	t.Helper()
	tmp := t.TempDir()
	base, upper = filepath.Join(tmp, "base"), filepath.Join(tmp, "upper")
	writeFile(t, filepath.Join(base, "usr/bin/hello"), "#!/bin/sh\necho hi\n", 0o755)
	writeFile(t, filepath.Join(base, "etc/old"), "old", 0o644)
	writeFile(t, filepath.Join(upper, "usr/bin/new"), "new", 0o755)
	must(t, os.MkdirAll(filepath.Join(upper, "etc"), 0o755))
	if os.Geteuid() == 0 {
		must(t, unix.Mknod(filepath.Join(upper, "etc/old"), unix.S_IFCHR, 0))
	}
	return base, upper
}

func TestBuild(t *testing.T) {
	base, upper := testLayers(t)
	layout := filepath.Join(t.TempDir(), "img")
	opts := Options{Tag: "test", Cmd: []string{"/usr/bin/hello"}, Env: []string{"PATH=/usr/bin"}}
	res, err := Build(layout, []string{base, upper}, opts)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}

	var lay struct {
		Version string `json:"imageLayoutVersion"`
	}
	data, err := os.ReadFile(filepath.Join(layout, "oci-layout"))
	must(t, err)
	must(t, json.Unmarshal(data, &lay))
	if lay.Version != "1.0.0" {
		t.Errorf("oci-layout version %q", lay.Version)
	}

	var idx index
	data, err = os.ReadFile(filepath.Join(layout, "index.json"))
	must(t, err)
	must(t, json.Unmarshal(data, &idx))
	if idx.SchemaVersion != 2 || len(idx.Manifests) != 1 {
		t.Fatalf("index.json: %s", data)
	}
	md := idx.Manifests[0]
	if md.Digest != res.Manifest.Digest || md.MediaType != MediaTypeManifest || md.Annotations[AnnotationRefName] != "test" {
		t.Errorf("index entry %+v, want manifest %s tagged test", md, res.Manifest.Digest)
	}

	var mf manifest
	must(t, json.Unmarshal(readBlob(t, layout, md.Digest), &mf))
	if mf.SchemaVersion != 2 || mf.MediaType != MediaTypeManifest || mf.Config.MediaType != MediaTypeConfig || len(mf.Layers) != 2 {
		t.Fatalf("manifest: %+v", mf)
	}
	var cfg imageConfig
	must(t, json.Unmarshal(readBlob(t, layout, mf.Config.Digest), &cfg))
	if cfg.OS != runtime.GOOS || cfg.Architecture != runtime.GOARCH || cfg.RootFS.Type != "layers" {
		t.Errorf("config: %+v", cfg)
	}
	if !slices.Equal(cfg.Config.Cmd, opts.Cmd) || !slices.Equal(cfg.Config.Env, opts.Env) {
		t.Errorf("config.config: %+v", cfg.Config)
	}
	if cfg.Created != nil {
		t.Errorf("created set without Options.Created: %v", cfg.Created)
	}
	if len(cfg.RootFS.DiffIDs) != 2 {
		t.Fatalf("diff_ids: %v", cfg.RootFS.DiffIDs)
	}
	for i, l := range mf.Layers {
		if l.MediaType != MediaTypeLayerGzip {
			t.Errorf("layer %d media type %s", i, l.MediaType)
		}
		blob := readBlob(t, layout, l.Digest)
		if int64(len(blob)) != l.Size {
			t.Errorf("layer %d size %d, blob has %d", i, l.Size, len(blob))
		}
		zr, err := gzip.NewReader(bytes.NewReader(blob))
		must(t, err)
		tarData, err := io.ReadAll(zr)
		must(t, err)
		sum := sha256.Sum256(tarData)
		if got := "sha256:" + hex.EncodeToString(sum[:]); got != cfg.RootFS.DiffIDs[i] || got != res.Layers[i].DiffID {
			t.Errorf("layer %d diff id %s, config says %s", i, got, cfg.RootFS.DiffIDs[i])
		}
		if res.Layers[i].UncompressedSize != int64(len(tarData)) {
			t.Errorf("layer %d uncompressed size %d, want %d", i, res.Layers[i].UncompressedSize, len(tarData))
		}
		es := readLayer(t, tarData)
		switch i {
		case 0:
			want := []string{"etc/", "etc/old", "usr/", "usr/bin/", "usr/bin/hello"}
			if got := names(es); !slices.Equal(got, want) {
				t.Errorf("layer 0: %q, want %q", got, want)
			}
		case 1:
			want := []string{"etc/", "etc/.wh.old", "usr/", "usr/bin/", "usr/bin/new"}
			if os.Geteuid() != 0 {
				want = slices.Delete(want, 1, 2)
			}
			if got := names(es); !slices.Equal(got, want) {
				t.Errorf("layer 1: %q, want %q", got, want)
			}
		}
	}

	// Nothing but blobs and the two layout files.
	ents, err := os.ReadDir(filepath.Join(layout, "blobs", "sha256"))
	must(t, err)
	if len(ents) != 4 {
		t.Errorf("%d blobs, want 4 (2 layers, config, manifest)", len(ents))
	}
}

func TestBuildDeterministic(t *testing.T) {
	base, upper := testLayers(t)
	tmp := t.TempDir()
	var digests []string
	for _, name := range []string{"a", "b"} {
		res, err := Build(filepath.Join(tmp, name), []string{base, upper}, Options{Tag: "x", Cmd: []string{"true"}})
		if err != nil {
			t.Fatalf("Build: %v", err)
		}
		digests = append(digests, res.Manifest.Digest)
	}
	if digests[0] != digests[1] {
		t.Errorf("two builds of the same dirs differ: %v", digests)
	}
}

// index is index.json as these tests read it.
type index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType,omitempty"`
	Manifests     []Descriptor `json:"manifests"`
}

func TestBuildUpdatesIndex(t *testing.T) {
	base, upper := testLayers(t)
	layout := filepath.Join(t.TempDir(), "img")
	r1, err := Build(layout, []string{base}, Options{Tag: "one"})
	must(t, err)
	_, err = Build(layout, []string{base, upper}, Options{Tag: "two"})
	must(t, err)
	r3, err := Build(layout, []string{base, upper}, Options{Tag: "two", Cmd: []string{"changed"}})
	must(t, err)

	var idx index
	data, err := os.ReadFile(filepath.Join(layout, "index.json"))
	must(t, err)
	must(t, json.Unmarshal(data, &idx))
	got := map[string]string{}
	for _, d := range idx.Manifests {
		got[d.Annotations[AnnotationRefName]] = d.Digest
	}
	if len(idx.Manifests) != 2 || got["one"] != r1.Manifest.Digest || got["two"] != r3.Manifest.Digest {
		t.Errorf("index.json manifests: %s", data)
	}
}

func TestBuildErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Build(filepath.Join(dir, "o"), []string{dir}, Options{}); err == nil {
		t.Error("Build without tag succeeded")
	}
	if _, err := Build(filepath.Join(dir, "o"), nil, Options{Tag: "x"}); err == nil {
		t.Error("Build without layers succeeded")
	}
	_, err := Build(filepath.Join(dir, "o"), []string{filepath.Join(dir, "missing")}, Options{Tag: "x"})
	if err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("Build with missing layer dir: %v", err)
	}
}
