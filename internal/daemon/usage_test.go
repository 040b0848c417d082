package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lazypull/internal/testutil"
)

// mountWarm mounts warmFixture's layer at a new directory, unmounted when the test ends,
// and returns the file system, the layer's labels and the mount point. It needs root and
// /dev/fuse.
func mountWarm(t *testing.T) (*SnapshotFS, map[string]string, string) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil || os.Geteuid() != 0 {
		t.Skip("SKIP: needs root and /dev/fuse")
	}
	f, ref, img, d, _ := warmFixture(t)
	labels := labelsOf(t, ref, img, d)
	mp := t.TempDir()
	if err := f.Mount(context.Background(), mp, labels); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Unmount(context.Background(), mp) })
	return f, labels, mp
}

// TestUnmountReleasesImage: the image of a mounted layer holds its pins in the store; when
// its last layer is unmounted (the snapshot removed), the image is closed and forgotten,
// what it pinned may be pruned, and a mount after opens it again.
func TestUnmountReleasesImage(t *testing.T) {
	ctx := context.Background()
	f, labels, mp := mountWarm(t)
	if b, err := os.ReadFile(filepath.Join(mp, "bin/app")); err != nil || string(b) != strings.Repeat("app", 5000) {
		t.Fatalf("read through the mount: %v", err)
	}
	ims := f.Images()
	if len(ims) != 1 {
		t.Fatalf("%d images open, want 1", len(ims))
	}
	// What a prefetch pins: the files the image's workload reads at start.
	l := ims[0].Layers[0]
	e, _ := l.Index.Lookup("bin/app")
	file, err := l.file(e)
	if err != nil {
		t.Fatal(err)
	}
	ims[0].lease.Pin(file)
	testutil.WaitFor(t, 5*time.Second, "the read stored", func() bool { _, ok := f.store.LocalPath(file); return ok })
	if st := f.store.Stats(); st.PinnedBytes == 0 {
		t.Fatalf("nothing pinned while mounted: %+v", st)
	}
	if _, err := f.store.Prune(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.store.LocalPath(file); !ok {
		t.Fatal("a pinned file of a mounted image was pruned")
	}
	if err := f.Unmount(ctx, mp); err != nil {
		t.Fatal(err)
	}
	if n := len(f.Images()); n != 0 {
		t.Errorf("%d images open after the last layer was unmounted", n)
	}
	if st := f.store.Stats(); st.PinnedBytes != 0 {
		t.Errorf("still pinned after unmount: %+v", st)
	}
	if _, err := f.store.Prune(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.store.LocalPath(file); ok {
		t.Error("the unmounted image's file survived the prune")
	}
	// Mounted again: the image opens again, from the registry.
	if err := f.Mount(ctx, mp, labels); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(mp, "bin/app")); err != nil || len(b) != 15000 {
		t.Fatalf("read after a second mount: %v", err)
	}
}

// TestUsage: a mounted layer's usage is what the store holds of it: its index at first,
// then also the content read; an unmounted one (after a restart) is counted from the
// store's metadata; KeepInUse keeps all of it.
func TestUsage(t *testing.T) {
	ctx := context.Background()
	f, labels, mp := mountWarm(t)
	f.Images()[0].waitKept()
	before, n, err := f.Usage(ctx, mp, labels)
	if err != nil || before <= 0 || n != 1 {
		t.Fatalf("usage before a read: %d bytes in %d, %v; want the index", before, n, err)
	}
	if _, err := os.ReadFile(filepath.Join(mp, "bin/app")); err != nil {
		t.Fatal(err)
	}
	// The store writes what a read fetched in the background.
	var after int64
	testutil.WaitFor(t, 5*time.Second, "the read stored", func() bool {
		after, _, err = f.Usage(ctx, mp, labels)
		return err == nil && after == before+15000
	})
	if err := f.Unmount(ctx, mp); err != nil {
		t.Fatal(err)
	}
	stored, _, err := f.Usage(ctx, mp, labels)
	if err != nil || stored != after {
		t.Errorf("usage of the layer not mounted: %d, %v; want %d", stored, err, after)
	}
	u, ok := UseOf(labels)
	if !ok {
		t.Fatalf("no use in %v", labels)
	}
	keep, layers, problems := KeepInUse(f.store, []LayerUse{u}, nil)
	if len(problems) != 0 || layers != 1 {
		t.Fatal(layers, problems)
	}
	st := f.store.Stats()
	if _, err := f.store.PruneKeeping(ctx, 0, keep); err != nil {
		t.Fatal(err)
	}
	if got := f.store.Stats(); got.Bytes != st.Bytes {
		t.Errorf("prune removed %d bytes of a layer in use", st.Bytes-got.Bytes)
	}
	// The manifest gone, the layer cannot be found: said, not kept.
	if _, err := f.store.Prune(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if _, layers, problems := KeepInUse(f.store, []LayerUse{u}, nil); len(problems) != 1 || layers != 0 {
		t.Errorf("problems %v, want the manifest missing", problems)
	}
}
