package bench

import (
	"slices"
	"strings"
	"testing"
)

// TestFuseReads: the FUSE_READ replies of a trace are counted with their data bytes (the
// reply's len less its 16-byte header) and errors; replies to other requests are not.
func TestFuseReads(t *testing.T) {
	trace := `# tracer: nop
          python3-812 [001] .....  101.1: fuse_request_send: connection 58 req 10 opcode 15 (FUSE_READ) len 80
          python3-812 [001] .....  101.2: fuse_request_send: connection 58 req 11 opcode 3 (FUSE_GETATTR) len 56
    lazypull-700 [000] .....  101.3: fuse_request_end: connection 58 req 10 len 131088 error 0
    lazypull-700 [000] .....  101.4: fuse_request_end: connection 58 req 11 len 120 error 0
          python3-812 [001] .....  101.5: fuse_request_send: connection 58 req 12 opcode 15 (FUSE_READ) len 80
    lazypull-700 [000] .....  101.6: fuse_request_end: connection 58 req 12 len 16 error -5
`
	n, bytes, errs := fuseReads([]byte(trace))
	if n != 2 || bytes != 131072 || errs != 1 {
		t.Errorf("fuseReads = %d reads, %d bytes, %d errors; want 2, 131072, 1", n, bytes, errs)
	}
}

// TestOpenedFiles: only successful opens and execs after the chroot count, each path once,
// relative paths made absolute; opens relative to a directory fd are counted as skipped.
func TestOpenedFiles(t *testing.T) {
	strace := `900 execve("/usr/sbin/chroot", ["chroot", "/mnt", "python3"], 0x7ffd /* 20 vars */) = 0
900 openat(AT_FDCWD, "/etc/ld.so.cache", O_RDONLY|O_CLOEXEC) = 3
900 chroot("/mnt")                      = 0
900 execve("/usr/local/bin/python3", ["python3", "-c", "print(1)"], 0x7ffd) = -1 ENOENT (No such file or directory)
900 execve("/usr/bin/python3", ["python3", "-c", "print(1)"], 0x7ffd) = 0
900 openat(AT_FDCWD, "/etc/ld.so.cache", O_RDONLY|O_CLOEXEC) = 3
900 openat(AT_FDCWD, "usr/lib/python3.11/os.py", O_RDONLY|O_CLOEXEC) = 4
900 openat(AT_FDCWD, "/etc/ld.so.cache", O_RDONLY|O_CLOEXEC) = 3
900 openat(3, "encodings", O_RDONLY|O_DIRECTORY) = 5
900 openat(AT_FDCWD, "/nope", O_RDONLY) = -1 ENOENT (No such file or directory)
901 openat(AT_FDCWD, "/usr/lib/x.so", O_RDONLY <unfinished ...>
`
	paths, skipped := openedFiles([]byte(strace))
	want := []string{"/usr/bin/python3", "/etc/ld.so.cache", "/usr/lib/python3.11/os.py"}
	if !slices.Equal(paths, want) || skipped != 1 {
		t.Errorf("openedFiles = %q, %d skipped; want %q, 1", paths, skipped, want)
	}
}

// TestVariantFile: each variant's file names it and differs from the others'.
func TestVariantFile(t *testing.T) {
	a, b := variantFile(1), variantFile(2)
	if !strings.HasPrefix(string(a), "variant 1\n") || !strings.HasPrefix(string(b), "variant 2\n") || len(a) < 4000 {
		t.Errorf("variantFile: %q..., %d bytes", a[:20], len(a))
	}
	for line := range strings.SplitSeq(strings.TrimSpace(string(a)), "\n") {
		if len(line) > 76 {
			t.Fatalf("line of %d columns", len(line))
		}
	}
}

// TestMrange: medians and ranges as the reports print them.
func TestMrange(t *testing.T) {
	xs := []float64{3.5, 1.25, 2}
	if got := mrange(xs, "%.2f"); got != "2.00 (1.25-3.50)" {
		t.Errorf("mrange = %q", got)
	}
	if got := mrangeInt([]float64{7, 7}); got != "7" {
		t.Errorf("mrangeInt = %q", got)
	}
	if got := mrangeMB([]float64{5.02e6, 5.04e6, 5.0e6}, " MB"); got != "5.02 (5.00-5.04) MB" {
		t.Errorf("mrangeMB = %q", got)
	}
}
