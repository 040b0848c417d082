package fusefs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"lazypull/format"
	"lazypull/internal/testutil"
)

var errBackend = errors.New("backend: chunk sha256:abcd: connection reset by peer")

func TestContentErrorIsEIO(t *testing.T) {
	requireFUSE(t)
	l := convertLayer(t, testLayers(t)[0])
	var failed atomic.Int64
	c := &layerContent{l: l, fail: func(e *format.Entry) error {
		if e.Name == "usr/lib/big.so" {
			failed.Add(1)
			return fmt.Errorf("fetch %s: %w", e.Name, errBackend)
		}
		return nil
	}}
	var logs testutil.LogBuffer
	_, mnt, _ := mountIndex(t, l.Index, c, WithLogger(logs.Logger()))
	_, err := os.ReadFile(filepath.Join(mnt, "usr/lib/big.so"))
	if errno(err) != syscall.EIO {
		t.Fatalf("read of a file whose content fails: %v, want EIO", err)
	}
	// other files still read, and the failing one still stats
	if b, err := os.ReadFile(filepath.Join(mnt, "etc/hostname")); err != nil || string(b) != "lazypull\n" {
		t.Errorf("etc/hostname: %q %v", b, err)
	}
	if st, err := os.Stat(filepath.Join(mnt, "usr/lib/big.so")); err != nil || st.Size() != 3<<20+12345 {
		t.Errorf("stat: %v %v", st, err)
	}
	var errLines []string
	for line := range strings.SplitSeq(strings.TrimSpace(logs.String()), "\n") {
		if strings.Contains(line, "level=ERROR") {
			errLines = append(errLines, line)
		}
	}
	if failed.Load() == 0 || len(errLines) != 1 {
		t.Errorf("%d failed reads for one read(2); want one error line, got:\n%s", failed.Load(), logs.String())
	}
	for _, line := range errLines {
		if !strings.Contains(line, "path=/usr/lib/big.so") ||
			!strings.Contains(line, "connection reset by peer") || !strings.Contains(line, "fetch usr/lib/big.so") {
			t.Errorf("log line should name the path and the whole cause: %s", line)
		}
	}
}

// TestShortContentIsEIO: a Content that has fewer bytes than the index says is an error.
func TestShortContentIsEIO(t *testing.T) {
	ix := &format.Index{Entries: []format.Entry{{Name: "f", Type: '0', Mode: 0o644, Size: 100}}}
	var logs testutil.LogBuffer
	root, err := NewLayer(ix, shortContent{}, WithLogger(logs.Logger()))
	if err != nil {
		t.Fatal(err)
	}
	in := &inode{v: root.v, n: &node{kind: kindReg, e: &ix.Entries[0]}}
	if _, e := in.read(&fuse.Context{Cancel: make(chan struct{})}, nil, make([]byte, 100), 0); e != fuse.EIO {
		t.Errorf("short content: errno %v, want EIO", e)
	}
	if !strings.Contains(logs.String(), "content ends at 10, size is 100") {
		t.Errorf("log: %s", logs.String())
	}
	// a read past the end is empty, not an error
	res, e := in.read(&fuse.Context{Cancel: make(chan struct{})}, nil, make([]byte, 100), 100)
	if e != fuse.OK || res.Size() != 0 {
		t.Errorf("read at the end: %v %v", res, e)
	}
}

type shortContent struct{}

func (shortContent) ReadAt(ctx context.Context, e *format.Entry, p []byte, off int64) (int, error) {
	n := copy(p, make([]byte, max(10-off, 0)))
	return n, io.EOF
}

// blockingContent blocks every read until its ctx is canceled or release is closed.
type blockingContent struct {
	entered  chan struct{}
	canceled chan struct{}
	release  chan struct{}
}

func (c *blockingContent) ReadAt(ctx context.Context, e *format.Entry, p []byte, off int64) (int, error) {
	select {
	case c.entered <- struct{}{}:
	default:
	}
	select {
	case <-ctx.Done():
		select {
		case c.canceled <- struct{}{}:
		default:
		}
		return 0, fmt.Errorf("fetch %s: %w", e.Name, ctx.Err())
	case <-c.release:
		return 0, errBackend
	}
}

func TestCanceledReadIsEINTR(t *testing.T) {
	// unit level: a read whose request is interrupted answers EINTR, and logs nothing
	var logs testutil.LogBuffer
	ix := &format.Index{Entries: []format.Entry{{Name: "f", Type: '0', Mode: 0o644, Size: 100}}}
	bc := &blockingContent{entered: make(chan struct{}, 1), canceled: make(chan struct{}, 1), release: make(chan struct{})}
	root, err := NewLayer(ix, bc, WithLogger(logs.Logger()))
	if err != nil {
		t.Fatal(err)
	}
	cancel := make(chan struct{})
	in := &inode{v: root.v, n: &node{kind: kindReg, e: &ix.Entries[0]}}
	go func() { <-bc.entered; close(cancel) }()
	if _, e := in.read(&fuse.Context{Cancel: cancel}, nil, make([]byte, 10), 0); e != fuse.EINTR {
		t.Errorf("interrupted read: errno %v, want EINTR", e)
	}
	if logs.String() != "" {
		t.Errorf("an interrupted read logged: %s", logs.String())
	}
}

// TestInterruptedReadThroughMount: a reader killed while its read waits for content makes
// the kernel interrupt the request, and the Content sees its ctx canceled.
func TestInterruptedReadThroughMount(t *testing.T) {
	requireFUSE(t)
	ix := &format.Index{Entries: []format.Entry{{Name: "slow", Type: '0', Mode: 0o644, Size: 1 << 20}}}
	bc := &blockingContent{entered: make(chan struct{}, 1), canceled: make(chan struct{}, 1), release: make(chan struct{})}
	_, mnt, _ := mountIndex(t, ix, bc)
	t.Cleanup(func() { close(bc.release) })
	// O_DIRECT reads are synchronous requests, which the kernel interrupts; buffered reads
	// go through readahead, which it does not.
	cmd := exec.Command("dd", "if="+filepath.Join(mnt, "slow"), "of=/dev/null", "bs=4096", "count=1", "iflag=direct")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-bc.entered:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the read never reached the content")
	}
	cmd.Process.Signal(os.Interrupt)
	select {
	case <-bc.canceled:
	case <-time.After(10 * time.Second):
		t.Error("the content's ctx was not canceled when the reader was interrupted")
	}
	cmd.Wait()
}

func TestMountChecksDir(t *testing.T) {
	requireFUSE(t)
	ix := &format.Index{Entries: []format.Entry{{Name: "f", Type: '0', Mode: 0o644, Size: 0}}}
	newRoot := func() *Root {
		r, err := NewLayer(ix, shortContent{})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	base := t.TempDir()
	full := filepath.Join(base, "full")
	os.Mkdir(full, 0o755)
	os.WriteFile(filepath.Join(full, "something"), nil, 0o644)
	afile := filepath.Join(base, "afile")
	os.WriteFile(afile, nil, 0o644)
	for _, c := range []struct{ dir, want string }{
		{full, "mount point is not empty"},
		{filepath.Join(base, "missing"), "mount point does not exist"},
		{afile, "mount point is not a directory"},
	} {
		_, err := Mount(c.dir, newRoot(), MountOptions{})
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.dir) {
			t.Errorf("Mount(%s): %v, want %q", c.dir, err, c.want)
		}
	}
	// a live mount is not mounted over
	mnt, _ := mountView(t, newRoot())
	if _, err := Mount(mnt, newRoot(), MountOptions{}); err == nil || !strings.Contains(err.Error(), "already mounted") {
		t.Errorf("Mount over a live mount: %v", err)
	}
	if err := Unmount(base); err == nil || !strings.Contains(err.Error(), "not a mount point") {
		t.Errorf("Unmount of a plain directory: %v", err)
	}
}

func TestMountWithoutDevFUSE(t *testing.T) {
	old := devFUSE
	devFUSE = filepath.Join(t.TempDir(), "no-fuse")
	defer func() { devFUSE = old }()
	r, err := NewLayer(&format.Index{}, shortContent{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = Mount(t.TempDir(), r, MountOptions{})
	if !errors.Is(err, ErrNoFUSE) || !strings.Contains(err.Error(), "/dev/fuse is missing") {
		t.Errorf("Mount without /dev/fuse: %v", err)
	}
}

// helperMount runs in a child process: it mounts a layer at dir, says so, and waits to be
// killed, leaving a dead mount behind.
func helperMount(dir string) {
	ix := &format.Index{Entries: []format.Entry{{Name: "crashed", Type: '0', Mode: 0o644}}}
	r, err := NewLayer(ix, shortContent{})
	if err == nil {
		_, err = Mount(dir, r, MountOptions{})
	}
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("mounted")
	signal.Ignore(os.Interrupt)
	select {}
}

func TestStaleMountIsCleared(t *testing.T) {
	requireFUSE(t)
	dir := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(dir, 0o755)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "LAZYPULL_FUSEFS_HELPER_MOUNT="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "mounted\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper: %q", line)
	}
	if _, err := os.Stat(filepath.Join(dir, "crashed")); err != nil {
		t.Fatalf("helper mount: %v", err)
	}
	cmd.Process.Kill() // a crash: no unmount
	cmd.Wait()
	if err := syscall.Statfs(dir, new(syscall.Statfs_t)); !isDeadMount(err) {
		Unmount(dir)
		t.Fatalf("after the crash, stat gives %v; want ENOTCONN", err)
	}
	var logs testutil.LogBuffer
	ix := &format.Index{Entries: []format.Entry{{Name: "fresh", Type: '0', Mode: 0o644}}}
	r, err := NewLayer(ix, shortContent{})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := Mount(dir, r, MountOptions{Logger: logs.Logger()})
	if err != nil {
		t.Fatalf("Mount over a stale mount: %v", err)
	}
	defer srv.Unmount()
	if _, err := os.Stat(filepath.Join(dir, "fresh")); err != nil {
		t.Errorf("new mount: %v", err)
	}
	if !strings.Contains(logs.String(), "stale FUSE mount") {
		t.Errorf("no notice of the stale mount: %s", logs.String())
	}
}

// TestPassthroughRefused: when the kernel will not take a backing file (here: one on
// overlayfs, too deep a stack), local files are still read, through FUSE.
func TestPassthroughRefused(t *testing.T) {
	requireFUSE(t)
	base := t.TempDir()
	lower, ovl := filepath.Join(base, "lower"), filepath.Join(base, "ovl")
	os.Mkdir(lower, 0o755)
	os.Mkdir(ovl, 0o755)
	if err := syscall.Mount("overlay", ovl, "overlay", 0, "lowerdir="+lower+":"+t.TempDir()); err != nil {
		skipOrFail(t, "cannot mount overlayfs: "+err.Error())
	}
	t.Cleanup(func() { syscall.Unmount(ovl, syscall.MNT_DETACH) })
	tb := mkTar(t, []tentry{file("a", 0o644, testutil.RandBytes(3, 1<<20)), file("b", 0o644, []byte("bee"))})
	l := convertLayer(t, tb)
	// the local copies are on overlayfs, read-only; write them to the lower directory
	c := newLocalContent(t, l, lower)
	for e, p := range c.files {
		c.files[e] = filepath.Join(ovl, filepath.Base(p))
	}
	var logs testutil.LogBuffer
	root, mnt, srv := mountIndex(t, l.Index, c, WithLogger(logs.Logger()))
	for _, name := range []string{"a", "b"} {
		got, err := os.ReadFile(filepath.Join(mnt, name))
		if err != nil {
			t.Fatal(err)
		}
		e, _ := l.Index.Lookup(name)
		want, _ := l.ReadFile(e)
		if string(got) != string(want) {
			t.Errorf("%s: content differs", name)
		}
	}
	if c.reads.Load() != 0 {
		t.Errorf("the content was read; the local copies should have been")
	}
	if srv.Passthrough() && (!root.v.passthroughOff.Load() || strings.Count(logs.String(), "does not take FUSE passthrough") != 1) {
		t.Errorf("want one notice that passthrough was refused: %s", logs.String())
	}
}

func TestNewErrors(t *testing.T) {
	if _, err := NewLayer(nil, shortContent{}); err == nil {
		t.Error("NewLayer(nil index)")
	}
	if _, err := NewLayer(&format.Index{}, nil); err == nil {
		t.Error("NewLayer(nil content)")
	}
	if _, err := NewMerged(nil); err == nil {
		t.Error("NewMerged(no layers)")
	}
	if _, err := NewMerged([]Layer{{Index: &format.Index{}}}); err == nil {
		t.Error("NewMerged(layer without content)")
	}
}

var _ fuse.RawFileSystem = (*Root)(nil)

// TestUnmountLive: Unmount (lazypull umount DIR) detaches a live mount, and the server
// that served it stops.
func TestUnmountLive(t *testing.T) {
	requireFUSE(t)
	ix := &format.Index{Entries: []format.Entry{{Name: "f", Type: '0', Mode: 0o644}}}
	r, err := NewLayer(ix, shortContent{})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(dir, 0o755)
	srv, err := Mount(dir, r, MountOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if srv.Dir() != dir {
		t.Errorf("Dir() = %s", srv.Dir())
	}
	if err := Unmount(dir); err != nil {
		t.Fatalf("Unmount: %v", err)
	}
	done := make(chan struct{})
	go func() { srv.Wait(); close(done) }()
	testutil.Recv(t, done, 10*time.Second, "the server to stop serving after Unmount")
	if mounted, err := isMountPoint(dir); err != nil || mounted {
		t.Errorf("still mounted: %v %v", mounted, err)
	}
	if err := Unmount(dir); err == nil || !strings.Contains(err.Error(), "not a mount point") {
		t.Errorf("second Unmount: %v", err)
	}
}

// TestMountinfoEscapes: a mount point whose name mountinfo escapes (space, tab, backslash:
// \040, \011, \134) is found under its own name, with its own options.
func TestMountinfoEscapes(t *testing.T) {
	requireFUSE(t) // root, for the tmpfs
	parent := t.TempDir()
	dir := filepath.Join(parent, "with space\tand\\x")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	if ok, err := isMountPoint(dir); !ok || err != nil {
		t.Errorf("isMountPoint(%q): %v %v", dir, ok, err)
	}
	if under, err := MountsUnder(parent); err != nil || !slices.Equal(under, []string{dir}) {
		t.Errorf("MountsUnder(%q): %q %v", parent, under, err)
	}
	opts, err := mountOptions(dir)
	if err != nil || !slices.Contains(opts, "ro") || !slices.Contains(opts, "nosuid") || !slices.Contains(opts, "nodev") {
		t.Errorf("mountOptions(%q): %q %v", dir, opts, err)
	}
	if _, err := mountOptions(parent); err == nil {
		t.Errorf("mountOptions of %s, not a mount point: no error", parent)
	}
}

// switchContent has a local copy of its files or not, as the test says: a file becomes
// local while it is open (the fetcher finished), or stops being local (the store evicted it).
type switchContent struct {
	*localContent
	local atomic.Bool
}

func (c *switchContent) LocalFile(e *format.Entry) (*os.File, bool) {
	if !c.local.Load() {
		return nil, false
	}
	return c.localContent.LocalFile(e)
}

// TestOpenWhileModeChanges: the kernel refuses (EIO) a passthrough open of an inode open for
// cached reads, and a cached open of an inode open for passthrough. Opens follow the mode
// of the opens already there.
func TestOpenWhileModeChanges(t *testing.T) {
	requireFUSE(t)
	body := testutil.RandBytes(9, 1<<20)
	l := convertLayer(t, mkTar(t, []tentry{file("f", 0o644, body)}))
	c := &switchContent{localContent: newLocalContent(t, l, t.TempDir())}
	_, mnt, srv := mountIndex(t, l.Index, c)
	p := filepath.Join(mnt, "f")
	check := func(what string, f *os.File) {
		t.Helper()
		b := make([]byte, len(body))
		if _, err := f.ReadAt(b, 0); err != nil || !bytes.Equal(b, body) {
			t.Errorf("%s: read: %v", what, err)
		}
	}
	open := func(what string) *os.File {
		t.Helper()
		f, err := os.Open(p)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		t.Cleanup(func() { f.Close() }) // before the unmount: a file open at exit hangs it
		return f
	}

	// An open, then another once the copy is there (local) or gone, while the first is.
	openTwice := func(first, firstCheck string, local bool, second, secondCheck string) {
		t.Helper()
		f1 := open(first)
		check(firstCheck, f1)
		c.local.Store(local)
		f2 := open(second)
		check(secondCheck, f2)
		f1.Close()
		f2.Close()
	}
	openTwice("cached open, no local copy", "cached open", true,
		"open once the copy is local, while a cached open is there", "second open")

	unix.Fadvise(int(open("drop cache").Fd()), 0, 0, unix.FADV_DONTNEED)
	reads := c.reads.Load()
	openTwice("passthrough open", "passthrough open", false,
		"open once the copy is gone, while a passthrough open is there", "open after eviction")
	if srv.Passthrough() && c.reads.Load() != reads {
		t.Errorf("passthrough opens read the content %d times", c.reads.Load()-reads)
	}
}

// TestMountProbeInChild: with MountOptions.Probe set, a new mount is probed by that command
// (the mount's directory appended), in a process of its own, and Server.Probed is closed
// when it ends; Mount returns without waiting for it (the "held" probe waits on a FIFO
// until the mount has served a read); a probe that cannot start is logged and done in this
// process, and the mount still works.
func TestMountProbeInChild(t *testing.T) {
	requireFUSE(t)
	l := convertLayer(t, testLayers(t)[0])
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		probe func(out string) []string
		ran   bool
		held  bool
	}{
		{"child", func(out string) []string { return []string{"/bin/sh", "-c", `echo "$0" > ` + out} }, true, false},
		{"held", func(out string) []string {
			return []string{"/bin/sh", "-c", `read x < ` + fifo + `; echo "$0" > ` + out}
		}, true, true},
		{"missing", func(string) []string { return []string{"/nonexistent/lazypull", "mount-probe"} }, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			root, err := NewLayer(l.Index, &layerContent{l: l})
			if err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(t.TempDir(), "mnt")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(t.TempDir(), "probed")
			log, logs := testutil.NewLogAt(t, slog.LevelWarn)
			srv, err := Mount(dir, root, MountOptions{Probe: c.probe(out), Logger: log})
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Unmount()
			if c.held {
				// Served before the probe ends: a read by another process (a container's).
				if out, err := exec.Command("/bin/ls", dir).CombinedOutput(); err != nil || len(out) == 0 {
					t.Errorf("ls of the mount while its probe waits: %q, %v", out, err)
				}
				select {
				case <-srv.Probed():
					t.Fatal("Probed closed before the probe ended")
				default:
				}
				if err := os.WriteFile(fifo, []byte("go\n"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case <-srv.Probed():
			case <-time.After(time.Minute):
				t.Fatal("the probe has not ended after a minute")
			}
			b, _ := os.ReadFile(out)
			if got := strings.TrimSpace(string(b)) == dir; got != c.ran {
				t.Errorf("probe ran with the mount's directory: %v, want %v (it wrote %q)", got, c.ran, b)
			}
			if warned := strings.Contains(logs.String(), "cannot start the mount's poll probe"); warned == c.ran {
				t.Errorf("warning of a probe that cannot start: %v, want %v:\n%s", warned, !c.ran, logs)
			}
			if ents, err := os.ReadDir(dir); err != nil || len(ents) == 0 {
				t.Errorf("the mount after its probe: %d entries, %v", len(ents), err)
			}
		})
	}
}
