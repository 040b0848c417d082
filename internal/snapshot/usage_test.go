package snapshot

import (
	"context"
	"errors"
	"io/fs"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
)

// TestRemoteUsage: a remote snapshot's Usage is what its FileSystem says it holds, not the
// zero recorded at commit; Remote and ReadRemote list its labels, ReadRemote only once the
// snapshotter closed its metadata.
func TestRemoteUsage(t *testing.T) {
	needRoot(t)
	ctx := namespaces.WithNamespace(context.Background(), "test")
	root := t.TempDir()
	if _, err := ReadRemote(ctx, root); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("ReadRemote without metadata: %v, want not exist", err)
	}
	fsys := &fakeFS{}
	s := open(t, root, fsys)
	defer s.Close()
	labels := map[string]string{snapshots.LabelSnapshotRef: "layer1", "containerd.io/snapshot/test.file": "eleven-byte"}
	if _, err := s.Prepare(ctx, "extract-1", "", snapshots.WithLabels(labels)); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare of a remote layer: %v", err)
	}
	defer fsys.Unmount(ctx, s.upperPath(idOf(t, s, ctx, "layer1")))
	u, err := s.Usage(ctx, "layer1")
	if err != nil || u.Size != 11 || u.Inodes != 1 {
		t.Fatalf("usage of the remote snapshot: %+v %v, want 11 bytes in 1 inode", u, err)
	}
	if r := s.Remote(); len(r) != 1 || r[0]["containerd.io/snapshot/test.file"] != "eleven-byte" {
		t.Errorf("Remote: %v", r)
	}
	if _, err := ReadRemote(ctx, root); err == nil {
		t.Error("ReadRemote read the metadata a snapshotter holds open")
	}
	s.Close()
	r, err := ReadRemote(ctx, root)
	if err != nil || len(r) != 1 || r[0][snapshots.LabelSnapshotRef] != "layer1" {
		t.Errorf("ReadRemote: %v %v", r, err)
	}
}
