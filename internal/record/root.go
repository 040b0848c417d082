package record

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The image a profile is recorded on comes from whoever pushed it, and the recorder runs as
// root on the host: every path it opens, reads or mounts on under the image's root file
// system goes through rootDir, which resolves it as the kernel would inside a chroot
// (openat2 RESOLVE_IN_ROOT: an absolute symlink or a ".." stays in the image), never
// through a /proc magic link, and never reads or mounts on anything but what it resolved
// to (the file descriptor, not the path again).

// maxRuntimeFile bounds what the recorder reads of a file the runtime reads at create
// (/etc/passwd, /etc/group): real ones are a few KiB.
const maxRuntimeFile = 4 << 20

// inRoot is how every path under a rootDir is resolved.
const inRoot = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS

// rootDir is an image's root file system, opened once; paths of the image are resolved in it.
type rootDir struct {
	fd   int
	path string // for messages, and the overlay's own mount point
}

// openRoot opens dir, a directory of the recorder's own (not a path of the image), as the
// root that the image's paths are resolved in.
func openRoot(dir string) (*rootDir, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open the image's root %s: %w", dir, err)
	}
	// Its path as the kernel names it (readlink of the descriptor), what checkRuntimeFile
	// compares resolved paths with.
	canon, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open the image's root %s: %w", dir, err)
	}
	return &rootDir{fd: fd, path: canon}, nil
}

func (r *rootDir) Close() error { return unix.Close(r.fd) }

// rel makes name, a path of the image ("/etc/passwd" or "etc/passwd"), relative to the root.
func rel(name string) string {
	name = strings.TrimLeft(path.Clean("/"+name), "/")
	if name == "" {
		return "."
	}
	return name
}

// open opens name in the image with flags (O_CLOEXEC added), resolved in the root, plus
// the RESOLVE_ flags in resolve.
func (r *rootDir) open(name string, flags int, resolve uint64) (int, error) {
	how := unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Resolve: inRoot | resolve}
	var err error
	// EAGAIN: a rename or mount somewhere raced the resolution (RESOLVE_IN_ROOT then refuses
	// to guess); a few tries are plenty, nothing here renames on purpose.
	for range 16 {
		var fd int
		fd, err = unix.Openat2(r.fd, rel(name), &how)
		if err == nil {
			return fd, nil
		}
		if err != unix.EAGAIN && err != unix.EINTR {
			break
		}
	}
	return -1, &os.PathError{Op: "open", Path: "/" + rel(name) + " in the image", Err: err}
}

// stat returns what name resolves to in the image (symlinks followed, in the root).
func (r *rootDir) stat(name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	fd, err := r.open(name, unix.O_PATH, 0)
	if err != nil {
		return st, err
	}
	defer unix.Close(fd)
	if err := unix.Fstat(fd, &st); err != nil {
		return st, fmt.Errorf("stat /%s in the image: %w", rel(name), err)
	}
	return st, nil
}

// errNotRegular is wrapped by openRegular's error for a name that is there but is not a
// regular file (a device, a fifo, a socket, a directory).
var errNotRegular = errors.New("not a regular file")

// openRegular opens name in the image for reading if it resolves (in the root) to a regular
// file of at most max bytes. It never opens anything else: it looks at what it resolved to
// first (O_PATH, which opens no device and waits for no fifo writer), then reopens that very
// file, non-blocking.
func (r *rootDir) openRegular(name string, max int64) (*os.File, error) {
	fd, err := r.open(name, unix.O_PATH, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("stat /%s in the image: %w", rel(name), err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("/%s in the image: %w (mode %#o)", rel(name), errNotRegular, st.Mode&unix.S_IFMT)
	}
	if st.Size > max {
		return nil, fmt.Errorf("/%s in the image: %d bytes, more than the %d read of it", rel(name), st.Size, max)
	}
	// The reopen goes through this process's own /proc/self/fd (the host's /proc), to the
	// inode already resolved: no path of the image is walked again.
	rfd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(fd), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /%s in the image: %w", rel(name), err)
	}
	return os.NewFile(uintptr(rfd), "/"+rel(name)), nil
}

// readAll reads name in the image to its end, at most max bytes of it, and discards them:
// what is wanted is that the recording sees the reads. A name that is not there is no error.
func (r *rootDir) readAll(name string, max int64) error {
	f, err := r.openRegular(name, max)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.Copy(io.Discard, bufio.NewReader(io.LimitReader(f, max))); err != nil {
		return fmt.Errorf("read /%s in the image: %w", rel(name), err)
	}
	return nil
}

// checkRuntimeFile checks name, a file that containerd (in this process, building the spec)
// and runc (at the container's init) read to look a user or group up: it must be absent or
// a regular file of at most max bytes, not a symlink to nothing in the image (runc would
// resolve it in the /dev or /proc it mounts), nor under dev/, proc/ or sys/, which the
// runtime mounts over. Anything else could make either wait forever (a fifo, /dev/zero) or
// read without end.
func (r *rootDir) checkRuntimeFile(name string, max int64) error {
	fd, err := r.open(name, unix.O_PATH, 0)
	if errors.Is(err, unix.ENOENT) {
		if lfd, lerr := r.open(name, unix.O_PATH|unix.O_NOFOLLOW, 0); lerr == nil {
			defer unix.Close(lfd)
			var st unix.Stat_t
			if unix.Fstat(lfd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
				return fmt.Errorf("/%s in the image is a symlink to nothing in the image (%s)", rel(name), r.linkTarget(lfd))
			}
		}
		return nil // absent, as the runtime allows
	}
	if err != nil {
		return err
	}
	where, werr := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	unix.Close(fd)
	if werr != nil {
		return fmt.Errorf("/%s in the image: %w", rel(name), werr)
	}
	inImage, ok := strings.CutPrefix(where, strings.TrimSuffix(r.path, "/")+"/")
	if !ok {
		return fmt.Errorf("/%s in the image resolves to %s, outside it", rel(name), where)
	}
	for _, d := range []string{"dev/", "proc/", "sys/"} {
		if strings.HasPrefix(inImage, d) {
			return fmt.Errorf("/%s in the image resolves to /%s, where the runtime mounts its own", rel(name), inImage)
		}
	}
	f, err := r.openRegular(name, max)
	if err != nil {
		return err
	}
	return f.Close()
}

// linkTarget is what the symlink open (O_PATH|O_NOFOLLOW) at fd points to, for messages.
func (r *rootDir) linkTarget(fd int) string {
	buf := make([]byte, 4096)
	n, err := unix.Readlinkat(fd, "", buf)
	if err != nil {
		return "?"
	}
	return strconv.Quote(string(buf[:n]))
}

// mountOn mounts src (fstype, flags) on the directory name of the image, resolved in the
// root and on the same mount as the root (RESOLVE_NO_XDEV: never onto a mount made before,
// such as /proc for a /dev that points there). A name the image lacks is made a directory;
// one that is a symlink to nothing in the image, or not a directory, is refused. The mount
// is made on the descriptor of what was resolved (/proc/self/fd/N), not on a path walked
// again. It is not undone here: unmounting the root (MNT_DETACH) takes it along.
func (r *rootDir) mountOn(name, src, fstype string, flags uintptr) error {
	fd, err := r.open(name, unix.O_PATH|unix.O_DIRECTORY, unix.RESOLVE_NO_XDEV)
	if errors.Is(err, unix.ENOENT) {
		if lfd, lerr := r.open(name, unix.O_PATH|unix.O_NOFOLLOW, unix.RESOLVE_NO_XDEV); lerr == nil {
			target := r.linkTarget(lfd)
			unix.Close(lfd)
			return fmt.Errorf("mount %s at /%s in the image: it is a symlink to %s, which is not in the image", src, rel(name), target)
		}
		pfd, perr := r.open(path.Dir(rel(name)), unix.O_PATH|unix.O_DIRECTORY, unix.RESOLVE_NO_XDEV)
		if perr != nil {
			return fmt.Errorf("mount %s at /%s in the image: %w", src, rel(name), perr)
		}
		merr := unix.Mkdirat(pfd, path.Base(rel(name)), 0o755)
		unix.Close(pfd)
		if merr != nil && merr != unix.EEXIST {
			return fmt.Errorf("mount %s at /%s in the image: mkdir: %w", src, rel(name), merr)
		}
		fd, err = r.open(name, unix.O_PATH|unix.O_DIRECTORY, unix.RESOLVE_NO_XDEV)
	}
	switch {
	case errors.Is(err, unix.ENOTDIR):
		return fmt.Errorf("mount %s at /%s in the image: not a directory", src, rel(name))
	case errors.Is(err, unix.EXDEV):
		return fmt.Errorf("mount %s at /%s in the image: it resolves onto another mount", src, rel(name))
	case err != nil:
		return fmt.Errorf("mount %s at /%s in the image: %w", src, rel(name), err)
	}
	defer unix.Close(fd)
	if err := unix.Mount(src, "/proc/self/fd/"+strconv.Itoa(fd), fstype, flags, ""); err != nil {
		return fmt.Errorf("mount %s at /%s in the image: %w", src, rel(name), err)
	}
	return nil
}
