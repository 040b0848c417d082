package cli

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
)

// TestProfileRuntimeFlag: a bad --runtime, and --runtime containerd with no containerd, are
// refused before anything is fetched (REF here names no registry that exists).
func TestProfileRuntimeFlag(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "containerd.sock")
	for _, tc := range []struct {
		args []string
		code int
		err  string
	}{
		{[]string{"profile", "--runtime", "docker", "nowhere.invalid/app:v1"}, exitUsage, `-runtime "docker": want containerd, chroot or auto`},
		{[]string{"profile", "--runtime", "containerd", "--address", missing, "nowhere.invalid/app:v1"}, exitFailure, "--runtime containerd: containerd at " + missing},
	} {
		t.Run(strings.Join(tc.args[1:3], " "), func(t *testing.T) {
			code, _, errOut := run(t, tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.err) {
				t.Errorf("exit %d, want %d with %q\nstderr: %s", code, tc.code, tc.err, errOut)
			}
		})
	}
}

// TestProfileRuntimeAuto: auto falls back to chroot, saying why, when no containerd answers
// at the address: no socket there, or a socket nobody listens on (a containerd that died).
func TestProfileRuntimeAuto(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	for _, tc := range []struct{ mode, address, want string }{
		{"auto", filepath.Join(dir, "missing.sock"), "no such file or directory"},
		{"auto", stale, "does not answer"},
		{"chroot", stale, "--runtime chroot"},
	} {
		t.Run(tc.mode+" "+filepath.Base(tc.address), func(t *testing.T) {
			var logs bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			client, err := profileRuntime(context.Background(), log, tc.mode, tc.address)
			if err != nil || client != nil {
				t.Fatalf("profileRuntime: %v, %v; want chroot (nil, nil)", client, err)
			}
			if s := logs.String(); !strings.Contains(s, "the workload runs chrooted") || !strings.Contains(s, tc.want) {
				t.Errorf("the log does not say chroot and why (%q):\n%s", tc.want, s)
			}
		})
	}
}
