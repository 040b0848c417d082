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

// TestProfileRuntimeFlag: a bad --runtime, auto (which used to fall back to chroot), and the
// default (containerd) with no containerd are refused before anything is fetched (REF here
// names no registry that exists): the error names the socket and how to choose chroot.
func TestProfileRuntimeFlag(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "containerd.sock")
	hint := "--runtime chroot records without it"
	for _, tc := range []struct {
		name string
		args []string
		code int
		err  []string
	}{
		{"bad", []string{"profile", "--runtime", "docker", "nowhere.invalid/app:v1"}, exitUsage, []string{`-runtime "docker": want containerd or chroot`}},
		{"auto", []string{"profile", "--runtime", "auto", "--address", missing, "nowhere.invalid/app:v1"}, exitUsage, []string{"-runtime auto is no more", "want containerd (the default) or chroot"}},
		{"containerd", []string{"profile", "--runtime", "containerd", "--address", missing, "nowhere.invalid/app:v1"}, exitFailure, []string{"--runtime containerd: containerd at " + missing, hint}},
		{"default", []string{"profile", "--address", missing, "nowhere.invalid/app:v1"}, exitFailure, []string{"--runtime containerd: containerd at " + missing, hint}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := run(t, tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d\nstderr: %s", code, tc.code, errOut)
			}
			for _, want := range tc.err {
				if !strings.Contains(errOut, want) {
					t.Errorf("stderr lacks %q:\n%s", want, errOut)
				}
			}
			if strings.Contains(errOut, "runs chrooted") || strings.Contains(errOut, "nowhere.invalid") {
				t.Errorf("went on (chrooted, or fetching) instead of stopping:\n%s", errOut)
			}
		})
	}
}

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
			client, err := profileRuntime(context.Background(), log, "containerd", tc.address)
			if client != nil || err == nil {
				t.Fatalf("profileRuntime: %v, %v; want an error", client, err)
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
	client, err := profileRuntime(context.Background(), slog.New(slog.NewTextHandler(&logs, nil)), "chroot", stale)
	if err != nil || client != nil {
		t.Fatalf("profileRuntime chroot: %v, %v; want chroot (nil, nil)", client, err)
	}
	if !strings.Contains(logs.String(), "the workload runs chrooted") || !strings.Contains(logs.String(), "--runtime chroot") {
		t.Errorf("the log does not say chroot and why:\n%s", logs.String())
	}
}

// TestProfileChrootOwnNamespace: profile-chroot mounts nothing unless it runs in a mount
// namespace of its own (started so by profile --runtime chroot): run here, in the test's own
// namespace, it refuses before fetching anything.
func TestProfileChrootOwnNamespace(t *testing.T) {
	code, _, errOut := run(t, "profile-chroot", "--runtime", "chroot", "--", "nowhere.invalid/app:v1", "true")
	if code != exitFailure || !strings.Contains(errOut, "runs in its parent's mount namespace") || strings.Contains(errOut, "nowhere.invalid") {
		t.Errorf("exit %d; want a refusal:\n%s", code, errOut)
	}
}

// TestProfileChildArgs: profile-chroot is started with the flags that were set, and the
// image and command after "--", which parse back to the same.
func TestProfileChildArgs(t *testing.T) {
	cmd := lookup("profile")
	fs := newFlagSet(cmd)
	f := cmd.flags(fs).(*profileFlags)
	pos, err := parseInterspersed(fs, []string{"--runtime", "chroot", "--until", "ready now", "--duration", "90s", "--no-push", "img:1", "--", "sh", "-c", "--until x"})
	if err != nil {
		t.Fatal(err)
	}
	args := f.childArgs(profileChrootName, pos)
	fs2 := newFlagSet(profileChrootCommand)
	g := profileChrootCommand.flags(fs2).(*profileFlags)
	pos2, err := parseInterspersed(fs2, args[1:])
	if err != nil {
		t.Fatal(err)
	}
	if args[0] != profileChrootName || g.runtime != "chroot" || g.until != "ready now" || g.duration != f.duration || !g.noPush ||
		strings.Join(pos2, "|") != "img:1|sh|-c|--until x" {
		t.Errorf("%q parsed back to %+v, %q", args, g, pos2)
	}
}

// TestPrintablePath: profile show prints a profile's paths (from the registry) so that none
// sends the terminal a control sequence.
func TestPrintablePath(t *testing.T) {
	for in, want := range map[string]string{
		"usr/bin/python3":   "/usr/bin/python3",
		"usr/lib/é.py":      "/usr/lib/é.py",
		"x\x1b]0;pwned\x07": `"/x\x1b]0;pwned\a"`,
		"a\tb":              `"/a\tb"`,
		"line\nbreak":       `"/line\nbreak"`,
	} {
		if got := printablePath(in); got != want {
			t.Errorf("printablePath(%q) = %s, want %s", in, got, want)
		}
	}
}
