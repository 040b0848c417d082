package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"lazypull/internal/testutil"
)

// TestStargzDaemonRunsEstargzLazily: tools/stargz-grpc's containerd-stargz-grpc (built into
// bin/tools by scripts/deps.sh) as containerd 1.6's proxy plugin "stargz", the way lazypull
// bench's stargz modes run it: the python test image converted to eStargz by ctr-remote,
// pulled with ctr-remote image rpull, run with ctr run --snapshotter stargz. Its layers must
// be FUSE mounts of the daemon (the lazy path, not an unpack), and SIGTERM must leave
// nothing mounted.
func TestStargzDaemonRunsEstargzLazily(t *testing.T) {
	e := setup(t)
	bin := tool(t, "containerd-stargz-grpc")
	tool(t, "ctr-remote")

	// eStargz at gzip level 1: this test is about running it, not about its size.
	orig := fmt.Sprintf("%s/e2e/sgz-python-%d:orig", e.registry, os.Getpid())
	esgz := strings.TrimSuffix(orig, ":orig") + ":esgz"
	e.push(t, filepath.Join(e.images, "python"), "python", orig)
	e.ctr(t, "image", "pull", "--plain-http", orig)
	must(t, "ctr-remote", "--address", e.containerd, "--namespace", "lazypull-e2e",
		"image", "convert", "--estargz", "--estargz-compression-level", "1", "--oci", orig, esgz)
	e.ctr(t, "image", "push", "--plain-http", esgz)
	t.Cleanup(func() {
		run(t, "ctr", "--address", e.containerd, "--namespace", "lazypull-e2e", "image", "rm", orig, esgz)
	})

	dir, err := os.MkdirTemp("", "lzsgz-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	sock, root, ctd := filepath.Join(dir, "sgz.sock"), filepath.Join(dir, "root"), filepath.Join(dir, "ctd")
	config := filepath.Join(dir, "config.toml")
	// The background fetch off: the test checks what the run itself needs.
	if err := os.WriteFile(config, []byte("no_background_fetch = true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	log := &testutil.LogBuffer{}
	cmd := exec.Command(bin, "--address", sock, "--root", root, "--config", config, "--log-level", "debug")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		if out, err := exec.Command("../../scripts/containerd.sh", "stop", ctd).CombinedOutput(); err != nil {
			t.Errorf("containerd.sh stop: %v\n%s", err, out)
		}
		select {
		case err := <-done:
			t.Errorf("containerd-stargz-grpc had exited (%v):\n%s", err, log)
		default:
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("containerd-stargz-grpc ended with %v:\n%s", err, log)
				}
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Errorf("containerd-stargz-grpc did not stop on SIGTERM in 30 s:\n%s", log)
			}
		}
		left := mountsUnder(dir)
		for i := len(left) - 1; i >= 0; i-- {
			t.Errorf("still mounted after containerd-stargz-grpc stopped: %s", left[i])
			exec.Command("umount", "-l", left[i]).Run()
		}
		if len(left) == 0 {
			os.RemoveAll(dir)
		}
	}
	t.Cleanup(stop)
	waitStarted(t, "containerd-stargz-grpc (its socket)", done, log, func() bool { return exists(sock) })
	start := exec.Command("../../scripts/containerd.sh", "start", ctd)
	start.Env = append(os.Environ(), "CONTAINERD_PROXY_SNAPSHOTTER="+sock, "CONTAINERD_PROXY_SNAPSHOTTER_NAME=stargz")
	if out, err := start.CombinedOutput(); err != nil {
		t.Fatalf("containerd.sh start: %v\n%s", err, out)
	}

	ctr := []string{"--address", filepath.Join(ctd, "containerd.sock"), "--namespace", "lazypull-e2e"}
	must(t, "ctr-remote", append(ctr, "image", "rpull", "--plain-http", "--snapshotter", "stargz", esgz)...)
	var lazy []string
	for _, m := range mountsUnder(root) {
		if isFUSE(m) {
			lazy = append(lazy, m)
		}
	}
	if len(lazy) != 2 {
		t.Errorf("want the 2 layers as FUSE mounts of the daemon, got %v:\n%s", lazy, log)
	}
	out := must(t, "ctr", append(ctr, "run", "--rm", "--snapshotter", "stargz", esgz, "sgz-e2e",
		"python3", "-c", "import json; print(json.dumps({'hello': 'stargz'}))")...)
	if !strings.Contains(out, `{"hello": "stargz"}`) {
		t.Errorf("python in the eStargz image printed %q", out)
	}
	stop()
	if !strings.Contains(log.String(), "preparing filesystem mount") {
		t.Errorf("the daemon's log does not show a layer mounted:\n%s", log)
	}
}

// isFUSE reports whether dir is a FUSE mount point.
func isFUSE(dir string) bool {
	ms := mountsAt(dir)
	return len(ms) > 0 && strings.HasPrefix(ms[0].fstype, "fuse")
}
