package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"

	"lazypull/internal/testutil"
)

func needRoot(t *testing.T) { testutil.NeedRoot(t, "overlayfs mounts") }

// TestSnapshotterSuite runs containerd's snapshotter test suite against the ordinary path.
// The suite is told it tests "overlayfs", which it exempts from renaming a lower directory
// (overlayfs without redirect_dir answers EXDEV), as for containerd's own overlayfs.
// open opens a snapshotter at root over fsys, failing the test on an error.
func open(t *testing.T, root string, fsys FileSystem) *Snapshotter {
	t.Helper()
	s, err := New(root, fsys)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSnapshotterSuite(t *testing.T) {
	needRoot(t)
	testsuite.SnapshotterSuite(t, "overlayfs", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		s, err := New(root, &fakeFS{})
		if err != nil {
			return nil, nil, err
		}
		return s, s.Close, nil
	})
}

// fakeFS "mounts" a layer by bind-mounting a directory holding one file named by the
// label "containerd.io/snapshot/test.file"; layers without it are refused.
type fakeFS struct {
	mu      sync.Mutex
	mounted map[string]bool
	mounts  int
}

func (f *fakeFS) Mount(ctx context.Context, mp string, labels map[string]string) error {
	name, ok := labels["containerd.io/snapshot/test.file"]
	if !ok {
		return errors.New("not a remote layer")
	}
	src, err := os.MkdirTemp("", "fakefs-")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(src, name), []byte(name), 0o644); err != nil {
		return err
	}
	if err := mount.All([]mount.Mount{{Type: "bind", Source: src, Options: []string{"rbind", "ro"}}}, mp); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mounted == nil {
		f.mounted = map[string]bool{}
	}
	f.mounted[mp] = true
	f.mounts++
	return nil
}

func (f *fakeFS) Check(ctx context.Context, mp string, labels map[string]string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.mounted[mp] {
		return fmt.Errorf("%s not mounted", mp)
	}
	return nil
}

// Usage says the layer takes as many bytes as its file's name is long, in one file.
func (f *fakeFS) Usage(ctx context.Context, mp string, labels map[string]string) (int64, int64, error) {
	name, ok := labels["containerd.io/snapshot/test.file"]
	if !ok {
		return 0, 0, errors.New("not a remote layer")
	}
	return int64(len(name)), 1, nil
}

func (f *fakeFS) Unmount(ctx context.Context, mp string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.mounted[mp] {
		return nil
	}
	delete(f.mounted, mp)
	return mount.UnmountAll(mp, 0)
}

// TestRemoteSnapshot: a layer the FileSystem mounts is committed under its ref at Prepare
// (ErrAlreadyExists), a container on top of it sees its files through overlayfs, removing
// it unmounts it, and another layer takes the ordinary path.
func TestRemoteSnapshot(t *testing.T) {
	needRoot(t)
	ctx := namespaces.WithNamespace(context.Background(), "test")
	root := t.TempDir()
	fsys := &fakeFS{}
	s := open(t, root, fsys)
	defer s.Close()

	labels := map[string]string{snapshots.LabelSnapshotRef: "layer1", "containerd.io/snapshot/test.file": "one"}
	_, err := s.Prepare(ctx, "extract-1", "", snapshots.WithLabels(labels))
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare of a remote layer: %v, want ErrAlreadyExists", err)
	}
	info, err := s.Stat(ctx, "layer1")
	if err != nil {
		t.Fatal(err)
	}
	if info.Kind != snapshots.KindCommitted || info.Labels[RemoteLabel] != "true" || info.Labels["containerd.io/snapshot/test.file"] != "one" {
		t.Fatalf("committed remote snapshot: %+v", info)
	}
	if _, err := s.Stat(ctx, "extract-1"); !errdefs.IsNotFound(err) {
		t.Fatalf("active key still there: %v", err)
	}
	// containerd finds the target with this filter.
	found := 0
	if err := s.Walk(ctx, func(context.Context, snapshots.Info) error { found++; return nil },
		`labels."containerd.io/snapshot.ref"==layer1,parent==""`); err != nil || found != 1 {
		t.Fatalf("walk by ref: %d found, %v", found, err)
	}

	// An ordinary layer on top.
	ms, err := s.Prepare(ctx, "extract-2", "layer1", snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: "layer2"}))
	if err != nil {
		t.Fatalf("Prepare of an ordinary layer: %v", err)
	}
	dir := t.TempDir()
	if err := mount.All(ms, dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "two"), []byte("two"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "one")); err != nil || string(b) != "one" {
		t.Fatalf("remote layer's file through overlayfs: %q %v", b, err)
	}
	if err := mount.UnmountAll(dir, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, "layer2", "extract-2"); err != nil {
		t.Fatal(err)
	}

	// A container after a restart of the snapshotter: the remote layer is mounted again.
	fsys.Unmount(ctx, filepath.Join(root, "snapshots", idOf(t, s, ctx, "layer1"), "fs"))
	s.Close()
	s = open(t, root, fsys)
	ms, err = s.Prepare(ctx, "container", "layer2")
	if err != nil {
		t.Fatal(err)
	}
	if err := mount.All(ms, dir); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"one", "two"} {
		if b, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(b) != name {
			t.Errorf("container's %s: %q %v", name, b, err)
		}
	}
	if err := mount.UnmountAll(dir, 0); err != nil {
		t.Fatal(err)
	}
	if fsys.mounts != 2 {
		t.Errorf("%d mounts, want 2", fsys.mounts)
	}

	for _, k := range []string{"container", "layer2", "layer1"} {
		if err := s.Remove(ctx, k); err != nil {
			t.Fatalf("remove %s: %v", k, err)
		}
	}
	if len(fsys.mounted) != 0 {
		t.Errorf("still mounted after Remove: %v", fsys.mounted)
	}
	ents, _ := os.ReadDir(filepath.Join(root, "snapshots"))
	if len(ents) != 0 {
		t.Errorf("%d snapshot directories left", len(ents))
	}
}

func idOf(t *testing.T, s *Snapshotter, ctx context.Context, key string) string {
	t.Helper()
	for id, l := range s.remote {
		if l[snapshots.LabelSnapshotRef] == key {
			return id
		}
	}
	t.Fatalf("no remote snapshot %s", key)
	return ""
}
