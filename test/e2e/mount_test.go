package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"

	"lazypull/format"
	"lazypull/internal/daemon"
	"lazypull/internal/store"
	"lazypull/internal/testutil"
)

// lazyImage converts the python test image (or its flattened twin) into the registry once
// per test binary run and returns its reference.
var lazyOnce sync.Map

func (e *env) lazyImage(t *testing.T, name string) string {
	t.Helper()
	ref := fmt.Sprintf("%s/e2e/%s-%d:lazy", e.registry, name, os.Getpid())
	if _, loaded := lazyOnce.LoadOrStore(ref, true); !loaded {
		e.convert(t, "oci:"+filepath.Join(e.images, name)+":"+name, ref)
	}
	return ref
}

// proc is a process of ours (lazypull mount, lazypull snapshotter) that a test runs in the
// background: its output and its exit.
type proc struct {
	cmd  *exec.Cmd
	log  *testutil.LogBuffer
	done chan error // gets cmd's exit; made by start
}

// start starts cmd with its output to p.log and waits until ready holds (waitStarted).
func (p *proc) start(t *testing.T, what string, cmd *exec.Cmd, ready func() bool) {
	t.Helper()
	p.cmd, p.done = cmd, make(chan error, 1)
	if p.log == nil {
		p.log = &testutil.LogBuffer{}
	}
	cmd.Stdout, cmd.Stderr = p.log, p.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := p.done
	go func() { done <- cmd.Wait() }()
	waitStarted(t, what, done, p.log, ready)
}

// terminate sends the process SIGTERM and returns its exit, or kills it if it has not
// exited within d (then stopped is false).
func (p *proc) terminate(d time.Duration) (stopped bool, exit error) {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		return true, err
	case <-time.After(d):
		p.cmd.Process.Kill()
		return false, nil
	}
}

// mounted is a `lazypull mount` running in the background.
type mounted struct {
	proc
	dir, store string
}

// mount starts `lazypull mount` of ref at a new directory with the given store and waits
// until the tree is there. The mount is stopped with SIGTERM when the test ends.
func (e *env) mount(t *testing.T, ref, storeDir string, flags ...string) *mounted {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return e.mountAt(t, "lazypull mount at "+dir, ref, storeDir, dir, func() bool { return isMountpoint(dir) }, flags...)
}

// mountAt starts `lazypull mount` of ref at dir and waits until ready holds; the test's
// cleanup stops it.
func (e *env) mountAt(t *testing.T, what, ref, storeDir, dir string, ready func() bool, flags ...string) *mounted {
	t.Helper()
	m := &mounted{dir: dir, store: storeDir}
	// Before the start: a mount that fails to come up is stopped too.
	t.Cleanup(func() { m.stop(t) })
	args := append([]string{"mount", "--plain-http", "--store", storeDir, "--speculate-min-rtt", noSpeculationRTT}, flags...)
	m.start(t, what, e.command(e.bin, append(args, ref, dir)...), ready)
	return m
}

// noSpeculationRTT is the speculate_min_rtt the tests' mounts and snapshotters run with
// unless a test sets its own (a flag after it, a config line): a read fetches what it asks
// for, and read-ahead. The loopback registry's round trip is below the default of 1 ms,
// but crosses it now and then under CI's load, and a test that bounds or compares the
// bytes fetched would then meet the guesses of one mount and not another's. Speculation is
// the daemon tests' to cover, and TestSnapshotterCommandWalk's.
const noSpeculationRTT = "1h"

// waitStarted waits until ready holds for a process the test started (another process
// signals nothing a test can wait on: ready is polled), and fails with the process's output
// if it exits first or is not ready within 30 s. done gets the process's exit; what it
// takes from done it puts back for whoever waits on it next.
func waitStarted(t *testing.T, what string, done chan error, out fmt.Stringer, ready func() bool) {
	t.Helper()
	testutil.Await(t, 30*time.Second, what+" to be ready", func() (bool, string) {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("%s exited (%v) before it was ready:\n%s", what, err, out)
		default:
		}
		return ready(), out.String()
	})
}

// exists tells whether path exists.
func exists(path string) bool { _, err := os.Stat(path); return err == nil }

// stop ends the mount with SIGTERM and checks that it unmounted cleanly.
func (m *mounted) stop(t *testing.T) {
	if m.cmd == nil || m.cmd.ProcessState != nil || m.cmd.Process == nil {
		return
	}
	select {
	case <-m.done:
		return
	default:
	}
	if stopped, err := m.terminate(20 * time.Second); !stopped {
		t.Errorf("lazypull mount did not stop on SIGTERM:\n%s", m.log)
	} else if err != nil {
		t.Errorf("lazypull mount ended with %v:\n%s", err, m.log)
	}
	if isMountpoint(m.dir) {
		t.Errorf("%s still mounted after SIGTERM", m.dir)
		exec.Command("umount", "-l", m.dir).Run()
	}
}

// kill ends the mount with SIGKILL, leaving a stale mount behind. A process that SIGKILL
// has not ended within a minute is stuck in the kernel (once, under a load of 20, it was
// still there 14 minutes on): the test logs its threads' kernel stacks loudly, aborts the
// mount's FUSE connection (what an operator does, by fusectl) and waits again, so that a
// hang is a diagnosis, not a CI timeout.
func (m *mounted) kill(t *testing.T, ctl string) {
	t.Helper()
	m.cmd.Process.Kill()
	select {
	case <-m.done:
		return
	case <-time.After(time.Minute):
	}
	pid := m.cmd.Process.Pid
	var b strings.Builder
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	for _, task := range tasks {
		st, _ := os.ReadFile(filepath.Join(task, "stat"))
		stack, _ := os.ReadFile(filepath.Join(task, "stack"))
		fmt.Fprintf(&b, "%s\n%s\n", strings.TrimSpace(string(st)), stack)
	}
	t.Logf("WARNING: lazypull mount (pid %d) still alive a minute after SIGKILL; its threads:\n%s", pid, b.String())
	for _, mt := range mountTable() {
		if mt.point == m.dir {
			_, minor, _ := strings.Cut(mt.dev, ":")
			err := os.WriteFile(filepath.Join(ctl, minor, "abort"), []byte("1"), 0o200)
			t.Logf("WARNING: aborted the FUSE connection of %s: %v", m.dir, err)
		}
	}
	select {
	case <-m.done:
	case <-time.After(time.Minute):
		t.Fatalf("lazypull mount (pid %d) still alive after SIGKILL and the abort of its FUSE connection", pid)
	}
}

// mount is one line of /proc/self/mountinfo.
type mount struct{ point, fstype, source, dev, opts string }

// parseMounts reads the lines of a mountinfo file, in its order (a mount over another
// after it).
func parseMounts(text string) []mount {
	var out []mount
	for _, line := range strings.Split(text, "\n") {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER
		before, after, ok := strings.Cut(line, " - ")
		b, a := strings.Fields(before), strings.Fields(after)
		if ok && len(b) >= 6 && len(a) >= 2 {
			out = append(out, mount{point: b[4], fstype: a[0], source: a[1], dev: b[2], opts: b[5]})
		}
	}
	return out
}

// mountTable returns the test process's mounts.
func mountTable() []mount {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	return parseMounts(string(b))
}

// mountsAt returns the mounts at dir, the topmost last.
func mountsAt(dir string) []mount {
	var out []mount
	for _, m := range mountTable() {
		if m.point == dir {
			out = append(out, m)
		}
	}
	return out
}

func isMountpoint(dir string) bool { return len(mountsAt(dir)) > 0 }

// fuseConnections mounts fusectl, the FUSE connections' control files, at a directory of
// the test's until it ends, and returns that directory (for fuseWaiting).
func fuseConnections(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("fusectl", dir, "fusectl", 0, ""); err != nil {
		t.Fatalf("mount fusectl: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// fuseWaiting returns how many requests of the FUSE mounts at dirs wait for an answer from
// their daemon (in flight, or queued while it is down), from fusectl at ctl.
func fuseWaiting(ctl string, dirs ...string) int {
	n := 0
	for _, m := range mountTable() {
		if !slices.Contains(dirs, m.point) {
			continue
		}
		// A FUSE mount's device is anonymous (major 0): fusectl names it by its minor.
		_, minor, _ := strings.Cut(m.dev, ":")
		w, err := os.ReadFile(filepath.Join(ctl, minor, "waiting"))
		if err == nil {
			v, _ := strconv.Atoi(strings.TrimSpace(string(w)))
			n += v
		}
	}
	return n
}

// stats waits until the mount's owner has written figures newer than after, and returns them.
func stats(t *testing.T, storeDir string, after time.Time) daemon.Stats {
	t.Helper()
	var s daemon.Stats
	testutil.Await(t, 15*time.Second, fmt.Sprintf("stats newer than %v in %s", after, storeDir), func() (bool, string) {
		var err error
		s, err = daemon.ReadStats(storeDir)
		if err != nil {
			return false, err.Error()
		}
		return s.Written.After(after), fmt.Sprintf("the last written %v", s.Written)
	})
	return s
}

// reference mounts the original image's rootfs with containerd (overlayfs over the
// unpacked layers): what the lazy mount must equal.
func (e *env) reference(t *testing.T) string {
	t.Helper()
	orig := fmt.Sprintf("%s/e2e/ref-%d:orig", e.registry, os.Getpid())
	e.push(t, filepath.Join(e.images, "python"), "python", orig)
	e.ctr(t, "image", "pull", "--plain-http", orig)
	dir := t.TempDir()
	e.ctr(t, "image", "mount", orig, dir)
	t.Cleanup(func() { e.ctr(t, "image", "unmount", "--rm", dir) })
	return dir
}

type node struct {
	mode      fs.FileMode
	uid, gid  uint32
	size      int64
	mtime     unix.Timespec
	rdev      uint64
	link, sum string
	xattrs    string
	ino       uint64
}

// walk describes every path under root, reading every file's content.
func walk(t *testing.T, root string) map[string]node {
	t.Helper()
	out := map[string]node{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		n := node{mode: fs.FileMode(st.Mode), uid: st.Uid, gid: st.Gid, mtime: st.Mtim, rdev: st.Rdev, ino: st.Ino}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			n.size = st.Size
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			h := sha256.New()
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return fmt.Errorf("read %s: %w", p, err)
			}
			n.sum = fmt.Sprintf("%x", h.Sum(nil))
		case unix.S_IFLNK:
			n.link, err = os.Readlink(p)
			if err != nil {
				return err
			}
		}
		n.xattrs = xattrs(p)
		out[rel] = n
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return out
}

func xattrs(p string) string {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil || n == 0 {
		return ""
	}
	var parts []string
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		if strings.HasPrefix(name, "trusted.overlay.") {
			continue
		}
		v := make([]byte, 64<<10)
		m, _ := unix.Lgetxattr(p, name, v)
		parts = append(parts, name+"="+string(v[:max(m, 0)]))
	}
	return strings.Join(parts, ",")
}

// TestMountEqualsUnpack: the lazy mount of the converted image shows exactly the tree
// containerd unpacks from the original: every path's type, mode, owner, mtime, link
// target, xattrs and content, and hard links as one inode.
func TestMountEqualsUnpack(t *testing.T) {
	e := setup(t)
	ref := e.lazyImage(t, "python")
	want := walk(t, e.reference(t))
	m := e.mount(t, ref, t.TempDir())
	paths, links := compareTrees(t, "lazy mount", want, walk(t, m.dir))
	t.Logf("%d paths compared, %d hard links", paths, links)
}

// compareTrees fails t for every difference between two walks, naming the tree got is
// (as "lazy mount"): a path missing from either, or differing in type, mode, owner, link
// target, device, xattrs, content, size or mtime (directories' sizes and the root's mtime
// are the filesystem's own, so not compared), and hard links of want that are not one
// inode in got. It returns the paths and hard links compared.
func compareTrees(t *testing.T, what string, want, got map[string]node) (paths, links int) {
	t.Helper()
	bad := 0
	report := func(format string, args ...any) {
		if bad++; bad <= 20 {
			t.Errorf(format, args...)
		}
	}
	for p, w := range want {
		g, ok := got[p]
		if !ok {
			report("%s: missing from the %s", p, what)
			continue
		}
		isDir := w.mode&unix.S_IFMT == unix.S_IFDIR
		if p == "." {
			w.mtime = g.mtime // a root is a snapshot directory, made at unpack or prepare time
		}
		if g.mode != w.mode || g.uid != w.uid || g.gid != w.gid || g.link != w.link || g.sum != w.sum || g.rdev != w.rdev || g.xattrs != w.xattrs ||
			(!isDir && g.size != w.size) || (!isDir && g.mtime != w.mtime) {
			report("%s differs:\n %s %+v\n want %+v", p, what, g, w)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			report("%s: in the %s only", p, what)
		}
	}
	// Hard links: paths sharing an inode in want share one in got.
	groups := map[uint64][]string{}
	for p, w := range want {
		if w.mode.IsRegular() {
			groups[w.ino] = append(groups[w.ino], p)
		}
	}
	for _, ps := range groups {
		for _, p := range ps[1:] {
			links++
			if got[p].ino != got[ps[0]].ino {
				report("hard links %s and %s: inodes %d and %d in the %s", ps[0], p, got[ps[0]].ino, got[p].ino, what)
			}
		}
	}
	if bad > 20 {
		t.Errorf("... and %d more differences", bad-20)
	}
	return len(want), links
}

// TestMountRunsPythonFetchingLittle runs python3 in a chroot on the lazy mount and checks
// that it fetched a small fraction of the image.
func TestMountRunsPythonFetchingLittle(t *testing.T) {
	e := setup(t)
	ref := e.lazyImage(t, "python")
	storeDir := t.TempDir()
	m := e.mount(t, ref, storeDir)
	out := must(t, "chroot", m.dir, "python3", "-c", "print(1)")
	if strings.TrimSpace(out) != "1" {
		t.Fatalf("python3 printed %q", out)
	}
	done := time.Now()
	m2 := remoteManifest(t, ref)
	wantFetchedLittle(t, "python3 -c 'print(1)'", storeDir, done, m2)
}

// wantFetchedLittle checks what the owner of storeDir fetched, by its stats written after
// after: some of image m, and at most a tenth of its layers' bytes; what names the workload.
func wantFetchedLittle(t *testing.T, what, storeDir string, after time.Time, m *v1.Manifest) {
	t.Helper()
	wantFetchedAtMost(t, what, storeDir, after, m, 10)
}

// wantFetchedAtMost is wantFetchedLittle with at most 1/div of the layers' bytes.
func wantFetchedAtMost(t *testing.T, what, storeDir string, after time.Time, m *v1.Manifest, div int64) {
	t.Helper()
	st := stats(t, storeDir, after)
	var imageBytes int64
	for _, l := range m.Layers {
		imageBytes += l.Size
	}
	t.Logf("%s fetched %d bytes in %d requests (%d chunks) of a %d-byte image", what, st.Fetch.Bytes, st.Fetch.Requests, st.Store.ChunksFetched, imageBytes)
	if st.Fetch.Bytes == 0 || st.Fetch.Bytes > imageBytes/div {
		t.Errorf("%s fetched %d bytes of a %d-byte image; want a small fraction", what, st.Fetch.Bytes, imageBytes)
	}
}

// TestSecondImageFetchesNoSharedChunk: the flattened image has other layer blobs but the
// same files; once python ran from the first, running it from the second fetches nothing.
// Both mounts fetch only what is read (--speculate=false): under load the loopback
// registry's measured round trip can cross speculate_min_rtt for one mount and not the
// other, and the second's guesses (the files glibc reads as a container starts, which
// the chroot does not) would then be chunks the first never brought, which says nothing of
// the sharing this test is about.
func TestSecondImageFetchesNoSharedChunk(t *testing.T) {
	e := setup(t)
	first, second := e.lazyImage(t, "python"), e.lazyImage(t, "python-flat")
	storeDir := t.TempDir()
	m := e.mount(t, first, storeDir, "--speculate=false")
	must(t, "chroot", m.dir, "python3", "-c", "import json, email; print(1)")
	m.stop(t)

	m = e.mount(t, second, storeDir, "--speculate=false")
	start := time.Now()
	must(t, "chroot", m.dir, "python3", "-c", "import json, email; print(1)")
	s := stats(t, storeDir, start)
	if s.Store.ChunksFetched != 0 {
		t.Errorf("the second image fetched %d chunks (%d bytes) of files the first already brought", s.Store.ChunksFetched, s.Store.BytesFetched)
	}
	// The index reads are the only requests: one per layer, plus the manifest.
	t.Logf("second image: %d requests, %d bytes", s.Fetch.Requests, s.Fetch.Bytes)
}

// TestMountKill9ThenRemount: a mount killed with -9 during reads leaves a stale mount and
// a store with work in flight; the next mount cleans up both and serves the same tree.
func TestMountKill9ThenRemount(t *testing.T) {
	e := setup(t)
	ref := e.lazyImage(t, "python")
	storeDir := t.TempDir()
	m := e.mount(t, ref, storeDir)
	reader := exec.Command("tar", "-cf", "/dev/null", "-C", m.dir, "usr")
	if err := reader.Start(); err != nil {
		t.Fatal(err)
	}
	ctl := fuseConnections(t)
	testutil.WaitFor(t, 30*time.Second, "a read of the mount in flight", func() bool { return fuseWaiting(ctl, m.dir) > 0 })
	m.kill(t, ctl)
	reader.Wait()

	// The store holds only verified objects.
	st, err := store.Open(storeDir, store.WithVerifyOnOpen())
	if err != nil {
		t.Fatalf("reopen the store after kill -9: %v", err)
	}
	r, err := st.Verify(context.Background())
	st.Close()
	if err != nil || r.Bad != 0 || r.BadChunks != 0 {
		t.Fatalf("store after kill -9: %+v, %v", r, err)
	}
	t.Logf("after kill -9: %d objects (%d bytes) verified", r.Objects, r.Bytes)

	// Remount at the stale mount point: it is cleaned up, and the tree reads right.
	m2 := e.remountAt(t, ref, storeDir, m.dir)
	want := walk(t, e.reference(t))
	got := walk(t, m2.dir)
	for _, p := range []string{"usr/bin/python3.11", "usr/lib/python3.11/os.py", "etc/passwd"} {
		if got[p].sum != want[p].sum || got[p].sum == "" && want[p].sum != "" {
			t.Errorf("%s after remount: %+v, want %+v", p, got[p], want[p])
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d paths after remount, %d in the image", len(got), len(want))
	}
}

// remountAt mounts ref at an existing (possibly stale) mount point.
func (e *env) remountAt(t *testing.T, ref, storeDir, dir string) *mounted {
	t.Helper()
	return e.mountAt(t, "lazypull mount at the stale mount point "+dir, ref, storeDir, dir, func() bool { return exists(filepath.Join(dir, "usr")) })
}

// TestMountTinyStore: with a store bound far below the image, eviction happens and every
// read is still correct.
func TestMountTinyStore(t *testing.T) {
	e := setup(t)
	ref := e.lazyImage(t, "python")
	storeDir := t.TempDir()
	const bound = 4 << 20
	m := e.mount(t, ref, storeDir, "--store-max-bytes", fmt.Sprint(bound))
	ref0 := e.reference(t)
	sub := "usr/lib/python3.11"
	want := walk(t, filepath.Join(ref0, sub))
	start := time.Now()
	got := walk(t, filepath.Join(m.dir, sub))
	for p, w := range want {
		if got[p].sum != w.sum {
			t.Fatalf("%s/%s read wrong under a tiny store", sub, p)
		}
	}
	s := stats(t, storeDir, start)
	if s.Store.Evictions == 0 {
		t.Errorf("no eviction with a %d-byte bound after reading %s", bound, sub)
	}
	if s.Store.Bytes > bound+s.Store.PinnedBytes+(1<<20) {
		t.Errorf("store holds %d bytes, bound %d (+%d pinned)", s.Store.Bytes, bound, s.Store.PinnedBytes)
	}
	b, _ := json.Marshal(s.Store)
	t.Logf("store after reading %s: %s", sub, b)
}

// TestMountBadInput: each refusal is one clear line and a non-zero exit.
func TestMountBadInput(t *testing.T) {
	e := setup(t)
	orig := fmt.Sprintf("%s/e2e/plain-%d:orig", e.registry, os.Getpid())
	e.push(t, filepath.Join(e.images, "python"), "python", orig)
	lazy := e.lazyImage(t, "python")
	full := t.TempDir()
	os.WriteFile(filepath.Join(full, "x"), nil, 0o644)
	badIndex := e.tamperedImage(t, lazy)
	otherStore := t.TempDir()
	os.WriteFile(filepath.Join(otherStore, "store-version"), []byte("lazypull store 99\n"), 0o644)
	for _, c := range []struct {
		name, contains string
		args           []string
	}{
		{"not a lazypull image", "not a lazypull layer", []string{orig, t.TempDir()}},
		{"dir not empty", full, []string{lazy, full}},
		{"index digest does not match its annotation", "index digest", []string{badIndex, t.TempDir()}},
		{"dir missing", "/nonexistent-lazypull", []string{lazy, "/nonexistent-lazypull/x"}},
		{"store of another version", "99", []string{"--store", otherStore, lazy, t.TempDir()}},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"mount", "--plain-http"}, c.args...)
			if !strings.Contains(strings.Join(args, " "), "--store") {
				args = append([]string{"mount", "--plain-http", "--store", t.TempDir()}, c.args...)
			}
			r := run(t, e.bin, args...)
			if r.code == 0 {
				t.Fatalf("exit 0; want a refusal")
			}
			if !strings.Contains(r.stderr, c.contains) {
				t.Errorf("stderr does not name %q:\n%s", c.contains, r.stderr)
			}
		})
	}
}

// rawManifest is a manifest pushed as it is.
type rawManifest struct {
	raw []byte
	mt  types.MediaType
}

func (r rawManifest) RawManifest() ([]byte, error)        { return r.raw, nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return r.mt, nil }

// putManifest pushes m, byte for byte as it marshals, as the OCI manifest ref.
func putManifest(t *testing.T, ref string, m *v1.Manifest) {
	t.Helper()
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Put(parseRef(t, ref), rawManifest{raw, types.OCIManifestSchema1}); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

// tamper changes the layer descriptors of a lazypull manifest; the blobs stay as they are.
type tamper struct {
	name string // in the tag of the tampered image
	fn   func(t *testing.T, e *env, repo string, layers []v1.Descriptor)
}

// wrongIndexDigest: layer i's index annotation names a digest its index does not have.
func wrongIndexDigest(i int) tamper {
	return tamper{fmt.Sprintf("digest%d", i), func(t *testing.T, e *env, repo string, layers []v1.Descriptor) {
		layers[i].Annotations[format.AnnotationIndexDigest] = "sha256:" + strings.Repeat("0", 64)
	}}
}

// indexAtGarbage: layer i's index annotations place the index 4 KiB early, in the middle
// of the layer's compressed tar stream (offset+size still end at the footer).
func indexAtGarbage(i int) tamper {
	return tamper{fmt.Sprintf("garbage%d", i), func(t *testing.T, e *env, repo string, layers []v1.Descriptor) {
		a := layers[i].Annotations
		off, err1 := strconv.ParseInt(a[format.AnnotationIndexOffset], 10, 64)
		size, err2 := strconv.ParseInt(a[format.AnnotationIndexSize], 10, 64)
		if err1 != nil || err2 != nil || off < 8192 {
			t.Fatalf("layer %d: index annotations %v", i, a)
		}
		a[format.AnnotationIndexOffset] = strconv.FormatInt(off-4096, 10)
		a[format.AnnotationIndexSize] = strconv.FormatInt(size+4096, 10)
	}}
}

// indexMissing: layer i is the original image's layer, which has no index, under the
// converted layer's lazypull annotations. (The original is pushed to the same repository,
// so that the registry has the blob there; its diff ID is the converted layer's.)
func indexMissing(i int) tamper {
	return tamper{fmt.Sprintf("noindex%d", i), func(t *testing.T, e *env, repo string, layers []v1.Descriptor) {
		e.push(t, filepath.Join(e.images, "python"), "python", repo+":orig")
		orig := remoteManifest(t, repo+":orig")
		o := orig.Layers[i]
		layers[i].Digest, layers[i].Size, layers[i].MediaType = o.Digest, o.Size, o.MediaType
	}}
}

// tamperedImage pushes ref's manifest changed by tampers (by default a wrong index digest
// in layer 1's annotations) under a tag of its own and returns its reference.
func (e *env) tamperedImage(t *testing.T, ref string, tampers ...tamper) string {
	t.Helper()
	if len(tampers) == 0 {
		tampers = []tamper{wrongIndexDigest(1)}
	}
	m := remoteManifest(t, ref)
	repo := ref[:strings.LastIndex(ref, ":")]
	tag := "tampered"
	for _, tp := range tampers {
		tp.fn(t, e, repo, m.Layers)
		tag += "-" + tp.name
	}
	bad := repo + ":" + tag
	putManifest(t, bad, m)
	return bad
}
