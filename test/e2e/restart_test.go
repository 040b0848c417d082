package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"lazypull/internal/testutil"
)

// readerScript reads 2,000 files under /usr, one after the other, printing FAIL for a file
// that cannot be read, a count every 100 and DONE at the end: a container that keeps
// reading its lazy layers while the snapshotter is killed and restarted under it.
const readerScript = `n=0; for f in $(find /usr -type f | sort | head -2000); do n=$((n+1)); cat "$f" >/dev/null || echo "FAIL $f"; [ $((n % 100)) = 0 ] && echo "read $n"; done; echo DONE $n`

// TestSnapshotterKill9KeepsContainers: the snapshotter is killed with SIGKILL while a
// container reads files of its lazy layers, then started again: every read of the
// container succeeds (those made while the snapshotter was down wait for it), the mounts
// are restored rather than made again, and a new container of the image runs.
func TestSnapshotterKill9KeepsContainers(t *testing.T) {
	e := setup(t)
	const ns = "lazypull-e2e-kill"
	s, ref := e.pythonPulled(t, ns)
	kill9KeepsContainers(t, s, ns, ref)
}

// TestSnapshotterKill9KeepsIndexedContainers is TestSnapshotterKill9KeepsContainers for
// the unconverted python image with an index artifact: its layers' mounts are restored
// from the index, bound again by the chain IDs the kept labels hold.
func TestSnapshotterKill9KeepsIndexedContainers(t *testing.T) {
	e := setup(t)
	const ns = "lazypull-e2e-kill-indexed"
	ref, _ := e.indexedImage(t, "killindexed")
	s := e.startSnapshotter(t)
	s.pull(t, e.bin, ns, ref)
	kill9KeepsContainers(t, s, ns, ref)
}

// kill9KeepsContainers runs a container of ref (pulled into ns) that reads its lazy layers,
// kills the snapshotter with SIGKILL meanwhile and starts it again, and checks that every
// read succeeded, the mounts were restored, and a new container of ref runs.
func kill9KeepsContainers(t *testing.T, s *snapshotterEnv, ns, ref string) {
	t.Helper()
	logFile := filepath.Join(s.dir, "reader.log")
	id := fmt.Sprintf("reader-%d", os.Getpid())
	s.ctr(t, ns, "run", "-d", "--log-uri", "file://"+logFile, "--snapshotter", "lazypull", ref, id, "sh", "-c", readerScript)
	t.Cleanup(func() {
		run(t, "ctr", "--address", filepath.Join(s.containerd, "containerd.sock"), "--namespace", ns, "task", "kill", "-s", "SIGKILL", id)
	})
	testutil.WaitFor(t, 60*time.Second, "the reader to start reading", func() bool {
		b, _ := os.ReadFile(logFile)
		return strings.Contains(string(b), "read 300")
	})

	if err := s.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-s.done
	before, _ := os.ReadFile(logFile)
	// The reader's next read of a layer not yet fetched waits on its mount meanwhile, queued
	// in the kernel for the snapshotter to come back (or, were that broken, fails or ends).
	ctl := fuseConnections(t)
	var lazy []string
	for _, m := range mountsUnder(s.dir) {
		if isLazyMount(m) {
			lazy = append(lazy, m)
		}
	}
	testutil.Await(t, time.Minute, "a read of the container's to wait on its lazy layers", func() (bool, string) {
		b, _ := os.ReadFile(logFile)
		return fuseWaiting(ctl, lazy...) > 0 || strings.Contains(string(b), "FAIL") || strings.Contains(string(b), "DONE"), string(b)
	})
	mid, _ := os.ReadFile(logFile)
	if strings.Contains(string(mid), "FAIL") {
		t.Fatalf("reads failed while the snapshotter was down:\n%s", mid)
	}
	t.Logf("while down: the reader went from %q to %q", lastLine(before), lastLine(mid))
	if strings.Contains(string(mid), "DONE") {
		t.Fatalf("the reader finished before the snapshotter was killed; the test shows nothing:\n%s", mid)
	}

	s.start(t)
	testutil.WaitFor(t, 10*time.Minute, "the reader to finish", func() bool {
		b, _ := os.ReadFile(logFile)
		return strings.Contains(string(b), "DONE")
	})
	out, _ := os.ReadFile(logFile)
	if strings.Contains(string(out), "FAIL") {
		t.Errorf("the container's reads failed across the restart:\n%s", out)
	}
	if !strings.Contains(s.log.String(), "layer mounts restored") {
		t.Errorf("the restarted snapshotter did not restore the mounts:\n%s", s.log)
	}
	s.waitReady(t, ns)
	if got := s.ctr(t, ns, "run", "--rm", "--snapshotter", "lazypull", ref, id+"-2"); strings.TrimSpace(got) != pythonOutput {
		t.Errorf("a new container after the restart printed %q, want %q", got, pythonOutput)
	}
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// TestSnapshotterRegistryDown: once a container of an image ran, its registry goes away;
// the snapshotter is then killed and restarted (mounts restored from the keeper), and later
// restarted with its mounts gone (as after a reboot: layers mounted again): each time a new
// container of the image starts and runs, from what the store holds.
func TestSnapshotterRegistryDown(t *testing.T) {
	e := setup(t)
	p := newFaultProxy(t, e.registry)
	ref := strings.Replace(e.lazyImage(t, "python"), e.registry, p.addr, 1)
	s := e.startSnapshotter(t)
	const ns = "lazypull-e2e-offline"
	s.pull(t, e.bin, ns, ref)
	id := fmt.Sprintf("offline-%d", os.Getpid())
	if got := s.ctr(t, ns, "run", "--rm", "--snapshotter", "lazypull", ref, id+"-a"); strings.TrimSpace(got) != pythonOutput {
		t.Fatalf("container printed %q, want %q", got, pythonOutput)
	}
	p.srv.Close() // the registry is gone from here on

	// restarted starts the snapshotter again; then a new container of the image must run
	// (when names the event), and the snapshotter's log must say logged (missing says what
	// its absence means).
	restarted := func(when, id, logged, missing string) {
		t.Helper()
		s.start(t)
		s.waitReady(t, ns)
		if got := s.ctr(t, ns, "run", "--rm", "--snapshotter", "lazypull", ref, id); strings.TrimSpace(got) != pythonOutput {
			t.Fatalf("after %s with the registry down, a container printed %q, want %q\n%s", when, got, pythonOutput, s.log)
		}
		if !strings.Contains(s.log.String(), logged) {
			t.Errorf("%s:\n%s", missing, s.log)
		}
	}

	// 1. killed and restarted: the kept mounts are served again
	if err := s.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-s.done
	restarted("a restart", id+"-b", "layer mounts restored", "the restarted snapshotter did not restore the mounts")

	// 2. stopped, and its mounts gone with the keeper (a reboot): mounted again on use
	s.cmd.Process.Signal(syscall.SIGTERM)
	<-s.done
	for _, m := range mountsUnder(s.dir) {
		if isLazyMount(m) {
			if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
				t.Fatal(err)
			}
		}
	}
	restarted("a reboot", id+"-c", "remote snapshot mounted again", "the layers were not mounted again")
}
