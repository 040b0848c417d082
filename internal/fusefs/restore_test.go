package fusefs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"lazypull/format"
	"lazypull/internal/testutil"
)

// The process that serves a mount dies while a reader waits on it; another process takes
// the mount over with Restore. The dying server is this test binary run as a child
// (TestRestoreHelper), which mounts the view, passes its connection to the parent over a
// socket, and blocks the reads of "slow" in its Content until it is killed.

const restoreHelperEnv = "LAZYPULL_FUSEFS_RESTORE_HELPER"

// restoreHelperSuidDevEnv=1 makes the helper mount with AllowSuidDev, as lazypull mounted
// before its mounts were nosuid and nodev.
const restoreHelperSuidDevEnv = "LAZYPULL_FUSEFS_RESTORE_HELPER_SUIDDEV"

func restoreIndex() *format.Index {
	return &format.Index{Entries: []format.Entry{
		{Name: "d", Type: '5', Mode: 0o755},
		{Name: "d/fast", Type: '0', Mode: 0o644, Size: 3000},
		{Name: "slow", Type: '0', Mode: 0o644, Size: 5000},
	}}
}

// patternContent serves byte i of a file as a function of i and the file's size; with
// block set, reads of "slow" report on entered and then never return.
type patternContent struct {
	block   bool
	entered *os.File
}

func pattern(e *format.Entry, off int64) byte { return byte((off*7 + e.Size) % 251) }

func (c *patternContent) ReadAt(ctx context.Context, e *format.Entry, p []byte, off int64) (int, error) {
	if c.block && e.Name == "slow" {
		c.entered.Write([]byte{1})
		select {}
	}
	for i := range p {
		p[i] = pattern(e, off+int64(i))
	}
	return len(p), nil
}

func TestRestoreHelper(t *testing.T) {
	dir := os.Getenv(restoreHelperEnv)
	if dir == "" {
		t.Skip("run by TestRestoreAfterServerDied")
	}
	root, err := NewLayer(restoreIndex(), &patternContent{block: true, entered: os.NewFile(3, "entered")})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := Mount(dir, root, MountOptions{AllowSuidDev: os.Getenv(restoreHelperSuidDevEnv) == "1"})
	if err != nil {
		t.Fatal(err)
	}
	conn, init, err := srv.Conn()
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Sendmsg(4, init, unix.UnixRights(int(conn.Fd())), nil, 0); err != nil {
		t.Fatal(err)
	}
	select {} // until killed
}

// restoreHelper is TestRestoreHelper running as a child: it has mounted the view at its
// dir and sent the mount's connection, which conn and init are; entered reports each read
// of "slow" it took. Its Cleanup kills the child and detaches the mount.
type restoreHelper struct {
	cmd     *exec.Cmd
	out     *bytes.Buffer
	entered *os.File
	conn    *os.File
	init    []byte
}

// startRestoreHelper runs TestRestoreHelper as a child that mounts at dir, with extraEnv
// in its environment, and takes the connection it sends.
func startRestoreHelper(t *testing.T, dir string, extraEnv ...string) *restoreHelper {
	t.Helper()
	enteredR, enteredW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0)
	if err != nil {
		t.Fatal(err)
	}
	mine, theirs := os.NewFile(uintptr(pair[0]), "mine"), os.NewFile(uintptr(pair[1]), "theirs")
	defer mine.Close()
	h := &restoreHelper{out: &bytes.Buffer{}, entered: enteredR}
	h.cmd = exec.Command(os.Args[0], "-test.run=^TestRestoreHelper$")
	h.cmd.Env = append(append(os.Environ(), restoreHelperEnv+"="+dir), extraEnv...)
	h.cmd.ExtraFiles = []*os.File{enteredW, theirs}
	h.cmd.Stdout, h.cmd.Stderr = h.out, h.out
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	enteredW.Close()
	theirs.Close()
	t.Cleanup(func() {
		h.cmd.Process.Kill()
		h.cmd.Wait()
		Unmount(dir)
	})

	// The connection and INIT request, as a keeper would get them.
	init := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(pair[0], init, oob, 0)
	if err != nil {
		t.Fatalf("receive the connection: %v\n%s", err, h.out.String())
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		t.Fatalf("control message: %v", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("rights: %v", err)
	}
	h.conn, h.init = os.NewFile(uintptr(fds[0]), "/dev/fuse"), init[:n]
	return h
}

func TestRestoreAfterServerDied(t *testing.T) {
	requireFUSE(t)
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	h := startRestoreHelper(t, dir)
	cmd, out, enteredR, conn, init := h.cmd, h.out, h.entered, h.conn, h.init
	// Until Restore owns it, this process holds the connection: closing it on failure ends
	// the mount, else a reader of it would wait for good.
	restored := false
	defer func() {
		if !restored {
			conn.Close()
		}
	}()

	// Metadata the dead server answered stays valid: look d/fast up now.
	if _, err := os.Stat(filepath.Join(dir, "d", "fast")); err != nil {
		t.Fatal(err)
	}
	// Should the test fail with a read still waiting on the mount, this process could not
	// exit (closing that file waits on the mount it serves itself): end the connection.
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			abortConnection(t, unix.Minor(st.Dev))
		}
	})
	// A read that the server takes and never answers.
	got := make(chan []byte, 1)
	go func() {
		b, err := os.ReadFile(filepath.Join(dir, "slow"))
		if err != nil {
			b = []byte("error: " + err.Error())
		}
		got <- b
	}()
	select {
	case <-waitByte(enteredR):
	case <-time.After(30 * time.Second):
		t.Fatalf("the read never reached the helper's content\n%s", out.String())
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	select {
	case b := <-got:
		t.Fatalf("the read ended while nobody served the mount: %q", b)
	case <-time.After(300 * time.Millisecond):
	}

	root, err := NewLayer(restoreIndex(), &patternContent{})
	if err != nil {
		t.Fatal(err)
	}
	restored = true
	srv, err := Restore(dir, root, conn, init, MountOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Unmount()
	resent := testutil.Recv(t, got, 30*time.Second, "the read that waited on the dead server to be answered after Restore")
	e := &restoreIndex().Entries[2]
	if len(resent) != int(e.Size) {
		t.Fatalf("the resent read gave %d bytes (%q...), want %d", len(resent), resent[:min(len(resent), 40)], e.Size)
	}
	for i := range resent {
		if resent[i] != pattern(e, int64(i)) {
			t.Fatalf("byte %d of the resent read is wrong", i)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "d", "fast"))
	if err != nil || len(b) != 3000 || b[10] != pattern(&restoreIndex().Entries[1], 10) {
		t.Fatalf("read after Restore: %d bytes, %v", len(b), err)
	}
	// A restore of a mount that is gone is refused as such.
	if err := srv.Unmount(); err != nil {
		t.Fatal(err)
	}
	c2, _ := os.Open(os.DevNull)
	if _, err := Restore(dir, root, c2, init, MountOptions{}); !errors.Is(err, ErrGone) {
		t.Errorf("Restore on an unmounted directory: %v, want ErrGone", err)
	}
}

// TestRestoreMakesNosuidNodev: a mount made without nosuid and nodev (by a lazypull from
// before they were the default, held by the keeper over an upgrade) gets them when it is
// restored, and then grants nothing to a user of the host.
func TestRestoreMakesNosuidNodev(t *testing.T) {
	requireFUSE(t)
	dir := filepath.Join(reachableDir(t), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	h := startRestoreHelper(t, dir, restoreHelperSuidDevEnv+"=1")
	restored := false
	defer func() {
		if !restored {
			h.conn.Close()
		}
	}()
	before, err := mountOptions(dir)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(before, "nosuid") || slices.Contains(before, "nodev") {
		t.Fatalf("the helper's mount is %s already: this tests nothing", strings.Join(before, ","))
	}
	if err := h.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	h.cmd.Wait()
	root, err := NewLayer(restoreIndex(), &patternContent{})
	if err != nil {
		t.Fatal(err)
	}
	restored = true
	srv, err := Restore(dir, root, h.conn, h.init, MountOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Unmount()
	after, err := mountOptions(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []string{"ro", "nosuid", "nodev"} {
		if !slices.Contains(after, o) {
			t.Errorf("restored mount: options %s, want %s", strings.Join(after, ","), o)
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Flags&unix.ST_NOSUID == 0 || st.Flags&unix.ST_NODEV == 0 || st.Flags&unix.ST_RDONLY == 0 {
		t.Errorf("restored mount: statfs flags %#x, want ro, nosuid and nodev", st.Flags)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "d", "fast")); err != nil || len(b) != 3000 {
		t.Errorf("read after Restore: %d bytes, %v", len(b), err)
	}
}

// abortConnection ends FUSE connection n through the fusectl file system (mounted if need be).
func abortConnection(t *testing.T, n uint32) {
	const ctl = "/sys/fs/fuse/connections"
	if names, _ := os.ReadDir(ctl); len(names) == 0 {
		_ = unix.Mount("none", ctl, "fusectl", 0, "")
	}
	if err := os.WriteFile(filepath.Join(ctl, strconv.Itoa(int(n)), "abort"), []byte("1"), 0); err != nil {
		t.Logf("abort FUSE connection %d: %v", n, err)
	}
}

func waitByte(f *os.File) <-chan struct{} {
	c := make(chan struct{})
	go func() {
		b := make([]byte, 1)
		f.Read(b)
		close(c)
	}()
	return c
}
