package cli

import (
	"path/filepath"
	"strings"
	"testing"

	"lazypull/internal/cmdline"
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
		{"bad", []string{"profile", "--runtime", "docker", "nowhere.invalid/app:v1"}, cmdline.ExitUsage, []string{`-runtime "docker": want containerd or chroot`}},
		{"auto", []string{"profile", "--runtime", "auto", "--address", missing, "nowhere.invalid/app:v1"}, cmdline.ExitUsage, []string{"-runtime auto is no more", "want containerd (the default) or chroot"}},
		{"containerd", []string{"profile", "--runtime", "containerd", "--address", missing, "nowhere.invalid/app:v1"}, cmdline.ExitFailure, []string{"--runtime containerd: containerd at " + missing, hint}},
		{"default", []string{"profile", "--address", missing, "nowhere.invalid/app:v1"}, cmdline.ExitFailure, []string{"--runtime containerd: containerd at " + missing, hint}},
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

// TestProfileChrootOwnNamespace: profile-chroot mounts nothing unless it runs in a mount
// namespace of its own (started so by profile --runtime chroot): run here, in the test's own
// namespace, it refuses before fetching anything.
func TestProfileChrootOwnNamespace(t *testing.T) {
	code, _, errOut := run(t, "profile-chroot", "--runtime", "chroot", "--", "nowhere.invalid/app:v1", "true")
	if code != cmdline.ExitFailure || !strings.Contains(errOut, "runs in its parent's mount namespace") || strings.Contains(errOut, "nowhere.invalid") {
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
	fs2 := newFlagSet(profileChrootCommand())
	g := profileChrootCommand().flags(fs2).(*profileFlags)
	pos2, err := parseInterspersed(fs2, args[1:])
	if err != nil {
		t.Fatal(err)
	}
	if args[0] != profileChrootName || g.runtime != "chroot" || g.until != "ready now" || g.duration != f.duration || !g.noPush ||
		strings.Join(pos2, "|") != "img:1|sh|-c|--until x" {
		t.Errorf("%q parsed back to %+v, %q", args, g, pos2)
	}
}

// TestProfileVolumeFlags: --volume and --runner-image go together, with containerd only,
// and a volume path that is no clean absolute path is a usage error.
func TestProfileVolumeFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"profile", "--volume", "/model", "model"}, "-volume and -runner-image go together"},
		{[]string{"profile", "--runner-image", "reader", "model"}, "-volume and -runner-image go together"},
		{[]string{"profile", "--runtime", "chroot", "--volume", "/model", "--runner-image", "reader", "model"}, "-runtime containerd only"},
		{[]string{"profile", "--volume", "model", "--runner-image", "reader", "model"}, "want an absolute, clean path"},
	} {
		if code, _, stderr := run(t, tc.args...); code != cmdline.ExitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want %d and %q", tc.args, code, stderr, cmdline.ExitUsage, tc.want)
		}
	}
}
