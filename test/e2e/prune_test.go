package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"lazypull/internal/daemon"
	"lazypull/internal/service"
	"lazypull/internal/snapshot"
	"lazypull/internal/testutil"
)

// remoteUsage is the snapshotter's Usage of each remote snapshot whose layer is one of
// layers (by digest), asked on its own socket (containerd asks the same for kubelet's
// image GC and `ctr snapshots usage`).
func (s *snapshotterEnv) remoteUsage(t *testing.T, layers map[string]bool) map[string]int64 {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+s.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := snapshotsapi.NewSnapshotsClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, err := c.List(ctx, &snapshotsapi.ListSnapshotsRequest{Snapshotter: "lazypull"})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for {
		r, err := list.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, info := range r.Info {
			if info.Labels[snapshot.RemoteLabel] != "true" || !layers[info.Labels[daemon.LabelCRILayerDigest]] {
				continue
			}
			u, err := c.Usage(ctx, &snapshotsapi.UsageRequest{Snapshotter: "lazypull", Key: info.Name})
			if err != nil {
				t.Fatalf("usage of %s: %v", info.Name, err)
			}
			out[info.Labels[daemon.LabelCRILayerDigest]] = u.Size
		}
	}
	return out
}

// layerMount is where the snapshotter mounted the lazypull layer of digest d ("" if
// nowhere).
func layerMount(t *testing.T, d string) string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, m := range mounts(t, f) {
		if m.source == "lazypull:"+d {
			return m.point
		}
	}
	return ""
}

// layerDigests are the digests of ref's layers.
func layerDigests(t *testing.T, ref string) map[string]bool {
	t.Helper()
	m, err := remoteImage(t, ref).Manifest()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, l := range m.Layers {
		out[l.Digest.String()] = true
	}
	return out
}

// TestCRIPruneRemovedImage: kubelet's image GC on a live node. Image B is pulled (its
// layers mounted, a file read); python (A) runs in a pod, and the pod and the image go
// (crictl rmp, rmi). `lazypull prune`, with the snapshotter running, is done by the
// snapshotter: it frees what A held in the store and keeps B's, whose files read the same
// after. A remote snapshot's Usage is what the store holds of its layer: more than 0, at
// most what was fetched.
func TestCRIPruneRemovedImage(t *testing.T) {
	e := setup(t)
	tool(t, "crictl")
	refA := e.lazyImage(t, "python")
	data := testutil.RandBytes(uint64(os.Getpid()), 3<<20)
	refB := e.hostileImage(t, "gcb", func(root string) {
		if err := os.WriteFile(filepath.Join(root, "data.bin"), data, 0o644); err != nil {
			t.Fatal(err)
		}
	})
	s := e.startSnapshotter(t, withCRI(e.registry, e.pauseImage(t)))

	s.crictl(t, "pull", refB)
	layersB := layerDigests(t, refB)
	var dirB string
	for d := range layersB {
		dirB = layerMount(t, d)
	}
	if dirB == "" {
		t.Fatalf("image B's layer is not mounted:\n%s", s.log)
	}
	readB := func(when string) {
		if b, err := os.ReadFile(filepath.Join(dirB, "data.bin")); err != nil || !bytes.Equal(b, data) {
			t.Fatalf("image B's file %s: %v (read %d bytes of %d)", when, err, len(b), len(data))
		}
	}
	readB("before the prune")

	// Python runs in a pod, then the pod and its image go.
	s.crictl(t, "pull", refA)
	podID, _ := s.runPod(t, "prune", map[string]any{
		"metadata": map[string]any{"name": "python"},
		"image":    map[string]any{"image": refA},
		"log_path": "python.log",
	}, 2*time.Minute)
	layersA := layerDigests(t, refA)
	usageA := s.remoteUsage(t, layersA)
	var heldA int64
	for _, n := range usageA {
		heldA += n
	}
	usageB := s.remoteUsage(t, layersB)
	st := stats(t, s.store, time.Now())
	for d, n := range usageB {
		t.Logf("usage of B's layer %s: %d bytes; fetched %d in all", d, n, st.Fetch.Bytes)
		if n < int64(len(data)) || n > st.Fetch.Bytes {
			t.Errorf("usage of B's layer: %d bytes; want at least its file read (%d), at most what was fetched (%d)", n, len(data), st.Fetch.Bytes)
		}
	}
	if len(usageA) != len(layersA) || heldA == 0 {
		t.Fatalf("usage of A's layers: %v", usageA)
	}
	s.crictl(t, "stopp", podID)
	s.crictl(t, "rmp", podID)
	s.crictl(t, "rmi", refA)
	// containerd removes the image's snapshots in its garbage collection, after rmi.
	testutil.WaitFor(t, time.Minute, "A's snapshots gone after rmi", func() bool { return len(s.remoteUsage(t, layersA)) == 0 })

	out := e.lazypull(t, "prune", "--json", "--store", s.store, "--root", filepath.Join(s.dir, "root"))
	if out.code != 0 {
		t.Fatalf("prune while the snapshotter runs: exit %d\n%s", out.code, out.stderr)
	}
	var r service.PruneReport
	if err := json.Unmarshal([]byte(out.stdout), &r); err != nil {
		t.Fatalf("prune --json printed %q: %v", out.stdout, err)
	}
	t.Logf("prune: %+v; A held %d bytes", r, heldA)
	if r.Holder == 0 || r.Holder != s.cmd.Process.Pid {
		t.Errorf("pruned by pid %d, not by the snapshotter (%d)", r.Holder, s.cmd.Process.Pid)
	}
	// A chunk two of A's layers hold counts in both usages, and is freed once.
	if r.Bytes < heldA*9/10 || r.After != r.Before-r.Bytes {
		t.Errorf("prune freed %d bytes (%d -> %d); A's layers held %d", r.Bytes, r.Before, r.After, heldA)
	}
	if len(r.Problems) != 0 {
		t.Errorf("prune could not tell: %v", r.Problems)
	}
	for d, n := range s.remoteUsage(t, layersB) {
		if n != usageB[d] {
			t.Errorf("B's layer %s held %d bytes before the prune, %d after", d, usageB[d], n)
		}
	}
	fetched := stats(t, s.store, time.Now()).Fetch.Bytes
	readB("after the prune")
	if after := stats(t, s.store, time.Now()).Fetch.Bytes; after != fetched {
		t.Errorf("reading B after the prune fetched %d bytes; the prune should have kept them", after-fetched)
	}
	if !strings.Contains(s.log.String(), "store pruned") {
		t.Errorf("the snapshotter did not log the prune:\n%s", s.log)
	}
}
