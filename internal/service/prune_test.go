package service

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"

	"lazypull/internal/daemon"
	"lazypull/internal/snapshot"
	"lazypull/internal/store"
)

// TestPruneAsksHolder: while a process holds the store, prune asks it on the admin socket;
// it keeps the manifests of the layers its remote snapshots hold and says what it could
// not tell. With no holder, prune opens the store itself, and without the snapshotter's
// metadata keeps every manifest and index.
func TestPruneAsksHolder(t *testing.T) {
	dir, err := os.MkdirTemp("", "prune-") // short: the admin socket's path must fit
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	cfg := DefaultNodeConfig()
	cfg.Store, cfg.StoreMaxBytes = dir, 0
	n, err := openNode(cfg, discard())
	if err != nil {
		t.Fatal(err)
	}
	used, err := n.store.PutMeta([]byte(`{"schemaVersion":2,"layers":[]}`))
	if err != nil {
		t.Fatal(err)
	}
	unused, _ := n.store.PutMeta([]byte(`{"schemaVersion":2,"config":{}}`))
	remote := []map[string]string{{
		daemon.LabelCRIManifestDigest: used.String(),
		daemon.LabelCRILayerDigest:    "sha256:" + strings.Repeat("3", 64),
	}, {"containerd.io/snapshot.ref": "by-tag"}}
	if err := n.serve(func() []*daemon.Image { return nil }, func() []map[string]string { return remote }); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r, err := Prune(ctx, dir, t.TempDir(), 0, discard())
	if err != nil {
		t.Fatal(err)
	}
	if r.Holder != os.Getpid() || r.Objects != 1 || r.Before <= r.After || r.Layers != 0 || len(r.Problems) != 2 {
		t.Errorf("prune by the holder: %+v; want one manifest pruned, no layer found to keep, two problems", r)
	}
	if !n.store.HasMeta(used) || n.store.HasMeta(unused) {
		t.Error("the manifest in use was pruned, or the other kept")
	}
	var b bytes.Buffer
	WritePrune(&b, dir, r)
	for _, want := range []string{"pruned 1 objects", "holding the store (pid", "kept the manifests, indexes and content of 0 layers", "not kept: layer", "not kept: remote snapshot by-tag"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report %q lacks %q", b.String(), want)
		}
	}
	n.close()
	if _, err := os.Stat(dir + "/" + AdminSocket); !os.IsNotExist(err) {
		t.Errorf("admin socket left after close: %v", err)
	}

	// No holder, no snapshotter metadata: every manifest and index stays.
	st, _ := store.Open(dir)
	st.PutMeta([]byte("an index"))
	st.Close()
	r, err = Prune(ctx, dir, t.TempDir(), 0, discard())
	if err != nil || r.Holder != 0 || r.Objects != 0 || !strings.Contains(r.AllMeta, "cannot be read") {
		t.Errorf("prune without a holder or metadata: %+v, %v", r, err)
	}

	// A holder that serves no admin socket: prune says so.
	st, _ = store.Open(dir)
	defer st.Close()
	if _, err := Prune(ctx, dir, t.TempDir(), 0, discard()); err == nil || !strings.Contains(err.Error(), "answers no prune") {
		t.Errorf("prune of a store held without an admin socket: %v", err)
	}
}

// nopFS is a snapshot.FileSystem that mounts nothing: the remote snapshots it makes exist
// in the snapshotter's metadata only.
type nopFS struct{}

func (nopFS) Mount(context.Context, string, map[string]string) error { return nil }
func (nopFS) Check(context.Context, string, map[string]string) error { return nil }
func (nopFS) Unmount(context.Context, string) error                  { return nil }
func (nopFS) Usage(context.Context, string, map[string]string) (int64, int64, error) {
	return 0, 0, nil
}

// TestPruneReadsSnapshotterMetadata: with no process holding the store, prune keeps what
// the stopped snapshotter's remote snapshots name.
func TestPruneReadsSnapshotterMetadata(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIP: needs root (the snapshotter's overlayfs checks)")
	}
	dir, root := t.TempDir(), t.TempDir()
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	used, _ := st.PutMeta([]byte(`{"schemaVersion":2,"layers":[]}`))
	unused, _ := st.PutMeta([]byte(`{"schemaVersion":2,"config":{}}`))
	st.Close()
	ctx := namespaces.WithNamespace(context.Background(), "test")
	sn, err := snapshot.New(root, nopFS{})
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{snapshots.LabelSnapshotRef: "layer1",
		daemon.LabelCRIImageRef: "registry.test/app:v1", daemon.LabelCRIManifestDigest: used.String(),
		daemon.LabelCRILayerDigest: "sha256:" + strings.Repeat("3", 64)}
	if _, err := sn.Prepare(ctx, "extract", "", snapshots.WithLabels(labels)); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("remote snapshot: %v", err)
	}
	sn.Close()
	r, err := Prune(ctx, dir, root, 0, discard())
	if err != nil || r.Holder != 0 || r.AllMeta != "" || r.Objects != 1 || len(r.Problems) != 1 {
		t.Fatalf("prune with the snapshotter stopped: %+v, %v", r, err)
	}
	st, _ = store.Open(dir)
	defer st.Close()
	if !st.HasMeta(used) || st.HasMeta(unused) {
		t.Error("the manifest a remote snapshot names was pruned, or the other kept")
	}
}
