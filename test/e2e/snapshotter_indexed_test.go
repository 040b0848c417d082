package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// TestSnapshotterIndexedImage: the plain Debian python image (gzip layers as built, not
// converted), indexed with `lazypull index`, pulled with `lazypull pull`: every layer is a
// remote snapshot served from the index artifact, `ctr run` runs python from it having
// fetched a small fraction of the image, and the container's root filesystem equals the
// one containerd's overlayfs snapshotter unpacks from the same image, every file's
// content read through the index compared (with its mode, owner, size, mtime, xattrs).
func TestSnapshotterIndexedImage(t *testing.T) {
	e := setup(t)
	ref, _ := e.indexedImage(t, "snindexed")
	s := e.startSnapshotter(t)
	const ns = "lazypull-e2e-indexed"

	// The same image unpacked by containerd's overlayfs snapshotter, to compare with (it
	// also puts the layer blobs into containerd's content store, which `ctr images mount`
	// of 1.6 wants even for layers whose snapshots exist; the lazypull snapshotter never
	// reads them).
	s.ctr(t, ns, "image", "pull", "--plain-http", "--snapshotter", "overlayfs", ref)
	start := time.Now()
	s.pull(t, e.bin, ns, ref)
	t.Logf("lazypull pull took %v", time.Since(start))
	m := s.wantAllRemote(t, ns, ref)
	if !strings.Contains(s.log.String(), "image opened from its index artifact") {
		t.Errorf("the snapshotter's log does not say the image was opened from its index:\n%s", s.log)
	}
	want := fmt.Sprintf(": lazy, %d of %d layers; registry: ", len(m.Layers), len(m.Layers))
	if st := e.lazypull(t, "stats", "--store", s.store); st.code != 0 || !strings.Contains(st.stdout, want) {
		t.Errorf("lazypull stats: exit %d, want the image listed with %q:\n%s%s", st.code, want, st.stdout, st.stderr)
	}

	s.runPython(t, ns, ref, "indexed")
	// A sixth, not a tenth as for a converted image: the index artifact is 1.8% of the
	// image, read whole at the open, and a read fetches whole 128 KiB spans of the gzip
	// blob, a small file whole (docs/benchmarks.md, "Unconverted gzip"): 11% here.
	wantFetchedAtMost(t, "running python from the indexed image", s.store, time.Now(), m, 6)

	s.wantIndexedRootfs(t, ns, ref)
}

// wantIndexedRootfs compares the root filesystem of the python image ref that the
// snapshotter serves from its index with the one containerd's overlayfs snapshotter
// unpacked (pulled before), file by file, and wants no line in the snapshotter's log
// saying content did not match the index.
func (s *snapshotterEnv) wantIndexedRootfs(t *testing.T, ns, ref string) {
	t.Helper()
	wantTree := walk(t, s.rootfs(t, ns, "overlayfs", ref))
	got := walk(t, s.rootfs(t, ns, "lazypull", ref))
	paths, links := compareTrees(t, "rootfs served from the index", wantTree, got)
	t.Logf("%d paths compared, %d hard links", paths, links)
	if paths < 1000 {
		t.Errorf("only %d paths in the overlayfs rootfs of %s: not the python image?", paths, ref)
	}
	if l := s.log.String(); strings.Contains(l, "does not match its digest") || strings.Contains(l, "span digest mismatch") {
		t.Errorf("a file's or a span's content did not match the index:\n%s", s.log)
	}
}

// TestCRIIndexedImage: Kubernetes' path for an unconverted image with an index artifact:
// crictl pull makes every layer a remote snapshot (CRI's labels alone name the image),
// and a pod's python container prints its output having fetched a small fraction of the
// image.
func TestCRIIndexedImage(t *testing.T) {
	e := setup(t)
	tool(t, "crictl")
	ref, _ := e.indexedImage(t, "criindexed")
	s := e.startSnapshotter(t, withCRI(e.registry, e.pauseImage(t)))

	s.crictl(t, "pull", ref)
	m := s.wantAllRemote(t, criNamespace, ref)
	podID := s.runPythonPod(t, "indexed", ref)
	wantFetchedAtMost(t, "running python from the indexed image through CRI", s.store, time.Now(), m, 6) // see TestSnapshotterIndexedImage
	s.crictl(t, "stopp", podID)
	s.crictl(t, "rmp", podID)
}

// TestSnapshotterIndexedProfile: `lazypull profile` records a start of the unconverted
// python image with an index artifact (no pack: there are no lazypull layers to pack),
// the snapshotter prefetches its small files into the store while `lazypull pull` prepares
// the layers, and the profiled workload run in a container then fetches no small file
// (no chunk into the store): what it still fetches is the spans of its large files, which
// are not prefetched.
func TestSnapshotterIndexedProfile(t *testing.T) {
	e := setup(t)
	ref, _ := e.indexedImage(t, "snindexedprofile")
	script := fmt.Sprintf("import json, email; print(%q)", profileLine)
	digest, _ := e.recordProfile(t, ref, script)

	s := e.startSnapshotterWith(t, "prefetch_wait = \"2m\"\n")
	const ns = "lazypull-e2e-indexed-profile"
	start := time.Now()
	s.pull(t, e.bin, ns, ref)
	st, p := settledPrefetch(t, s.store, start)
	t.Logf("prefetch: %+v; fetch: %+v; store: %d chunks fetched", p, *st.Fetch, st.Store.ChunksFetched)
	if p.Err != "" || p.Profile != digest || p.Files == 0 || p.Stale != 0 || p.Pack {
		t.Fatalf("prefetch %+v; want the profile %s done without error, no pack\n%s", p, digest, s.log)
	}
	out := s.ctr(t, ns, "run", "--rm", "--snapshotter", "lazypull", ref, fmt.Sprintf("indexed-profile-%d", os.Getpid()), "python3", "-c", script)
	if strings.TrimSpace(out) != profileLine {
		t.Fatalf("container printed %q, want %q", out, profileLine)
	}
	after := stats(t, s.store, time.Now())
	t.Logf("the run after the prefetch: %d more bytes in %d more requests", after.Fetch.Bytes-st.Fetch.Bytes, after.Fetch.Requests-st.Fetch.Requests)
	if n := after.Store.ChunksFetched - st.Store.ChunksFetched; n != 0 {
		t.Errorf("the profiled workload fetched %d small files after the prefetch; want none", n)
	}
}
