package fusefs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// ErrNoFUSE is returned by Mount when /dev/fuse does not exist.
var ErrNoFUSE = errors.New("/dev/fuse is missing: load the fuse kernel module (modprobe fuse), or give the container the device (--device /dev/fuse)")

// devFUSE is the FUSE device; a variable for tests.
var devFUSE = "/dev/fuse"

// MountOptions tune Mount. The zero value is what lazypull uses.
type MountOptions struct {
	// FSName is the mount's source, shown by mount and df; "lazypull" when empty. Naming the
	// image or layer here helps whoever reads /proc/mounts.
	FSName string
	// Timeout is how long the kernel caches entries and attributes; DefaultTimeout when 0.
	Timeout time.Duration
	// Logger receives the stale-mount notice and go-fuse's warnings; slog.Default() when nil.
	Logger *slog.Logger
	// Debug logs every FUSE request (go-fuse's debug output) to Logger.
	Debug bool
	// ReadAheadKB is the kernel's read-ahead window for the mount, in KiB: DefaultReadAheadKB
	// when 0, the kernel's default (128) when negative. Reads that do not go through
	// passthrough come in requests of at most this size (and at most 1 MiB).
	ReadAheadKB int
}

// DefaultReadAheadKB is the read-ahead of a mount: one request of the largest size (1 MiB).
// It doubles sequential reads through FUSE over the kernel's default of 128 KiB.
const DefaultReadAheadKB = 1024

// Server is a mounted view.
type Server struct {
	*fuse.Server
	dir string
}

// Dir returns the absolute mount point.
func (s *Server) Dir() string { return s.dir }

// Passthrough reports whether the kernel offers FUSE passthrough on this mount. Opens of
// files with a local copy then use it, unless registering the backing file fails (not
// root, or a backing file on a stacked file system), in which case reads come through FUSE.
func (s *Server) Passthrough() bool {
	return s.KernelSettings().Flags64()&fuse.CAP_PASSTHROUGH != 0
}

// Mount mounts root (from NewLayer or NewMerged) read-only at dir and serves it until
// Unmount. dir must be an existing empty directory; a stale FUSE mount left there by a
// crashed process (stat gives ENOTCONN) is detached first.
func Mount(dir string, root fs.InodeEmbedder, opts MountOptions) (*Server, error) {
	lg := opts.Logger
	if lg == nil {
		lg = slog.Default()
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

	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	fsname := opts.FSName
	if fsname == "" {
		fsname = "lazypull"
	}
	fo := &fs.Options{
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		NullPermissions: true, // a mode of 0 is a mode of 0
		RootStableAttr:  &fs.StableAttr{Ino: rootIno},
		MountOptions: fuse.MountOptions{
			AllowOther: true,
			FsName:     fsname,
			Name:       "lazypull",
			// ro: the kernel refuses writes itself. dev, suid: a root file system has
			// devices and setuid programs. default_permissions: the kernel checks modes
			// (and, with EnableAcl, ACLs) against the attributes served here.
			Options:       []string{"ro", "dev", "suid", "default_permissions"},
			EnableAcl:     true,
			DirectMount:   true, // mount(2) as root; fusermount3 otherwise
			MaxWrite:      1 << 20,
			MaxBackground: 64,
			// Passthrough backing files must be on a non-stacked file system, so that the
			// mount can itself be an overlayfs lower directory (depth 1 + 1 = 2).
			MaxStackDepth: 1,
			Debug:         opts.Debug,
		},
	}
	// go-fuse's own messages: every request with Debug, else only what goes wrong.
	level := slog.LevelWarn
	if opts.Debug {
		level = slog.LevelDebug
	}
	fo.MountOptions.Logger = slog.NewLogLogger(lg.With("component", "go-fuse").Handler(), level)
	fo.Logger = fo.MountOptions.Logger
	srv, err := fs.Mount(abs, root, fo)
	if err != nil {
		return nil, fmt.Errorf("mount FUSE at %s: %w", abs, err)
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
	return &Server{Server: srv, dir: abs}, nil
}

// setReadAhead sets the read-ahead of the mount at dir, through its backing device info.
func setReadAhead(dir string, kb int) error {
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return err
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
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
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		// id parent major:minor root mountpoint options ...
		fields := strings.Fields(s.Text())
		if len(fields) >= 5 && unescapeMountinfo(fields[4]) == dir {
			return true, nil
		}
	}
	return false, s.Err()
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) of /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
