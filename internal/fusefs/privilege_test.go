package fusefs

import (
	"archive/tar"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// capDacReadSearch is a security.capability value (VFS_CAP_REVISION_2, effective) that
// grants CAP_DAC_READ_SEARCH: read any file.
const capDacReadSearch = "\x01\x00\x00\x02" + "\x04\x00\x00\x00" + "\x00\x00\x00\x00" + "\x00\x00\x00\x00" + "\x00\x00\x00\x00"

// privilegedLayer is a layer whose files would grant an unprivileged user root on the
// host if the mount honoured them: a setuid-root id, a cat with a file capability that
// reads any file, and a world-writable character device 10:229 (/dev/fuse's numbers).
func privilegedLayer(t *testing.T) []byte {
	t.Helper()
	id, err := os.ReadFile("/usr/bin/id")
	if err != nil {
		skipOrFail(t, "no /usr/bin/id to make setuid: "+err.Error())
	}
	cat, err := os.ReadFile("/usr/bin/cat")
	if err != nil {
		skipOrFail(t, "no /usr/bin/cat to give a capability: "+err.Error())
	}
	return mkTar(t, []tentry{
		dir("./", 0o755),
		dir("bin/", 0o755),
		file("bin/id", 0o4755, id),
		with(file("bin/capcat", 0o755, cat), xattr("security.capability", capDacReadSearch)),
		dir("dev/", 0o755),
		{Hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/fuse", Mode: 0o666, Devmajor: 10, Devminor: 229, ModTime: mt}},
	})
}

// reachableDir returns a new directory that every user can reach, removed when the test
// ends (t.TempDir's parents are not).
func reachableDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "lzpriv-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// asUser4242 runs argv as uid and gid 4242 without supplementary groups or capabilities,
// and returns its trimmed output. setpriv, a host program, does the exec: a child this
// process forked must not exec from a mount this process serves (see runWorkload in
// internal/cli).
func asUser4242(t *testing.T, argv ...string) (string, error) {
	t.Helper()
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		skipOrFail(t, "setpriv (util-linux) is not installed")
	}
	out, err := exec.Command(setpriv, append([]string{"--reuid", "4242", "--regid", "4242", "--clear-groups", "--"}, argv...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestMountGrantsNoPrivileges: a mount is nosuid and nodev, so a user of the host gains
// nothing from an image's setuid-root program, file capability or device node; with
// AllowSuidDev (lazypull mount --allow-suid-dev) the image's privileges work, which is
// why that is an opt-in.
func TestMountGrantsNoPrivileges(t *testing.T) {
	requireFUSE(t)
	l := convertLayer(t, privilegedLayer(t))
	secretDir := reachableDir(t)
	secret := filepath.Join(secretDir, "secret")
	if err := os.WriteFile(secret, []byte("root only"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := asUser4242(t, "cat", secret); err == nil {
		t.Fatalf("uid 4242 reads a 0600 file of root without any capability: %q", out)
	}
	for _, allow := range []bool{false, true} {
		name := "default"
		if allow {
			name = "AllowSuidDev"
		}
		t.Run(name, func(t *testing.T) {
			root, err := NewLayer(l.Index, &layerContent{l: l})
			if err != nil {
				t.Fatal(err)
			}
			mnt := filepath.Join(reachableDir(t), "mnt")
			if err := os.Mkdir(mnt, 0o755); err != nil {
				t.Fatal(err)
			}
			srv, err := Mount(mnt, root, MountOptions{AllowSuidDev: allow})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := srv.Unmount(); err != nil {
					t.Errorf("unmount: %v", err)
				}
			})
			opts, err := mountOptions(mnt)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("mount options: %s", strings.Join(opts, ","))

			if !allow {
				checkNoPrivileges(t, "the mount", mnt, secret)
				// A container's root file system is overlayfs over the layer views: the
				// overlayfs mount's own flags count, not those of its lower directories.
				checkPrivileges(t, "overlayfs over the mount", overlayOver(t, mnt), secret)
				return
			}
			checkPrivileges(t, "AllowSuidDev", mnt, secret)
		})
	}
}

// overlayOver mounts a writable overlayfs with lower directory lower, as a snapshotter
// mounts a container's root, where every user can reach it, and returns it.
func overlayOver(t *testing.T, lower string) string {
	t.Helper()
	base := reachableDir(t)
	upper, work, ovl := filepath.Join(base, "upper"), filepath.Join(base, "work"), filepath.Join(base, "ovl")
	for _, d := range []string{upper, work, ovl} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("overlay", ovl, "overlay", 0, "lowerdir="+lower+",upperdir="+upper+",workdir="+work); err != nil {
		skipOrFail(t, "cannot mount overlayfs: "+err.Error())
	}
	t.Cleanup(func() {
		if err := unix.Unmount(ovl, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount overlayfs: %v", err)
		}
	})
	return ovl
}

// privileges runs, as uid 4242, the setuid-root id, the capability cat on secret and an
// open of the device of privilegedLayer at root.
func privileges(t *testing.T, root, secret string) (euid, read string, readErr error, dev string, devErr error) {
	t.Helper()
	euid, err := asUser4242(t, filepath.Join(root, "bin/id"), "-u")
	if err != nil {
		t.Fatalf("setuid id: %v: %s", err, euid)
	}
	read, readErr = asUser4242(t, filepath.Join(root, "bin/capcat"), secret)
	dev, devErr = asUser4242(t, "sh", "-c", `exec 3<>"$1"`, "sh", filepath.Join(root, "dev/fuse"))
	return euid, read, readErr, dev, devErr
}

// checkNoPrivileges: uid 4242 gains nothing from the files of privilegedLayer at root.
func checkNoPrivileges(t *testing.T, what, root, secret string) {
	t.Helper()
	euid, read, readErr, dev, devErr := privileges(t, root, secret)
	if euid != "4242" {
		t.Errorf("%s: uid 4242 ran the image's setuid-root id with effective uid %s, want 4242", what, euid)
	}
	if readErr == nil || !strings.Contains(read, "Permission denied") {
		t.Errorf("%s: uid 4242 ran the image's cat with cap_dac_read_search on a 0600 file of root: %v: %q, want permission denied", what, readErr, read)
	}
	if devErr == nil || !strings.Contains(dev, "Permission denied") {
		t.Errorf("%s: uid 4242 opened the image's 0666 device 10:229 read-write: %v: %q, want permission denied", what, devErr, dev)
	}
}

// checkPrivileges: the files of privilegedLayer at root work as the image means them.
func checkPrivileges(t *testing.T, what, root, secret string) {
	t.Helper()
	euid, read, readErr, dev, devErr := privileges(t, root, secret)
	if euid != "0" {
		t.Errorf("%s: the image's setuid-root id ran with effective uid %s, want 0", what, euid)
	}
	if readErr != nil || read != "root only" {
		t.Errorf("%s: the image's cat with cap_dac_read_search read %q (%v), want the file", what, read, readErr)
	}
	if devErr != nil {
		t.Errorf("%s: the image's 0666 device 10:229 does not open: %v: %s", what, devErr, dev)
	}
}
