package testutil

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

// ShortDir returns a new directory under the system's temp dir, removed when the test
// ends. A socket path must fit in 108 bytes, which t.TempDir's long names may not.
func ShortDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "lz-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// ListenUnix listens on a unix socket in a new ShortDir and returns the listener (closed
// when the test ends) and the socket's path.
func ListenUnix(t testing.TB) (net.Listener, string) {
	t.Helper()
	sock := filepath.Join(ShortDir(t), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, sock
}

// WriteTemp writes data to a file named name in a new t.TempDir and returns its path.
func WriteTemp(t testing.TB, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	WriteFile(t, p, data, 0o644)
	return p
}

// DirNames returns the names in dir, hidden ones too, sorted.
func DirNames(t testing.TB, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// WriteFile writes data to the file p with permissions perm, making its missing parent
// directories: 0o700 for a file only its owner may read, else 0o755.
func WriteFile(t testing.TB, p string, data []byte, perm os.FileMode) {
	t.Helper()
	dirPerm := os.FileMode(0o755)
	if perm&0o077 == 0 {
		dirPerm = 0o700
	}
	if err := os.MkdirAll(filepath.Dir(p), dirPerm); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, perm); err != nil {
		t.Fatal(err)
	}
}
