package testutil

import (
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

// SparseTar makes, with GNU tar, a tar stream holding a sparse file "sparse" of size
// bytes, holes but for data (its bytes at each offset), followed by the regular files of
// extra (name -> body, in name order). format is tar's --format: "gnu", "pax" (sparse
// version 0.x) or "posix" (sparse version 1.0). It skips the test where GNU tar is not
// installed.
func SparseTar(t testing.TB, format string, size int64, data map[int64][]byte, extra map[string][]byte) []byte {
	t.Helper()
	if _, err := exec.LookPath("tar"); err != nil {
		t.Skip("SKIP: GNU tar not installed; sparse files not tested (run make deps)")
	}
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, off := range slices.Sorted(maps.Keys(data)) {
		if _, err := f.WriteAt(data[off], off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	args := []string{"--sparse", "--format=" + format}
	if format == "posix" {
		args = append(args, "--sparse-version=1.0")
	}
	args = append(args, "-C", dir, "-cf", "-", "sparse")
	for _, name := range slices.Sorted(maps.Keys(extra)) {
		if err := os.WriteFile(filepath.Join(dir, name), extra[name], 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, name)
	}
	b, err := exec.Command("tar", args...).Output()
	if err != nil {
		t.Fatalf("tar --format=%s: %v", format, err)
	}
	return b
}
