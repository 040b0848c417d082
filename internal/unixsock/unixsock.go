// Package unixsock creates unix sockets that only their owner may connect to, from the
// moment they exist.
//
// net.Listen("unix", path) creates the socket file with mode 0777 less the process's umask:
// under umask 0 any local user may connect, and a chmod after listen leaves a window in
// which one may. Listen sets the mode on the socket itself before bind (fchmod), and Linux
// creates the file with that mode (less the umask) when it binds the socket (unix_bind).
// The process's umask, a global of the process, is left alone.
package unixsock

import (
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// Mode is the mode of the socket files Listen creates: read and write for the owner only
// (connecting to a unix socket needs write permission on its file).
const Mode = 0o600

// Listen listens on the unix socket path ("unix" for a stream socket, "unixpacket" for a
// SOCK_SEQPACKET one), which must not exist, and whose file is created with mode 0600
// (less the umask's owner bits, if any): at no moment can any user but its owner (and
// root) connect. Like net.ListenUnix's, the listener removes the file when closed.
func Listen(network, path string) (*net.UnixListener, error) {
	var typ int
	switch network {
	case "unix":
		typ = unix.SOCK_STREAM
	case "unixpacket":
		typ = unix.SOCK_SEQPACKET
	default:
		return nil, fmt.Errorf("listen on %s: network %q is not unix or unixpacket", path, network)
	}
	fd, err := unix.Socket(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: socket: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close() // net.FileListener works on a duplicate
	if err := unix.Fchmod(fd, Mode); err != nil {
		return nil, fmt.Errorf("listen on %s: fchmod: %w", path, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return nil, fmt.Errorf("listen on %s: bind: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil || st.Mode&0o077 != 0 {
		// A kernel that ignored the socket's mode: whatever was created is not ours to serve.
		unix.Unlink(path)
		if err == nil {
			err = fmt.Errorf("created with mode %04o, want %04o", st.Mode&0o7777, Mode)
		}
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := unix.Listen(fd, unix.SOMAXCONN); err != nil {
		unix.Unlink(path)
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	l, err := net.FileListener(f)
	if err != nil {
		unix.Unlink(path)
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	ul := l.(*net.UnixListener)
	ul.SetUnlinkOnClose(true)
	return ul, nil
}
