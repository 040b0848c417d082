package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// readerScript reads every file under /usr, one after the other with a pause, printing
// FAIL for a file that cannot be read and DONE at the end: a container that keeps reading
// its lazy layers while the snapshotter is killed and restarted under it.
const readerScript = `n=0; for f in $(find /usr -type f | sort | head -1200); do n=$((n+1)); cat "$f" >/dev/null || echo "FAIL $f"; [ $((n % 200)) = 0 ] && echo "read $n" && sleep 0.2; done; echo DONE $n`

// TestSnapshotterKill9KeepsContainers: the snapshotter is killed with SIGKILL while a
// container reads files of its lazy layers, then started again: every read of the
// container succeeds (those made while the snapshotter was down wait for it), the mounts
// are restored rather than made again, and a new container of the image runs.
func TestSnapshotterKill9KeepsContainers(t *testing.T) {
	e := setup(t)
	ref := e.lazyImage(t, "python")
	s := e.startSnapshotter(t)
	const ns = "lazypull-e2e-kill"
	must(t, e.bin, "pull", "--address", filepath.Join(s.containerd, "containerd.sock"), "--namespace", ns, "--plain-http", ref)

	logFile := filepath.Join(s.dir, "reader.log")
	id := fmt.Sprintf("reader-%d", os.Getpid())
	s.ctr(t, ns, "run", "-d", "--log-uri", "file://"+logFile, "--snapshotter", "lazypull", ref, id, "sh", "-c", readerScript)
	t.Cleanup(func() {
		run(t, "ctr", "--address", filepath.Join(s.containerd, "containerd.sock"), "--namespace", ns, "task", "kill", "-s", "SIGKILL", id)
	})
	waitFor(t, 60*time.Second, "the reader to start reading", func() bool {
		b, _ := os.ReadFile(logFile)
		return strings.Contains(string(b), "read 400")
	})

	if err := s.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-s.done
	before, _ := os.ReadFile(logFile)
	time.Sleep(2 * time.Second) // the reader waits on the mounts meanwhile
	mid, _ := os.ReadFile(logFile)
	if strings.Contains(string(mid), "FAIL") {
		t.Fatalf("reads failed while the snapshotter was down:\n%s", mid)
	}
	t.Logf("while down: the reader went from %q to %q", lastLine(before), lastLine(mid))

	s.start(t)
	waitFor(t, 10*time.Minute, "the reader to finish", func() bool {
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
	if got := s.ctr(t, ns, "run", "--rm", "--snapshotter", "lazypull", ref, id+"-2"); strings.TrimSpace(got) != pythonOutput {
		t.Errorf("a new container after the restart printed %q, want %q", got, pythonOutput)
	}
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
