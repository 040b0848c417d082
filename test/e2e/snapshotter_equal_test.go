package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// rootfs prepares a container's root filesystem of ref with the given snapshotter in
// namespace ns, as `ctr run` would (an active snapshot over the image's layers, writable),
// mounts it at a new directory and returns it; the test's cleanup unmounts it and removes
// the snapshot.
func (s *snapshotterEnv) rootfs(t *testing.T, ns, snapshotter, ref string) string {
	t.Helper()
	dir := t.TempDir()
	s.ctr(t, ns, "images", "mount", "--rw", "--snapshotter", snapshotter, ref, dir)
	t.Cleanup(func() { s.ctr(t, ns, "images", "unmount", "--rm", dir) })
	return dir
}

// TestSnapshotterRootfsEqualsOverlayfs: a container's root filesystem under the lazypull
// snapshotter (overlayfs over the lazily mounted layers) is the one containerd's overlayfs
// snapshotter gives for the original image: every path's type, mode, owner, size, mtime,
// link target, xattrs and content digest, and hard links as one inode. Both sides are
// read through an active (writable) snapshot, as a container gets it, in one containerd.
func TestSnapshotterRootfsEqualsOverlayfs(t *testing.T) {
	e := setup(t)
	// The original is the OCI layout pushed unchanged; the lazy image is converted from that
	// same layout (TestConvertedImageRunsInPlainContainerd checks that converting it from
	// the registry gives the same image), converted once per test binary.
	layout := filepath.Join(e.images, "python")
	orig := fmt.Sprintf("%s/e2e/snequal-%d:orig", e.registry, os.Getpid())
	e.push(t, layout, "python", orig)
	lazy := e.lazyImage(t, "python")
	s := e.startSnapshotter(t)
	const ns = "lazypull-e2e-equal"

	s.pullBoth(t, e.bin, ns, orig, lazy)

	want := walk(t, s.rootfs(t, ns, "overlayfs", orig))
	got := walk(t, s.rootfs(t, ns, "lazypull", lazy))
	paths, links := compareTrees(t, "lazypull rootfs", want, got)
	t.Logf("%d paths compared, %d hard links", paths, links)
	if paths < 1000 {
		t.Errorf("only %d paths in the overlayfs rootfs of %s: not the python image?", paths, orig)
	}
}
