package unixsock

import (
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestListenMode: under umask 0, where net.Listen makes a socket any user may connect to
// (0777), Listen's socket is 0600, stream or seqpacket; it accepts its owner's
// connections, and closing the listener removes it.
func TestListenMode(t *testing.T) {
	old := syscall.Umask(0) // the tests of this package run one at a time
	defer syscall.Umask(old)
	for _, network := range []string{"unix", "unixpacket"} {
		t.Run(network, func(t *testing.T) {
			dir := t.TempDir()
			plain := filepath.Join(dir, "plain.sock")
			pl, err := net.Listen(network, plain)
			if err != nil {
				t.Fatal(err)
			}
			defer pl.Close()
			if st, err := os.Lstat(plain); err != nil || st.Mode().Perm() != 0o777 {
				t.Fatalf("net.Listen under umask 0: %v %v, want mode 0777 (else this tests nothing)", st.Mode(), err)
			}

			p := filepath.Join(dir, "s.sock")
			l, err := Listen(network, p)
			if err != nil {
				t.Fatal(err)
			}
			st, err := os.Lstat(p)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != Mode {
				t.Errorf("socket %s: mode %v, want a socket of mode %04o", p, st.Mode(), Mode)
			}
			accepted := make(chan error, 1)
			go func() {
				c, err := l.Accept()
				if err == nil {
					c.Close()
				}
				accepted <- err
			}()
			c, err := net.Dial(network, p)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			c.Close()
			if err := <-accepted; err != nil {
				t.Fatalf("accept: %v", err)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Lstat(p); !os.IsNotExist(err) {
				t.Errorf("socket after Close: %v, want it removed", err)
			}
		})
	}
}

func TestListenErrors(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "s.sock")
	if _, err := Listen("tcp", p); err == nil {
		t.Error("Listen(tcp): no error")
	}
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen("unix", p); err == nil {
		t.Error("Listen on an existing file: no error")
	}
	if _, err := Listen("unix", filepath.Join(dir, "missing", "s.sock")); err == nil {
		t.Error("Listen in a missing directory: no error")
	}
}
