package record

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
)

// TestProfileRuntimeNoFallback: the default runtime, containerd, is an error when no
// containerd answers at the address (no socket there, or a socket nobody listens on: a
// containerd that died), never a silent chroot; chroot is what --runtime chroot asks for.
func TestProfileRuntimeNoFallback(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	missing := filepath.Join(dir, "missing.sock")
	for _, tc := range []struct{ address, want string }{
		{missing, "containerd at " + missing + ": stat " + missing + ": no such file or directory"},
		{stale, "containerd at " + stale + " does not answer"},
	} {
		t.Run(filepath.Base(tc.address), func(t *testing.T) {
			var logs bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			client, err := connect(context.Background(), log, Containerd, tc.address)
			if client != nil || err == nil {
				t.Fatalf("connect: %v, %v; want an error", client, err)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "--runtime chroot") {
				t.Errorf("error %q; want %q and how to choose chroot", err, tc.want)
			}
			if strings.Contains(logs.String(), "chrooted") {
				t.Errorf("the log says chroot:\n%s", logs.String())
			}
		})
	}
	var logs bytes.Buffer
	client, err := connect(context.Background(), slog.New(slog.NewTextHandler(&logs, nil)), Chroot, stale)
	if err != nil || client != nil {
		t.Fatalf("connect chroot: %v, %v; want chroot (nil, nil)", client, err)
	}
	if !strings.Contains(logs.String(), "the workload runs chrooted") || !strings.Contains(logs.String(), "--runtime chroot") {
		t.Errorf("the log does not say chroot and why:\n%s", logs.String())
	}
}

// TestCheckVolume: a volume needs its path and the runner image, containerd, and a path
// that is absolute, clean, not the root and not where the runtime mounts its own.
func TestCheckVolume(t *testing.T) {
	ok := Options{Runtime: Containerd, Runner: "reader", Volume: "/model"}
	if err := checkVolume(ok); err != nil {
		t.Fatalf("checkVolume(%+v): %v", ok, err)
	}
	for _, tc := range []struct {
		edit func(*Options)
		want string
	}{
		{func(o *Options) { o.Runner = "" }, "needs both"},
		{func(o *Options) { o.Volume = "" }, "needs both"},
		{func(o *Options) { o.Runtime = Chroot }, "--runtime containerd only"},
		{func(o *Options) { o.Volume = "model" }, "absolute, clean"},
		{func(o *Options) { o.Volume = "/model/../etc" }, "absolute, clean"},
		{func(o *Options) { o.Volume = "/" }, "other than /"},
		{func(o *Options) { o.Volume = "/proc/x" }, "mounts its own /proc"},
		{func(o *Options) { o.Volume = "/dev" }, "mounts its own /dev"},
	} {
		o := ok
		tc.edit(&o)
		err := checkVolume(o)
		if !errors.Is(err, ErrVolume) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("checkVolume(%+v): %v; want ErrVolume, %q", o, err, tc.want)
		}
	}
}
