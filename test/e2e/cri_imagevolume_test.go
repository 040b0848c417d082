package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"lazypull/format"
	"lazypull/internal/imagebuild"
)

// The model image of TestCRIImageVolumeIsLazy: one layer holding one file of generated
// (incompressible) weights, modelMiB MiB, of which the pod reads modelReadMiB MiB in ranges
// of modelRangeMiB MiB at scattered offsets. LAZYPULL_TEST_MODEL_MIB,
// LAZYPULL_TEST_MODEL_READ_MIB and LAZYPULL_TEST_MODEL_RANGE_MIB change them for a manual run
// (e.g. 2048 and 100: a pod that reads 100 MiB of a 2 GiB model).
const (
	modelMiB      = 1024
	modelReadMiB  = 64
	modelRangeMiB = 1
	modelPath     = "model/weights.bin"
)

// envMiB is the positive integer in the environment variable name, or def when it is unset.
func envMiB(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive number of MiB", name, v)
	}
	return n
}

// modelImage builds the model image name (one layer: modelPath, size MiB of seeded random bytes)
// as an OCI layout, converts it into the test registry, and returns its reference and the
// path of the weights file it holds, to compare what the pod reads against.
func (e *env) modelImage(t *testing.T, name string, size int) (ref, weights string) {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "rootfs")
	weights = filepath.Join(root, modelPath)
	if err := os.MkdirAll(filepath.Dir(weights), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(weights)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.NewChaCha8([32]byte{'l', 'a', 'z', 'y', 'm', 'o', 'd', 'e', 'l'})
	if _, err := io.CopyN(f, rng, int64(size)<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	layout := filepath.Join(dir, "oci")
	// Weights do not compress: gzip's Huffman-only mode keeps the build fast.
	if _, err := imagebuild.Build(layout, []string{root}, imagebuild.Options{Tag: "model", GzipLevel: -2}); err != nil {
		t.Fatalf("model image: %v", err)
	}
	built := time.Since(start)
	ref = fmt.Sprintf("%s/e2e/%s-%d:lazy", e.registry, name, os.Getpid())
	start = time.Now()
	e.convert(t, "oci:"+layout+":model", ref)
	t.Logf("model image of %d MiB: built in %v, converted and pushed in %v", size, built.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	return ref, weights
}

// scatteredRanges returns n offsets, in MiB, of ranges of rangeMiB MiB within a file of
// size MiB: distinct, never adjacent (each read starts a new stream), in a shuffled order.
func scatteredRanges(n, rangeMiB, size int) []int {
	slots := size / (2 * rangeMiB)
	if n > slots {
		n = slots
	}
	rng := rand.New(rand.NewPCG(4639, 1))
	offs := make([]int, 0, n)
	for _, s := range rng.Perm(slots)[:n] {
		offs = append(offs, s*2*rangeMiB)
	}
	return offs
}

// rangeSums returns the sha256 of each range (offsets in MiB, rangeMiB long) of the file.
func rangeSums(t *testing.T, path string, offs []int, rangeMiB int) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sums := make([]string, len(offs))
	for i, off := range offs {
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(f, int64(off)<<20, int64(rangeMiB)<<20)); err != nil {
			t.Fatal(err)
		}
		sums[i] = hex.EncodeToString(h.Sum(nil))
	}
	return sums
}

// readRangesScript is the python program the pod runs: argv[1] is the file, argv[2] the
// range length in MiB, the rest the ranges' offsets in MiB; it prints each range's sha256,
// one a line, and reads nothing else of the file.
const readRangesScript = `import hashlib, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
n = int(sys.argv[2]) << 20
for off in sys.argv[3:]:
    b = os.pread(fd, n, int(off) << 20)
    assert len(b) == n, (off, len(b))
    print(hashlib.sha256(b).hexdigest())
`

// TestCRIImageVolumeIsLazy: Kubernetes' image volumes (KEP-4639; CRI Mount.image), on
// containerd 2.x with CRI's snapshotter set to lazypull. A model image (one layer, one
// large file of weights) is converted and pulled through CRI: its layer is a remote
// snapshot. A pod's container, from a plain (not lazypull) image, mounts it read-only as an
// image volume and reads scattered ranges of the weights: they are the source's bytes, and
// what the snapshotter fetched is about what was read, not the image.
//
// containerd 2.x needs nothing more than the CRI config lazypull needs anyway: its CRI
// unpacks the volume's image for the pod's snapshotter (a no-op: the pull left the layers
// as committed remote snapshots) and Prepares a snapshot on top of them, which lazypull
// mounts like a container's root.
func TestCRIImageVolumeIsLazy(t *testing.T) {
	e := setup(t)
	if v := containerdVersion(); strings.HasPrefix(v, "1.") {
		t.Skipf("SKIP %s ON CONTAINERD %s: no image volumes there (CRI Mount.image came in containerd 2.1); scripts/test.sh runs it again on containerd 2", t.Name(), v)
	}
	tool(t, "crictl")
	size := envMiB(t, "LAZYPULL_TEST_MODEL_MIB", modelMiB)
	readMiB := envMiB(t, "LAZYPULL_TEST_MODEL_READ_MIB", modelReadMiB)
	rangeMiB := envMiB(t, "LAZYPULL_TEST_MODEL_RANGE_MIB", modelRangeMiB)
	model, weights := e.modelImage(t, "model", size)
	offs := scatteredRanges(readMiB/rangeMiB, rangeMiB, size)
	want := rangeSums(t, weights, offs, rangeMiB)
	read := int64(len(offs)*rangeMiB) << 20

	// A profile is recorded by running the image's own program: a model image has none,
	// and `lazypull profile` says so (TestProfileVolume records one with --volume).
	if r := e.lazypull(t, "profile", "--plain-http", "--runtime", "chroot", "--no-push", "--duration", "5s", model); r.code == 0 || !strings.Contains(r.stderr, "no entrypoint or command") {
		t.Errorf("lazypull profile of the model image: exit %d, stderr %q; want a failure naming the missing command", r.code, r.stderr)
	}

	// The container's image is the plain python image: unpacked in full by containerd, it
	// fetches nothing through lazypull, so all lazypull fetches are the volume's.
	reader := fmt.Sprintf("%s/e2e/python-%d:plain", e.registry, os.Getpid())
	e.push(t, filepath.Join(e.images, "python"), "python", reader)

	s := e.startSnapshotter(t, withCRI(e.registry, e.pauseImage(t)))
	s.crictl(t, "pull", reader)
	s.crictl(t, "pull", model)
	m := remoteManifest(t, model)
	if remote, _ := s.remoteSnapshots(t, criNamespace); remote != len(m.Layers) {
		t.Fatalf("after crictl pull of the model: %d remote snapshots, want its %d layer(s):\n%s", remote, len(m.Layers), s.log)
	}
	var imageBytes, indexBytes int64
	for _, l := range m.Layers {
		imageBytes += l.Size
		loc, err := format.LocationFromAnnotations(l.Annotations)
		if err != nil {
			t.Fatalf("model layer %s: %v", l.Digest, err)
		}
		indexBytes += loc.Size
	}

	args := []string{"python3", "-c", readRangesScript, "/model/" + modelPath, strconv.Itoa(rangeMiB)}
	for _, off := range offs {
		args = append(args, strconv.Itoa(off))
	}
	podID, id := s.runPod(t, "model", map[string]any{
		"metadata": map[string]any{"name": "reader"},
		"image":    map[string]any{"image": reader},
		"command":  args,
		"mounts":   []map[string]any{{"container_path": "/model", "image": map[string]any{"image": model}, "readonly": true}},
		"log_path": "reader.log",
	}, 5*time.Minute)
	if got := strings.Fields(s.crictl(t, "logs", id)); !slices.Equal(got, want) {
		t.Fatalf("the pod read other bytes than the model's: sha256 of its %d ranges\n%v\nwant\n%v", len(offs), got, want)
	}

	st := stats(t, s.store, time.Now())
	// The index is read once per layer; the manifest and config are small (1 MiB covers them).
	limit := read + read/5 + indexBytes + 1<<20
	t.Logf("image volume: the pod read %d bytes (%d ranges of %d MiB) of a %d-byte model image (%d MiB file, index %d bytes); lazypull fetched %d bytes in %d requests (%.2fx the bytes read)",
		read, len(offs), rangeMiB, imageBytes, size, indexBytes, st.Fetch.Bytes, st.Fetch.Requests, float64(st.Fetch.Bytes)/float64(read))
	if st.Fetch.Bytes < read || st.Fetch.Bytes > limit {
		t.Errorf("image volume: fetched %d bytes for %d read; want at least what was read and at most 1.2x that plus the index (%d)", st.Fetch.Bytes, read, limit)
	}

	// The volume is an active lazypull snapshot keyed by its mount point under CRI's
	// image-volumes directory, and goes with the pod.
	if n := s.imageVolumeSnapshots(t); n != 1 {
		t.Errorf("%d lazypull snapshots of image volumes while the pod runs, want 1", n)
	}
	s.crictl(t, "stopp", podID)
	s.crictl(t, "rmp", podID)
	if n := s.imageVolumeSnapshots(t); n != 0 {
		t.Errorf("%d lazypull snapshots of image volumes left after rmp", n)
	}
}

// imageVolumeSnapshots counts CRI's active lazypull snapshots of image volumes: their keys
// are the volumes' mount points, under CRI's image-volumes directory.
func (s *snapshotterEnv) imageVolumeSnapshots(t *testing.T) int {
	t.Helper()
	n := 0
	for _, line := range strings.Split(s.ctr(t, criNamespace, "snapshots", "--snapshotter", "lazypull", "ls"), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.Contains(f[0], "/image-volumes/") && f[len(f)-1] == "Active" {
			n++
		}
	}
	return n
}
