package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"lazypull/internal/daemon"
)

// pull runs `lazypull pull` of ref into the env's containerd, handing the manifest to the
// env's snapshotter early.
func (s *snapshotterEnv) pull(t *testing.T, bin, ns, ref string) {
	t.Helper()
	must(t, bin, "pull", "--address", filepath.Join(s.containerd, "containerd.sock"), "--snapshotter-address", s.sock, "--namespace", ns, "--plain-http", ref)
}

// runContainers starts n containers of ref through the lazypull snapshotter at once
// (`ctr run --rm`, released together), each writing its number with python into a file of
// a directory bind-mounted from the host, and fails t unless every one exits 0 having
// written exactly that. A file, not stdout: under load ctr loses now and then the output of
// a process that exits right after printing (containerd's FIFO copy; one container of 20
// printed nothing and exited 0 in a CI run), which says nothing of the image's files.
func (s *snapshotterEnv) runContainers(t *testing.T, ns, ref string, n int) {
	t.Helper()
	outDir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	type outcome struct {
		out, errOut string
		err         error
	}
	results := make([]outcome, n)
	release := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			id := fmt.Sprintf("scale-%d-%d", os.Getpid(), i)
			cmd := exec.CommandContext(ctx, "ctr", "--address", filepath.Join(s.containerd, "containerd.sock"), "--namespace", ns,
				"run", "--rm", "--snapshotter", "lazypull", "--mount", "type=bind,src="+outDir+",dst=/out,options=rbind:rw", ref, id,
				"python3", "-c", `import sys; open("/out/" + sys.argv[1], "w").write("container " + sys.argv[1])`, fmt.Sprint(i))
			var out, errOut bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &errOut
			<-release
			err := cmd.Run()
			results[i] = outcome{out.String(), errOut.String(), err}
		})
	}
	start := time.Now()
	close(release)
	wg.Wait()
	t.Logf("%d containers ran in %v", n, time.Since(start).Round(time.Millisecond))
	for i, r := range results {
		got, _ := os.ReadFile(filepath.Join(outDir, fmt.Sprint(i)))
		if want := fmt.Sprintf("container %d", i); r.err != nil || string(got) != want {
			t.Errorf("container %d: %v; wrote %q, want %q; stdout: %s; stderr: %s", i, r.err, got, want, r.out, r.errOut)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

// settledStats waits until the store's owner reports, after now, every chunk it fetched as
// held in the store (chunks are stored by background writers), and returns that report; if
// that does not happen within 30 s it returns the last one. The chunks the store holds
// are the chunk objects and one-chunk files (Objects, less the multi-chunk files
// assembled: the store started empty and evicts nothing here) and the chunks inside the
// assembled files (Chunks). Every chunk fetched is stored, so they equal ChunksFetched
// exactly when no chunk was fetched twice.
func settledStats(t *testing.T, storeDir string) daemon.Stats {
	t.Helper()
	st := stats(t, storeDir, time.Now())
	deadline := time.Now().Add(30 * time.Second)
	for distinctChunks(st) != st.Store.ChunksFetched && time.Now().Before(deadline) {
		st = stats(t, storeDir, st.Written)
	}
	return st
}

func distinctChunks(st daemon.Stats) int64 {
	return int64(st.Store.Objects) - st.Store.Assembled + int64(st.Store.Chunks)
}

// TestSnapshotterTwentyContainers: 20 containers of one lazypull image started at once
// through the snapshotter all run, and the image's chunks are fetched from the registry
// once each: the chunks fetched are as many as the distinct chunks stored, and the bytes
// fetched are at most 1.1x what one container alone fetches from an empty store.
func TestSnapshotterTwentyContainers(t *testing.T) {
	e := setup(t)
	ref := e.lazyImage(t, "python")
	const ns, n = "lazypull-e2e-scale", 20

	// What one container needs: the same run alone, in a snapshotter with a store of its own.
	one := e.startSnapshotter(t)
	one.pull(t, e.bin, ns, ref)
	one.runContainers(t, ns, ref, 1)
	base := settledStats(t, one.store)
	t.Logf("one container: %d chunks (%d bytes) fetched, %d bytes in %d requests from the registry",
		base.Store.ChunksFetched, base.Store.BytesFetched, base.Fetch.Bytes, base.Fetch.Requests)
	if base.Store.ChunksFetched == 0 || distinctChunks(base) != base.Store.ChunksFetched {
		t.Fatalf("one container: %d chunks fetched, %d stored: %+v", base.Store.ChunksFetched, distinctChunks(base), base.Store)
	}

	s := e.startSnapshotter(t)
	s.pull(t, e.bin, ns, ref)
	s.runContainers(t, ns, ref, n)
	st := settledStats(t, s.store)
	t.Logf("%d containers: %d chunks (%d bytes) fetched, %d bytes in %d requests from the registry (%d errors, %d retries)",
		n, st.Store.ChunksFetched, st.Store.BytesFetched, st.Fetch.Bytes, st.Fetch.Requests, st.Fetch.Errors, st.Fetch.Retries)
	if d := distinctChunks(st); d != st.Store.ChunksFetched {
		t.Errorf("%d chunks fetched, %d distinct chunks stored: some fetched more than once\nstore: %+v", st.Store.ChunksFetched, d, st.Store)
	}
	if limit := base.Fetch.Bytes * 11 / 10; st.Fetch.Bytes > limit {
		t.Errorf("%d containers fetched %d bytes from the registry; one alone fetched %d, so want <= %d", n, st.Fetch.Bytes, base.Fetch.Bytes, limit)
	}
	if st.Store.Corrupt != 0 || st.Store.WriteErrors != 0 {
		t.Errorf("store: %d corrupt frames, %d write errors", st.Store.Corrupt, st.Store.WriteErrors)
	}
}
