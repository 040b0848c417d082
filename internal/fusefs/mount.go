package fusefs

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// ErrNoFUSE is returned by Mount when /dev/fuse does not exist.
var ErrNoFUSE = errors.New("/dev/fuse is missing: load the fuse kernel module (modprobe fuse), or give the container the device (--device /dev/fuse)")

// ErrGone is returned by Restore for a mount that ended meanwhile (unmounted, aborted).
var ErrGone = errors.New("the mount's FUSE connection has ended")

// devFUSE is the FUSE device; a variable for tests.
var devFUSE = "/dev/fuse"

// MountOptions tune Mount. The zero value is what lazypull uses.
type MountOptions struct {
	// FSName is the mount's source, shown by mount and df; "lazypull" when empty. Naming the
	// image or layer here helps whoever reads /proc/mounts.
	FSName string
	// Timeout is how long the kernel caches entries and attributes; DefaultTimeout when 0.
	Timeout time.Duration
	// Logger receives the stale-mount notice and go-fuse's warnings; nil discards them.
	Logger *slog.Logger
	// Debug logs every FUSE request (go-fuse's debug output) to Logger.
	Debug bool
	// ReadAheadKB is the kernel's read-ahead window for the mount, in KiB: DefaultReadAheadKB
	// when 0, the kernel's default (128) when negative. Reads that do not go through
	// passthrough come in requests of at most this size (and at most 1 MiB).
	ReadAheadKB int
	// AllowSuidDev mounts without nosuid and nodev, so that the image's setuid and setgid
	// bits and file capabilities (security.capability) take effect for programs run from
	// the mount, and its device nodes open. It is for a root file system that root chroots
	// into (lazypull mount --allow-suid-dev), and it hands the image's privileges to every
	// local user who can reach the mount: a setuid-root program of the image runs as root
	// for anyone. Overlayfs does not need it: an overlayfs mount over the views takes its
	// own nosuid and nodev, not its lower directories' (which is why the snapshotter's
	// containers run setuid programs as containerd's overlayfs snapshotter's do).
	AllowSuidDev bool
	// Probe is the command (argv, the mount's directory appended) that probes a new mount
	// for poll (PollProbe) in a process of its own; nil probes in this process. The probe
	// opens a file of the mount, a request to the server: made by this process, a SIGKILL
	// that lands while it waits for its answer leaves the killed thread waiting for it
	// uninterruptibly, so the process never ends and its mounts hang until their
	// connections are aborted by hand. A child holds no /dev/fuse descriptor: killed with
	// its parent or not, it ends when the connection does. lazypull's commands set it
	// (`lazypull mount-probe`); tests that read their own mounts in process leave it nil.
	// Mount does not wait for a probe process: Server.Probed says when it is done.
	Probe []string
}

// mountFlags are the mount(2) flags of a view: read-only, and unless AllowSuidDev,
// nosuid and nodev, so that a mount never grants privileges on the host.
func (o MountOptions) mountFlags() uintptr {
	if o.AllowSuidDev {
		return syscall.MS_RDONLY
	}
	return syscall.MS_RDONLY | syscall.MS_NOSUID | syscall.MS_NODEV
}

// DefaultReadAheadKB is the read-ahead of a mount: one request of the largest size (1 MiB).
// It doubles sequential reads through FUSE over the kernel's default of 128 KiB.
const DefaultReadAheadKB = 1024

// Server is a mounted view.
type Server struct {
	*fuse.Server
	root *Root
	dir  string
	fuse *os.File // the mount's /dev/fuse connection, as Mount opened it
	done chan struct{}
	// probed is closed once the kernel knows the mount does not poll (PollProbe).
	probed chan struct{}
}

// Probed is closed once the kernel has learned that the mount does not poll files
// (PollProbe). Mount returns before that when the probe runs in a child process
// (MountOptions.Probe): a Go program of this process that opens a file of the mount waits
// for it first. Readers in other processes (containers) need not.
func (s *Server) Probed() <-chan struct{} { return s.probed }

// Dir returns the absolute mount point.
func (s *Server) Dir() string { return s.dir }

// Passthrough reports whether the kernel offers FUSE passthrough on this mount. Opens of
// files with a local copy then use it, unless registering the backing file fails (not
// root, or a backing file on a stacked file system), in which case reads come through FUSE.
func (s *Server) Passthrough() bool {
	return s.KernelSettings().Flags64()&fuse.CAP_PASSTHROUGH != 0
}

// Conn returns a duplicate of the mount's FUSE connection (/dev/fuse) and the kernel's
// INIT request of it, which is what Restore needs to serve the mount from another process.
// The caller owns the file. Whoever holds such a file keeps the mount alive when this
// process dies: requests then wait, instead of failing with ENOTCONN, until a process
// Restores the mount.
func (s *Server) Conn() (*os.File, []byte, error) {
	fd, err := unix.FcntlInt(s.fuse.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: dup FUSE connection: %w", s.dir, err)
	}
	return os.NewFile(uintptr(fd), "/dev/fuse"), encodeInit(s.KernelSettings()), nil
}

// Unmount detaches the mount (lazily: files open in it stay readable) and waits a while for
// the server to end, which it does when the last user of the mount is gone.
func (s *Server) Unmount() error {
	if err := syscall.Unmount(s.dir, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("umount %s: %w", s.dir, err)
	}
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
	}
	return nil
}

// Freeze leaves every read that has not reached the Content yet unanswered, for good. It is
// for a process about to exit while another holds the mount's connection (Conn): the
// kernel asks those reads again of the process that Restores the mount, instead of them
// failing against content that is being closed.
func (s *Server) Freeze() { s.root.v.frozen.Store(true) }

// Wait waits until the server ends: the mount was unmounted and its last user is gone.
func (s *Server) Wait() { <-s.done }

// Mount mounts root (from NewLayer or NewMerged) read-only at dir and serves it until
// Unmount. dir must be an existing empty directory; a stale FUSE mount left there by a
// crashed process (stat gives ENOTCONN) is detached first.
func Mount(dir string, root *Root, opts MountOptions) (*Server, error) {
	lg := opts.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", dir, err)
	}
	if _, err := os.Stat(devFUSE); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("mount %s: %w", abs, ErrNoFUSE)
		}
		return nil, fmt.Errorf("mount %s: %w", abs, err)
	}
	if err := checkMountPoint(abs, lg); err != nil {
		return nil, err
	}
	fsname := opts.FSName
	if fsname == "" {
		fsname = "lazypull"
	}
	dev, err := os.OpenFile(devFUSE, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", abs, err)
	}
	// Mounted here, not by go-fuse, so that this process owns the connection's file and can
	// hand it to another (Conn, Restore). ro: the kernel refuses writes itself. nosuid,
	// nodev (unless AllowSuidDev): allow_other lets every local user run the image's
	// programs and open its device nodes, and an image is not the host's to grant root or
	// devices with. default_permissions: the kernel checks modes (and, with POSIX ACLs on,
	// ACLs) against the attributes served.
	data := fmt.Sprintf("fd=%d,rootmode=%o,user_id=0,group_id=0,allow_other,default_permissions,max_read=%d", dev.Fd(), syscall.S_IFDIR, maxWrite)
	if err := syscall.Mount(fsname, abs, "fuse.lazypull", opts.mountFlags(), data); err != nil {
		dev.Close()
		return nil, fmt.Errorf("mount FUSE at %s: %w", abs, err)
	}
	s, err := serve(abs, root, dev, nil, opts, lg)
	if err != nil {
		syscall.Unmount(abs, syscall.MNT_DETACH)
		return nil, fmt.Errorf("mount FUSE at %s: %w", abs, err)
	}
	if len(opts.Probe) == 0 {
		PollProbe(abs)
		close(s.probed)
	} else {
		// The mount serves at once; the child's probe (an exec, 10-30 ms) is for what
		// this process may read of it later (Probed), and nothing of the daemon reads its
		// own mounts.
		go func() {
			probe(abs, opts.Probe, lg)
			close(s.probed)
		}()
	}
	ra := opts.ReadAheadKB
	if ra == 0 {
		ra = DefaultReadAheadKB
	}
	if ra > 0 {
		if err := setReadAhead(abs, ra); err != nil {
			lg.Debug("fusefs: cannot set the read-ahead", "dir", abs, "err", err)
		}
	}
	return s, nil
}

// Restore serves root on a mount that another process made and served (Mount, then Conn):
// conn is that mount's FUSE connection and init its INIT request, as Conn returned them.
// root must be the same view (the same index), for the kernel keeps the inode numbers and
// names it learned. Requests the earlier process had read but not answered are asked again
// (FUSE_NOTIFY_RESEND, Linux 6.9+), so a reader that was waiting on the dead process gets
// its answer from this one. Restore takes ownership of conn.
func Restore(dir string, root *Root, conn *os.File, init []byte, opts MountOptions) (*Server, error) {
	lg := opts.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("restore %s: %w", dir, err)
	}
	if _, err := decodeInit(init); err != nil {
		conn.Close()
		return nil, fmt.Errorf("restore %s: %w", abs, err)
	}
	fds := []unix.PollFd{{Fd: int32(conn.Fd())}}
	if n, err := unix.Poll(fds, 0); err == nil && n > 0 && fds[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 {
		conn.Close()
		return nil, fmt.Errorf("restore %s: %w", abs, ErrGone)
	}
	if mounted, err := isMountPoint(abs); err == nil && !mounted {
		conn.Close()
		return nil, fmt.Errorf("restore %s: not mounted: %w", abs, ErrGone)
	}
	root.v.restored = true
	s, err := serve(abs, root, conn, init, opts, lg)
	if err != nil {
		return nil, fmt.Errorf("restore %s: %w", abs, err)
	}
	if err := notifyResendTo(s.fuse); err != nil {
		lg.Warn("fusefs: cannot ask the kernel to resend pending requests; readers that waited on the earlier process may hang", "dir", abs, "err", err)
	}
	if err := restrictMount(abs, opts); err != nil {
		lg.Warn("fusefs: a restored mount lets setuid programs and devices of the image work on the host", "dir", abs, "err", err)
	}
	return s, nil
}

// restrictMount gives a restored mount the flags Mount gives: one made by an earlier
// version of lazypull, without nosuid and nodev, gets them. Only the flags of the mount at
// dir change (a bind remount, which asks the FUSE server nothing); overlayfs mounts over it
// keep theirs.
func restrictMount(dir string, opts MountOptions) error {
	if opts.AllowSuidDev {
		return nil
	}
	have, err := mountOptions(dir)
	if err != nil {
		return err
	}
	if slices.Contains(have, "nosuid") && slices.Contains(have, "nodev") {
		return nil
	}
	if err := syscall.Mount("", dir, "", syscall.MS_REMOUNT|syscall.MS_BIND|opts.mountFlags(), ""); err != nil {
		return fmt.Errorf("remount %s nosuid,nodev: %w", dir, err)
	}
	return nil
}

// mountOptions returns the per-mount options (ro, nosuid, ...) of the topmost mount at dir,
// from this thread's mountinfo: reading them asks the file system nothing.
func mountOptions(dir string) ([]string, error) {
	ms, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) { return m.Mountpoint != dir, false })
	if err != nil {
		return nil, err
	}
	if len(ms) == 0 {
		return nil, fmt.Errorf("%s: not a mount point", dir)
	}
	return strings.Split(ms[len(ms)-1].Options, ","), nil
}

// probeTimeout bounds the wait for a probe process: a server that does not answer its
// requests within it has other troubles, and the probe ends with the connection.
const probeTimeout = 30 * time.Second

// probe probes the mount at dir for poll by the command cmd (MountOptions.Probe); in this
// process (PollProbe) when the command cannot start.
func probe(dir string, cmd []string, lg *slog.Logger) {
	c := exec.Command(cmd[0], append(slices.Clone(cmd[1:]), dir)...)
	if err := c.Start(); err != nil {
		lg.Warn("fusefs: cannot start the mount's poll probe; probing in this process", "dir", dir, "cmd", cmd[0], "err", err)
		PollProbe(dir)
		return
	}
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			lg.Warn("fusefs: the mount's poll probe failed", "dir", dir, "err", err)
		}
	case <-time.After(probeTimeout):
		lg.Warn("fusefs: the mount's poll probe has not ended; going on without it", "dir", dir, "pid", c.Process.Pid)
	}
}

// PollProbe makes the kernel learn at once that the mount does not poll files (go-fuse
// answers ENOSYS for its magic name). Otherwise the first file of the mount that a Go
// program of this process opens is registered with the runtime's epoll, whose FUSE_POLL
// request may then wait for a thread that this same runtime cannot give. The kernel
// remembers the answer for the connection, so a Restore needs none.
func PollProbe(dir string) {
	fd, err := unix.Open(filepath.Join(dir, ".go-fuse-epoll-hack"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLPRI | unix.POLLOUT}}, 0)
	unix.Close(fd)
}

// maxWrite is the largest request (and read) the mount takes: 1 MiB.
const maxWrite = 1 << 20

// serve starts go-fuse on the mount's connection dev. For a new mount (init nil) the kernel
// sends INIT first; for a restored one the kernel sent INIT to the earlier process long ago,
// so go-fuse gets that request replayed on a socket in place of the connection, which then
// takes the socket's descriptor number (dup3) before serving begins.
func serve(dir string, root *Root, dev *os.File, init []byte, opts MountOptions, lg *slog.Logger) (*Server, error) {
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	root.v.timeout = timeout
	level := slog.LevelWarn
	if opts.Debug {
		level = slog.LevelDebug
	}
	mo := &fuse.MountOptions{
		AllowOther:    true,
		Name:          "lazypull",
		EnableAcl:     true,
		MaxWrite:      maxWrite,
		MaxBackground: 64,
		// Passthrough backing files must be on a non-stacked file system, so that the
		// mount can itself be an overlayfs lower directory (depth 1 + 1 = 2).
		MaxStackDepth: 1,
		Debug:         opts.Debug,
		// go-fuse's own messages: every request with Debug, else only what goes wrong.
		Logger: slog.NewLogLogger(lg.With("component", "go-fuse").Handler(), level),
	}
	var fd int
	if init != nil {
		pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			dev.Close()
			return nil, fmt.Errorf("socketpair: %w", err)
		}
		peer := os.NewFile(uintptr(pair[1]), "init")
		defer peer.Close()
		if _, err := peer.Write(init); err != nil {
			unix.Close(pair[0])
			dev.Close()
			return nil, fmt.Errorf("replay INIT: %w", err)
		}
		fd = pair[0]
	} else {
		// go-fuse owns fd from here; dev keeps a duplicate for Conn.
		dup, err := unix.FcntlInt(dev.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			dev.Close()
			return nil, fmt.Errorf("dup FUSE connection: %w", err)
		}
		fd = dup
	}
	srv, err := fuse.NewServer(root, fmt.Sprintf("/dev/fd/%d", fd), mo)
	if err != nil {
		unix.Close(fd)
		dev.Close()
		return nil, err
	}
	if init != nil {
		// go-fuse answered the replayed INIT on the socket; from now on fd is the mount's
		// connection. go-fuse reads it with plain read(2), so the swap is invisible to it.
		if err := unix.Dup3(int(dev.Fd()), fd, unix.O_CLOEXEC); err != nil {
			dev.Close()
			return nil, fmt.Errorf("take over FUSE connection: %w", err)
		}
	}
	s := &Server{Server: srv, root: root, dir: dir, fuse: dev, done: make(chan struct{}), probed: make(chan struct{})}
	if init != nil {
		close(s.probed) // the kernel learned it for the connection long ago (PollProbe)
	}
	go func() {
		srv.Serve()
		dev.Close()
		close(s.done)
	}()
	return s, nil
}

// setReadAhead sets the read-ahead of the mount at dir, through its backing device info,
// found in this process's mountinfo: a stat of dir would be a request to the mount's
// server, from this process (see MountOptions.Probe).
func setReadAhead(dir string, kb int) error {
	ms, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) { return m.Mountpoint != dir, false })
	if err != nil {
		return err
	}
	if len(ms) == 0 {
		return fmt.Errorf("%s: not a mount point", dir)
	}
	m := ms[len(ms)-1]
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", m.Major, m.Minor)
	return os.WriteFile(p, []byte(strconv.Itoa(kb)), 0)
}

// checkMountPoint makes sure dir is an existing, empty directory that nothing is mounted on,
// detaching a dead FUSE mount first.
func checkMountPoint(dir string, lg *slog.Logger) error {
	// A dead FUSE mount may still stat from the attribute cache; statfs always asks.
	var sfs syscall.Statfs_t
	err := syscall.Statfs(dir, &sfs)
	if err == nil {
		_, err = os.Stat(dir)
	}
	if isDeadMount(err) {
		lg.Warn("fusefs: detaching a stale FUSE mount", "dir", dir, "err", err)
		if uerr := Unmount(dir); uerr != nil {
			return fmt.Errorf("mount %s: stale mount (%v) that could not be detached: %w", dir, err, uerr)
		}
	}
	st, err := os.Stat(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("mount %s: mount point does not exist", dir)
		}
		return fmt.Errorf("mount %s: %w", dir, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("mount %s: mount point is not a directory", dir)
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("mount %s: %w", dir, err)
	}
	if mounted, err := isMountPoint(real); err == nil && mounted {
		return fmt.Errorf("mount %s: something is already mounted there (lazypull umount %s)", dir, dir)
	}
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("mount %s: %w", dir, err)
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if err != nil && err != io.EOF {
		return fmt.Errorf("mount %s: %w", dir, err)
	}
	if len(names) > 0 {
		return fmt.Errorf("mount %s: mount point is not empty (it holds %q)", dir, names[0])
	}
	return nil
}

// isDeadMount reports whether a stat error is that of a FUSE mount whose server is gone.
func isDeadMount(err error) bool {
	return errors.Is(err, syscall.ENOTCONN) || errors.Is(err, syscall.ECONNABORTED)
}

// Unmount detaches whatever is mounted at dir, lazily (like umount -l): a live mount goes
// away once no process uses it, a dead one at once. It is what "lazypull umount DIR" runs.
func Unmount(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("umount %s: %w", dir, err)
	}
	err = syscall.Unmount(abs, syscall.MNT_DETACH)
	if err == nil {
		return nil
	}
	if errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("umount %s: not a mount point", abs)
	}
	if errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("umount %s: no such directory", abs)
	}
	if errors.Is(err, syscall.EPERM) {
		// Not root: the setuid helper may unmount a FUSE mount of ours.
		for _, bin := range []string{"fusermount3", "fusermount"} {
			if p, lerr := exec.LookPath(bin); lerr == nil {
				out, cerr := exec.Command(p, "-u", "-z", abs).CombinedOutput()
				if cerr == nil {
					return nil
				}
				return fmt.Errorf("umount %s: %s: %v: %s", abs, bin, cerr, strings.TrimSpace(string(out)))
			}
		}
	}
	return fmt.Errorf("umount %s: %w", abs, err)
}

// isMountPoint reports whether dir is the mount point of a mount in this mount namespace.
func isMountPoint(dir string) (bool, error) {
	mps, err := mountPoints()
	return slices.Contains(mps, dir), err
}

// MountsUnder lists the mount points strictly below dir in this mount namespace, in mount
// order (unmount them in reverse).
func MountsUnder(dir string) ([]string, error) {
	mps, err := mountPoints()
	var out []string
	for _, mp := range mps {
		if strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out, err
}

// mountPoints lists the mount points of this mount namespace, in mount order.
func mountPoints() ([]string, error) {
	ms, err := mountinfo.GetMounts(nil)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Mountpoint
	}
	return out, nil
}
