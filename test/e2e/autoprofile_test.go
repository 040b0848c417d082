package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lazypull/internal/daemon"
	"lazypull/internal/testutil"
)

// TestSnapshotterAutoProfile: a container of an image with no profile runs through the
// snapshotter (auto_profile on by default; auto_profile_push set): its start is recorded,
// kept in the node's store and pushed with its pack as a referrer of the image. Another
// node (a snapshotter of its own, on a fresh store) then finds that profile as the image
// is pulled, prefetches it in its pack, and the same workload fetches nothing more.
func TestSnapshotterAutoProfile(t *testing.T) {
	e := setup(t)
	ref := e.profileRepoImage(t, "auto-sn")
	s := e.startSnapshotterWith(t, "auto_profile_quiet = \"1s\"\nauto_profile_push = true\n")
	const ns = "lazypull-e2e-auto"
	must(t, e.bin, "pull", "--address", filepath.Join(s.containerd, "containerd.sock"), "--namespace", ns, "--plain-http", ref)
	id := fmt.Sprintf("auto-%d", os.Getpid())
	s.ctr(t, ns, "container", "create", "--snapshotter", "lazypull", ref, id, "--", "python3", "-c", heavyScript)
	t.Cleanup(func() {
		run(t, "ctr", "--address", filepath.Join(s.containerd, "containerd.sock"), "--namespace", ns, "container", "rm", id)
	})
	if out := s.ctr(t, ns, "task", "start", id); strings.TrimSpace(out) != profileLine {
		t.Fatalf("container printed %q, want %q", out, profileLine)
	}
	testutil.WaitFor(t, time.Minute, "the automatic profile pushed", func() bool {
		return strings.Contains(s.log.String(), "automatic profile pushed")
	})
	if !strings.Contains(s.log.String(), "automatic profile kept") {
		t.Errorf("the snapshotter's log does not report the profile kept:\n%s", s.log)
	}

	// Another node: a snapshotter of its own, on a fresh store, the same workload.
	s2 := e.startSnapshotterWith(t, "prefetch_wait = \"2m\"\n")
	start := time.Now()
	must(t, e.bin, "pull", "--address", filepath.Join(s2.containerd, "containerd.sock"), "--namespace", ns, "--plain-http", ref)
	st, p := settledPrefetch(t, s2.store, start)
	t.Logf("second node: prefetch %+v", p)
	if p.Source != daemon.SourceReferrers || !p.Pack || p.Files == 0 || p.Stale != 0 || p.Err != "" {
		t.Fatalf("second node: prefetch %+v; want the pushed profile, with its pack\n%s", p, s2.log)
	}
	s2.ctr(t, ns, "container", "create", "--snapshotter", "lazypull", ref, id, "--", "python3", "-c", heavyScript)
	t.Cleanup(func() {
		run(t, "ctr", "--address", filepath.Join(s2.containerd, "containerd.sock"), "--namespace", ns, "container", "rm", id)
	})
	if out := s2.ctr(t, ns, "task", "start", id); strings.TrimSpace(out) != profileLine {
		t.Fatalf("container printed %q, want %q", out, profileLine)
	}
	if again := stats(t, s2.store, time.Now()); again.Store.ChunksFetched != st.Store.ChunksFetched || again.Fetch.Requests != st.Fetch.Requests {
		t.Errorf("the workload fetched %d chunks in %d requests on the second node after the prefetch; want none",
			again.Store.ChunksFetched-st.Store.ChunksFetched, again.Fetch.Requests-st.Fetch.Requests)
	}
}
