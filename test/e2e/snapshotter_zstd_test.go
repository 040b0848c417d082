package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/internal/imageindex"
)

// indexedZstdImage pushes the plain Debian python image recompressed by skopeo to zstd
// (one frame a layer, zstd's default level) as e2e/NAME-PID:zstd, runs `lazypull index`
// on it, and returns the reference. skopeo recompresses into an OCI layout first: copied
// straight to a registry that holds the gzip blobs already, it would reuse them.
func (e *env) indexedZstdImage(t *testing.T, name string) string {
	t.Helper()
	ref := fmt.Sprintf("%s/e2e/%s-%d:zstd", e.registry, name, os.Getpid())
	layout := filepath.Join(t.TempDir(), "zstd")
	start := time.Now()
	must(t, "skopeo", "copy", "--quiet", "--dest-compress-format", "zstd",
		fmt.Sprintf("oci:%s:%s", filepath.Join(e.images, "python"), "python"), "oci:"+layout+":python")
	t.Logf("skopeo copy --dest-compress-format zstd: %v", time.Since(start).Round(time.Millisecond))
	e.push(t, layout, "python", ref)
	e.index(t, ref)
	return ref
}

// zstdIndexSizes checks that every layer of the image ref is a zstd layer indexed with a
// zstdindex and a window blob, that the eager part of each layer's index (its index blob)
// is at most 5% of the layer, and logs what the index costs.
func zstdIndexSizes(t *testing.T, ref string, tables []*imageindex.Layer, m *v1.Manifest) {
	t.Helper()
	reg, img := resolvePlain(t, ref)
	am, _ := indexArtifact(t, reg, img.Descriptor.Digest)
	if len(am.Layers) != 2*len(m.Layers) {
		t.Fatalf("artifact of %d layers for %d zstd layers: want an index and a window blob each", len(am.Layers), len(m.Layers))
	}
	for i, l := range m.Layers {
		if !strings.HasSuffix(string(l.MediaType), "zstd") || tables[i].ZS == nil {
			t.Fatalf("layer %d of media type %s: not a zstd layer indexed with a zstdindex", i, l.MediaType)
		}
		eager, win := am.Layers[i], am.Layers[len(m.Layers)+i]
		if win.MediaType != imageindex.WindowsMediaType || win.Annotations[imageindex.AnnotationLayer] != l.Digest.String() || win.Size != tables[i].ZS.WindowsSize() {
			t.Fatalf("artifact layer %d: %+v; want the window blob of layer %d", len(m.Layers)+i, win, i)
		}
		t.Logf("layer %d: %d bytes of zstd; index blob %d bytes (%.2f%%; zstdindex %d, %d checkpoints), window blob %d bytes (%.1f%%)",
			i, l.Size, eager.Size, 100*float64(eager.Size)/float64(l.Size), len(tables[i].ZS.Encode()), tables[i].ZS.NumSpans(),
			win.Size, 100*float64(win.Size)/float64(l.Size))
		if eager.Size > l.Size/20 {
			t.Errorf("layer %d: index blob of %d bytes, over 5%% of the layer's %d", i, eager.Size, l.Size)
		}
	}
}

// TestSnapshotterIndexedZstdImage: the plain Debian python image recompressed to zstd (as
// skopeo writes it: one frame a layer, level 3), indexed with `lazypull index`: its eager
// index is a small part of each layer; `lazypull mount` serves a dozen files (the largest
// among them) equal to the image's unpacked and runs python having fetched a small
// fraction of the image; and through the snapshotter (`lazypull pull`, `ctr run`) every
// layer is a remote snapshot served from the index, python runs, and the container's root
// filesystem equals the one containerd's overlayfs snapshotter unpacks, file by file.
func TestSnapshotterIndexedZstdImage(t *testing.T) {
	e := setup(t)
	ref := e.indexedZstdImage(t, "snindexedzstd")
	tables, m := indexTables(t, ref)
	zstdIndexSizes(t, ref, tables, m)

	files := unpackedFiles(t, ref)
	picked := pickFiles(t, files, tables)
	storeDir := t.TempDir()
	mnt := e.mount(t, ref, storeDir)
	for _, name := range picked {
		got, err := os.ReadFile(filepath.Join(mnt.dir, name))
		if err != nil || !bytes.Equal(got, files[name]) {
			t.Errorf("%s: %d bytes read from the mount, %v; want the unpacked file's %d", name, len(got), err, len(files[name]))
		}
	}
	mnt.stop(t)
	storeDir = t.TempDir()
	mnt = e.mount(t, ref, storeDir)
	if out := must(t, "chroot", mnt.dir, "python3", "-c", "print(1)"); strings.TrimSpace(out) != "1" {
		t.Fatalf("python3 from the indexed mount printed %q", out)
	}
	wantFetchedAtMost(t, "python3 -c 'print(1)' from the zstd image's mount", storeDir, time.Now(), m, 6)
	mnt.stop(t)

	s := e.startSnapshotter(t)
	const ns = "lazypull-e2e-indexed-zstd"
	s.ctr(t, ns, "image", "pull", "--plain-http", "--snapshotter", "overlayfs", ref)
	s.pull(t, e.bin, ns, ref)
	s.wantAllRemote(t, ns, ref)
	if !strings.Contains(s.log.String(), "image opened from its index artifact") {
		t.Errorf("the snapshotter's log does not say the image was opened from its index:\n%s", s.log)
	}
	s.runPython(t, ns, ref, "indexed-zstd")
	wantFetchedAtMost(t, "running python from the indexed zstd image", s.store, time.Now(), m, 6)

	s.wantIndexedRootfs(t, ns, ref)
}
