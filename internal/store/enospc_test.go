package store

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"lazypull/internal/testutil"

	"golang.org/x/sys/unix"
)

// A full disk: reads are still served right (from the verified frames in memory), one
// warning is logged, Fill fails with a clear error, and the store is consistent after.
func TestDiskFull(t *testing.T) {
	mnt := t.TempDir()
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("SKIPPED, disk-full behaviour NOT TESTED: cannot mount a 1 MiB tmpfs on %s (needs root): %v", mnt, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	files := []tfile{
		{"a", testutil.RandBytes(91, 1500_000)},
		{"b", testutil.RandBytes(92, 1000_000)},
		{"c", testutil.RandBytes(93, 800_000)},
		{"d", testutil.RandBytes(94, 300_000)},
		{"small", []byte("small file\n")},
	}
	l := buildLayer(t, files...)
	dir := filepath.Join(mnt, "store")
	lg, logs := testutil.NewLog(t)
	s := openStore(t, dir, WithLogger(lg))
	src := newSource(l)
	ctx := context.Background()
	for pass := range 2 {
		for _, name := range l.names {
			if got := readAll(t, s, src, l.files[name], 200_000); !bytes.Equal(got, l.data[name]) {
				t.Fatalf("pass %d: %s differs on a full disk", pass, name)
			}
		}
		checkRandomReads(t, s, src, l, uint64(pass), 50)
	}
	s.idle()
	st := s.Stats()
	if st.WriteErrors == 0 {
		t.Fatalf("no write errors on a 1 MiB disk: %+v", st)
	}
	if n := logs.Count("disk full"); n != 1 {
		t.Errorf("%d disk-full warnings, want 1:\n%s", n, logs)
	}
	err := s.Fill(ctx, src, l.files["a"], l.files["b"], l.files["c"])
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "no space left on device") {
		t.Errorf("Fill on a full disk: %v; want ENOSPC naming the store", err)
	}
	s.idle()
	if ents, _ := os.ReadDir(filepath.Join(dir, tmpName)); len(ents) != 0 {
		t.Errorf("temp files left on a full disk: %v", ents)
	}
	if r, err := s.Verify(ctx); err != nil || r.Bad != 0 || r.BadChunks != 0 {
		t.Fatalf("verify on a full disk: %+v, %v", r, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopened: consistent, and it serves; once space is freed it stores again.
	s2 := openStore(t, dir, WithLogger(lg))
	st2 := s2.Stats()
	if onDisk := dirFiles(t, filepath.Join(dir, objectsName)); len(onDisk) != st2.Objects || st2.Objects == 0 {
		t.Errorf("reopened: %d objects on disk, %d indexed", len(onDisk), st2.Objects)
	}
	if r, err := s2.Verify(ctx); err != nil || r.Bad != 0 || r.BadChunks != 0 {
		t.Fatalf("verify after reopening: %+v, %v", r, err)
	}
	for _, name := range l.names {
		if got := readAll(t, s2, src, l.files[name], 100_000); !bytes.Equal(got, l.data[name]) {
			t.Fatalf("%s differs after reopening", name)
		}
	}
	s2.idle() // the reads above queued chunks, and may have started assemblies
	if _, err := s2.Prune(ctx, 0); err != nil {
		t.Fatal(err)
	}
	// Assembly needs room for the chunks and the file (tmpfs has no reflinks).
	if err := s2.Fill(ctx, src, l.files["d"], l.files["small"]); err != nil {
		t.Fatalf("Fill after prune: %v", err)
	}
	if _, ok := s2.LocalPath(l.files["d"]); !ok {
		t.Error("d not local after Fill")
	}
}
