package record

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// hostileRoot makes an image root file system whose paths point out of it: a host file
// (secret, outside the root) that absolute and ".." symlinks name, /dev/zero, a fifo.
func hostileRoot(t *testing.T) (root, secret string) {
	t.Helper()
	dir := t.TempDir()
	root = filepath.Join(dir, "root")
	secret = filepath.Join(dir, "secret")
	for _, d := range []string{"etc", "bin", "usr/bin"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(secret, []byte("host secret\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	links := map[string]string{
		"etc/passwd":   "/dev/zero",
		"etc/shadow":   secret,                              // absolute: to the host's file
		"etc/dotdot":   "../../../../../../../../" + secret, // relative, climbing out
		"bin/hostprog": secret,                              // executable, on the host
		"hostdir":      dir,
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mkfifo(filepath.Join(root, "etc/group"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "usr/bin/prog"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return root, secret
}

// withDeadline fails the test if f does not return within d (a hang guard, not a timing).
func withDeadline(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s hangs (no return within %s)", what, d)
	}
}

// TestRootDirResolvesInRoot: no path of the image leads out of it, and the recorder reads
// nothing but regular files of it, never blocking: /etc/passwd -> /dev/zero (the host's
// /dev is mounted in the root when recording chrooted: here a real /dev/zero node stands in
// it) and a fifo /etc/group are refused without a read; absolute and ".." symlinks to a host
// file resolve inside the root, where there is nothing.
func TestRootDirResolvesInRoot(t *testing.T) {
	root, _ := hostileRoot(t)
	if os.Getuid() == 0 {
		if err := os.Mkdir(filepath.Join(root, "dev"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mknod(filepath.Join(root, "dev/zero"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 5))); err != nil {
			t.Fatal(err)
		}
	}
	rd, err := openRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	withDeadline(t, time.Minute, "reading the runtime's files", func() {
		for _, name := range []string{"etc/passwd", "etc/group"} {
			err := rd.readAll(name, maxRuntimeFile)
			if name == "etc/passwd" && os.Getuid() != 0 {
				if err != nil { // to dev/zero, which is not in the image: nothing read
					t.Errorf("readAll %s: %v; want nothing read, no error", name, err)
				}
				continue
			}
			if !errors.Is(err, errNotRegular) {
				t.Errorf("readAll %s: %v; want %v", name, err, errNotRegular)
			}
		}
	})
	for _, name := range []string{"etc/shadow", "etc/dotdot", "/etc/dotdot", "hostdir/secret"} {
		if f, err := rd.openRegular(name, maxRuntimeFile); !errors.Is(err, unix.ENOENT) {
			if f != nil {
				f.Close()
			}
			t.Errorf("openRegular %s: %v; want ENOENT (the host's file is outside the root)", name, err)
		}
	}
	// Runtime files checked for containerd: a symlink to nothing, a fifo, something where the
	// runtime mounts its own /dev are refused; a plain file or none is fine.
	if err := rd.checkRuntimeFile("etc/passwd", maxRuntimeFile); err == nil {
		t.Error("checkRuntimeFile etc/passwd (-> /dev/zero): no error")
	} else {
		t.Logf("etc/passwd: %v", err)
	}
	if err := rd.checkRuntimeFile("etc/group", maxRuntimeFile); err == nil {
		t.Error("checkRuntimeFile etc/group (a fifo): no error")
	}
	if err := rd.checkRuntimeFile("etc/nothing", maxRuntimeFile); err != nil {
		t.Errorf("checkRuntimeFile of a file the image lacks: %v", err)
	}
	if err := rd.checkRuntimeFile("usr/bin/prog", maxRuntimeFile); err != nil {
		t.Errorf("checkRuntimeFile of a plain file: %v", err)
	}
	if err := rd.checkRuntimeFile("usr/bin/prog", 3); err == nil {
		t.Error("checkRuntimeFile of a file over the bound: no error")
	}

	env := []string{"PATH=/bin:/usr/bin"}
	if p, err := lookPathIn(root, "hostprog", env); err == nil {
		t.Errorf("lookPathIn found %s: a symlink to a host program", p)
	}
	if p, err := lookPathIn(root, "prog", env); err != nil || p != "/usr/bin/prog" {
		t.Errorf("lookPathIn prog: %q, %v", p, err)
	}
}

// mountedAt lists the mount points of this mount namespace at or under dir.
func mountedAt(t *testing.T, dir string) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && (fields[4] == dir || strings.HasPrefix(fields[4], dir+"/")) {
			out = append(out, fields[4])
		}
	}
	return out
}

// TestRootDirMountOn: a mount on the image's /dev or /proc lands in the root: one that is a
// symlink to a host directory (or to nothing in the image) is refused and nothing is
// mounted on that directory; one the image lacks is made; a plain one is mounted on.
func TestRootDirMountOn(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("SKIP: mounts need root")
	}
	root, _ := hostileRoot(t)
	host := t.TempDir()
	if err := os.Symlink(host, filepath.Join(root, "dev")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc", filepath.Join(root, "sys")); err != nil {
		t.Fatal(err)
	}
	rd, err := openRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	for _, name := range []string{"dev", "/dev", "hostdir"} {
		err := rd.mountOn(name, "tmpfs", "tmpfs", 0)
		if err == nil {
			t.Errorf("mountOn %s (a symlink out of the image): no error", name)
		} else {
			t.Logf("mountOn %s: %v", name, err)
		}
	}
	if m := mountedAt(t, host); len(m) != 0 {
		t.Errorf("mounted on the host directory: %v", m)
	}
	// sys -> /etc: the image's /etc, not the host's.
	before := mountedAt(t, "/etc")
	if err := rd.mountOn("sys", "tmpfs", "tmpfs", 0); err != nil {
		t.Errorf("mountOn sys (-> /etc, in the image): %v", err)
	}
	t.Cleanup(func() { unix.Unmount(filepath.Join(root, "etc"), unix.MNT_DETACH) })
	if m := mountedAt(t, "/etc"); len(m) != len(before) {
		t.Errorf("mounted on the host's /etc: %v", m)
	}
	if err := rd.mountOn("proc", "tmpfs", "tmpfs", 0); err != nil {
		t.Fatalf("mountOn proc (absent): %v", err)
	}
	t.Cleanup(func() { unix.Unmount(filepath.Join(root, "proc"), unix.MNT_DETACH) })
	if m := mountedAt(t, root); len(m) != 2 || m[0] != filepath.Join(root, "etc") || m[1] != filepath.Join(root, "proc") {
		t.Errorf("mounts under the root: %v; want its etc (for sys) and proc", m)
	}
	// procdir -> /proc: resolving across the mount just made is refused.
	if err := os.Symlink("/proc", filepath.Join(root, "procdir")); err != nil {
		t.Fatal(err)
	}
	if err := rd.mountOn("procdir", "tmpfs", "tmpfs", 0); err == nil {
		t.Error("mountOn a symlink onto another mount: no error")
	}
}

// TestWritePrivate: --output is written readable by its owner only, over a file that was
// not, and over a symlink without writing through it.
func TestWritePrivate(t *testing.T) {
	dir := t.TempDir()
	out, other := filepath.Join(dir, "profile.json"), filepath.Join(dir, "other")
	if err := os.WriteFile(out, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other, []byte("other"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.json")
	if err := os.Symlink(other, link); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{out, link, filepath.Join(dir, "new.json")} {
		if err := writePrivate(p, []byte("{}\n")); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(p); fi.Mode() != 0o600 || string(b) != "{}\n" {
			t.Errorf("%s: mode %v, %q; want a regular file, 0600, the document", p, fi.Mode(), b)
		}
	}
	if b, _ := os.ReadFile(other); string(b) != "other" {
		t.Errorf("written through the symlink: %q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 4 {
		t.Errorf("%d files left in the directory; want 4 (no temporary one)", len(ents))
	}
}
