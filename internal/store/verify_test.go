package store

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"

	"lazypull/format"
	"lazypull/internal/testutil"
)

// TestWrongSizeNotServed: an index that gives a stored digest another size (a crafted
// index naming a file the store holds from another image, with the size of a shorter
// file) gets no byte of the object: the read fails with ErrCorrupt, and the intact object
// stays for the readers whose index is right.
func TestWrongSizeNotServed(t *testing.T) {
	l := buildLayer(t, tfile{"f", testutil.RandBytes(7, 20_000)})
	s := openStore(t, t.TempDir())
	f := l.files["f"]
	if got := readAll(t, s, newSource(l), f, 1<<20); !bytes.Equal(got, l.data["f"]) {
		t.Fatal("wrong bytes")
	}
	s.idle()

	lie := f
	lie.Size = f.Size - 100
	lie.Chunks = []format.Chunk{f.Chunks[0]}
	lie.Chunks[0].Size = lie.Size
	p := make([]byte, lie.Size)
	n, err := s.ReadAt(context.Background(), newSource(l), lie, p, 0)
	if err == nil || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read of %d bytes of a %d-byte object under its digest: %d bytes, %v; want ErrCorrupt", lie.Size, f.Size, n, err)
	}
	if r, err := s.OpenLocal(lie); err == nil {
		r.Close()
		t.Fatal("OpenLocal handed out an object of another size than the index's")
	}
	if got := readAll(t, s, newSource(l), f, 1<<20); !bytes.Equal(got, l.data["f"]) {
		t.Fatal("the intact object is gone or wrong after a lying read")
	}
}

// TestWrongSizeOnDiskRefetched: an object that grew on disk (damage from outside, found
// at Open with its new size) is hashed when a read finds its size wrong, removed, and the
// content fetched again.
func TestWrongSizeOnDiskRefetched(t *testing.T) {
	dir := t.TempDir()
	l := buildLayer(t, tfile{"f", testutil.RandBytes(8, 20_000)})
	s := openStore(t, dir)
	f := l.files["f"]
	readAll(t, s, newSource(l), f, 1<<20)
	s.idle()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	p := s.objectPath(f.Digest)
	os.Chmod(p, 0o600)
	if err := os.WriteFile(p, append(bytes.Clone(l.data["f"]), "junk"...), 0o600); err != nil {
		t.Fatal(err)
	}
	s2 := openStore(t, dir)
	src := newSource(l)
	if got := readAll(t, s2, src, f, 1<<20); !bytes.Equal(got, l.data["f"]) {
		t.Fatal("wrong bytes")
	}
	if _, chunks := src.counts(); chunks != 1 {
		t.Fatalf("fetched %d chunks; want the damaged object's one", chunks)
	}
}
