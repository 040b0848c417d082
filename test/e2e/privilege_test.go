package e2e

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"lazypull/internal/testutil"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// capDacOverride is a security.capability value (VFS_CAP_REVISION_2, effective) granting
// CAP_DAC_OVERRIDE, which containerd's default spec leaves in a container's bounding set.
const capDacOverride = "\x01\x00\x00\x02" + "\x02\x00\x00\x00" + "\x00\x00\x00\x00" + "\x00\x00\x00\x00" + "\x00\x00\x00\x00"

// privScript is the command of the privileged image, run as uid 4242: the real uid, the
// effective uid the image's setuid-root id gets, the root-only file as read with the
// file capability (or "denied"), whether the 0666 device node opens read-write.
const privScript = `P=/usr/local/bin S=/usr/local/share
id -u; $P/suid-id -u; $P/suid-id -ru
$P/cap-cat $S/secret 2>/dev/null || echo denied
if (exec 3<>$S/null) 2>/dev/null; then echo dev-open; else echo dev-denied; fi`

// privWant is what privScript prints where the image's privileges work, as they do in a
// container on containerd's overlayfs snapshotter.
const privWant = "4242\n0\n4242\nroot only\ndev-open"

// privNone is what privScript prints where the image grants nothing.
const privNone = "4242\n4242\n4242\ndenied\ndev-denied"

var privOnce sync.Map

// privilegedImage pushes, once per test binary, the python image plus a layer holding a
// setuid-root id (/usr/bin/id of this Debian host, as the image's), a cat with a file
// capability (CAP_DAC_OVERRIDE), a root-only file and a 0666 character device 1:3, with
// user 4242:4242 and privScript as its command, and converts it; it returns the original
// and the lazy reference.
func (e *env) privilegedImage(t *testing.T) (orig, lazy string) {
	t.Helper()
	repo := fmt.Sprintf("%s/e2e/priv-%d", e.registry, os.Getpid())
	orig, lazy = repo+":orig", repo+":lazy"
	if _, loaded := privOnce.LoadOrStore(repo, true); loaded {
		return orig, lazy
	}
	e.push(t, filepath.Join(e.images, "python"), "python", repo+":base")
	id, err := os.ReadFile("/usr/bin/id")
	if err != nil {
		t.Fatal(err)
	}
	cat, err := os.ReadFile("/usr/bin/cat")
	if err != nil {
		t.Fatal(err)
	}
	mt := time.Unix(1700000000, 0)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct {
		hdr  tar.Header
		body []byte
	}{
		{tar.Header{Typeflag: tar.TypeReg, Name: "usr/local/bin/suid-id", Mode: 0o4755}, id},
		{tar.Header{Typeflag: tar.TypeReg, Name: "usr/local/bin/cap-cat", Mode: 0o755, Format: tar.FormatPAX,
			PAXRecords: map[string]string{"SCHILY.xattr.security.capability": capDacOverride}}, cat},
		{tar.Header{Typeflag: tar.TypeReg, Name: "usr/local/share/secret", Mode: 0o600}, []byte("root only\n")},
		{tar.Header{Typeflag: tar.TypeChar, Name: "usr/local/share/null", Mode: 0o666, Devmajor: 1, Devminor: 3}, nil},
	} {
		h := f.hdr
		h.Size, h.ModTime = int64(len(f.body)), mt
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(remoteImage(t, repo+":base"), testutil.GzipLayer(t, buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg := cf.Config
	cfg.User, cfg.Entrypoint, cfg.Cmd = "4242:4242", nil, []string{"/bin/sh", "-c", privScript}
	if img, err = mutate.Config(img, cfg); err != nil {
		t.Fatal(err)
	}
	pushImage(t, orig, img)
	e.convert(t, orig, lazy)
	return orig, lazy
}

// TestSnapshotterSetuidAsOverlayfs: a container of an image with a setuid-root program, a
// file capability and a device node, run as uid 4242 through the lazypull snapshotter,
// prints what it prints on containerd's overlayfs snapshotter, where all three work; the
// layer mounts under it grant nothing on the host (nosuid, nodev).
func TestSnapshotterSetuidAsOverlayfs(t *testing.T) {
	e := setup(t)
	orig, lazy := e.privilegedImage(t)
	s := e.startSnapshotter(t)
	const ns = "lazypull-e2e-priv"

	s.pullBoth(t, e.bin, ns, orig, lazy)
	// --allow-new-privs: without it ctr sets no_new_privs, and setuid bits and file
	// capabilities do nothing on any snapshotter. Docker's and Kubernetes' defaults
	// (allowPrivilegeEscalation) leave it off.
	want := strings.TrimSpace(s.ctr(t, ns, "run", "--rm", "--allow-new-privs", "--snapshotter", "overlayfs", orig, fmt.Sprintf("priv-ovl-%d", os.Getpid())))
	if want != privWant {
		t.Fatalf("on the overlayfs snapshotter the container printed\n%s\nwant\n%s", want, privWant)
	}
	got := strings.TrimSpace(s.ctr(t, ns, "run", "--rm", "--allow-new-privs", "--snapshotter", "lazypull", lazy, fmt.Sprintf("priv-lazy-%d", os.Getpid())))
	if got != want {
		t.Errorf("on the lazypull snapshotter the container printed\n%s\nwant, as on overlayfs,\n%s", got, want)
	}

	n := 0
	for _, mp := range mountsUnder(s.dir) {
		if !isLazyMount(mp) {
			continue
		}
		n++
		if opts := mountOpts(mp); !hasAll(opts, "ro", "nosuid", "nodev") {
			t.Errorf("layer mount %s: options %s, want ro,nosuid,nodev", mp, opts)
		}
	}
	if n == 0 {
		t.Errorf("no lazy layer mount under %s", s.dir)
	}
}

// TestLazypullMountGrantsNoPrivileges: `lazypull mount` of the same image, read by uid 4242 on
// the host, gives its setuid-root program no root, its file capability no capability,
// and its device node no access; with --allow-suid-dev all three work, as in a chroot.
func TestLazypullMountGrantsNoPrivileges(t *testing.T) {
	e := setup(t)
	_, lazy := e.privilegedImage(t)
	for _, tc := range []struct {
		flags []string
		want  string
	}{{nil, privNone}, {[]string{"--allow-suid-dev"}, privWant}} {
		t.Run(strings.Join(append([]string{"flags"}, tc.flags...), " "), func(t *testing.T) {
			m := e.mount(t, lazy, t.TempDir(), tc.flags...)
			// uid 4242 must reach the mount: t.TempDir's directories are 0700.
			for d := filepath.Dir(m.dir); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
				if err := os.Chmod(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			script := strings.ReplaceAll(privScript, "P=/usr/local/bin S=/usr/local/share",
				fmt.Sprintf("P=%s/usr/local/bin S=%s/usr/local/share", m.dir, m.dir))
			out, err := exec.Command("setpriv", "--reuid", "4242", "--regid", "4242", "--clear-groups", "sh", "-c", script).CombinedOutput()
			if err != nil {
				t.Fatalf("setpriv: %v\n%s", err, out)
			}
			if got := strings.TrimSpace(string(out)); got != tc.want {
				t.Errorf("uid 4242 on the mount (%s) printed\n%s\nwant\n%s", mountOpts(m.dir), got, tc.want)
			}
		})
	}
}

// TestSnapshotterSocketMode: a snapshotter started under umask 0 serves the snapshots API
// (and the warm API) on a socket of mode 0600, not 0777: a local user who could connect
// could mount any image and read the node's layers; its keeper's socket is 0600 too.
func TestSnapshotterSocketMode(t *testing.T) {
	e := setup(t)
	dir, err := os.MkdirTemp("", "lzsock-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock, root, config := filepath.Join(dir, "sn.sock"), filepath.Join(dir, "root"), filepath.Join(dir, "config.toml")
	if err := os.WriteFile(config, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	log := &testutil.LogBuffer{}
	cmd := exec.Command("sh", "-c", `umask 000 && exec "$0" "$@"`, e.bin, "snapshotter", "--config", config,
		"--address", sock, "--root", root, "--store", filepath.Join(dir, "store"), "--plain-http")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("the snapshotter did not stop on SIGTERM:\n%s", log)
		}
		if pid := keeperPID(filepath.Join(root, "keeper.sock")); pid > 0 {
			syscall.Kill(pid, syscall.SIGTERM)
		}
	}()
	// The socket is created last, after the keeper's: once it is there, both are.
	waitStarted(t, "lazypull snapshotter (its socket)", done, log, func() bool { return exists(sock) })
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(status), "Umask:\t0000\n") {
		t.Fatalf("the snapshotter does not run under umask 0: this tests nothing\n%s", status)
	}
	for _, p := range []string{sock, filepath.Join(root, "keeper.sock")} {
		st, err := os.Lstat(p)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v under umask 0, want a socket of mode 0600", p, st.Mode())
		}
	}
}

// mountOpts returns the per-mount options of the topmost mount at dir.
func mountOpts(dir string) string {
	ms := mountsAt(dir)
	if len(ms) == 0 {
		return ""
	}
	return ms[len(ms)-1].opts
}

// hasAll reports whether the comma-separated opts has every one of want.
func hasAll(opts string, want ...string) bool {
	have := strings.Split(opts, ",")
	for _, w := range want {
		found := false
		for _, h := range have {
			found = found || h == w
		}
		if !found {
			return false
		}
	}
	return true
}
