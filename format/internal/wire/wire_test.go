package wire

import (
	"errors"
	"testing"
)

var errCorrupt = errors.New("corrupt")

// TestInt: canonical uvarints up to 2^62 read; a longer encoding of the same value, a
// larger value, a truncated one fail, wrapping Corrupt, and the first error stays.
func TestInt(t *testing.T) {
	r := Reader{B: []byte{0x05, 0x80, 0x01, 0x85, 0x00}, Corrupt: errCorrupt}
	if a, b := r.Int(), r.Int(); a != 5 || b != 128 || r.Err != nil {
		t.Fatalf("read %d, %d, %v", a, b, r.Err)
	}
	if v := r.Int(); v != 0 || !errors.Is(r.Err, errCorrupt) {
		t.Fatalf("a non-canonical 5: %d, %v", v, r.Err)
	}
	first := r.Err
	r.Fail("later")
	if r.Err != first {
		t.Fatal("a later failure replaced the first")
	}
	for _, b := range [][]byte{{0x80}, {0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}} {
		r := Reader{B: b, Corrupt: errCorrupt}
		if r.Int(); !errors.Is(r.Err, errCorrupt) {
			t.Fatalf("%x: %v", b, r.Err)
		}
	}
}

// TestOpen: a sealed body opens; a changed byte, a short input, an input over the limit
// fail, wrapping Corrupt.
func TestOpen(t *testing.T) {
	sealed := Seal(AppendHeader(nil, "MAGIC", 3))
	body, err := Open(sealed, 100, errCorrupt)
	if err != nil {
		t.Fatal(err)
	}
	r := Reader{B: body, Corrupt: errCorrupt}
	if err := r.Header("MAGIC", 3); err != nil || len(r.B) != 0 {
		t.Fatalf("header: %v, %d bytes left", err, len(r.B))
	}
	if err := (&Reader{B: body, Corrupt: errCorrupt}).Header("MAGIC", 4); !errors.Is(err, errCorrupt) {
		t.Fatalf("another version: %v", err)
	}
	bad := append([]byte(nil), sealed...)
	bad[2] ^= 1
	for _, c := range [][]byte{bad, sealed[:10], sealed} {
		limit := 100
		if len(c) == len(sealed) && c[2] == sealed[2] {
			limit = len(sealed) - 1
		}
		if _, err := Open(c, limit, errCorrupt); !errors.Is(err, errCorrupt) {
			t.Fatalf("%d bytes, limit %d: %v", len(c), limit, err)
		}
	}
}

// TestCountEnd: AppendInts writes what Int reads; a count that cannot fit in what is left
// at minLen bytes a record fails, and so do bytes left after the last record.
func TestCountEnd(t *testing.T) {
	b := AppendInts(nil, 2, 300, 1<<62)
	r := Reader{B: append(b, 0xff), Corrupt: errCorrupt}
	if n := r.Count("records", 5); n != 2 || r.Err != nil {
		t.Fatalf("count %d, %v", n, r.Err)
	}
	if a, c := r.Int(), r.Int(); a != 300 || c != 1<<62 || r.Err != nil {
		t.Fatalf("read %d, %d, %v", a, c, r.Err)
	}
	if err := r.End("record"); !errors.Is(err, errCorrupt) || err.Error() != "corrupt: 1 bytes after the last record" {
		t.Fatalf("a byte left: %v", err)
	}
	r = Reader{B: AppendInts(nil, 3, 1, 2), Corrupt: errCorrupt}
	if r.Count("records", 1); !errors.Is(r.Err, errCorrupt) || r.Err.Error() != "corrupt: 3 records in 2 bytes" {
		t.Fatalf("3 records of at least a byte in 2: %v", r.Err)
	}
	r = Reader{B: AppendInts(nil, 2, 1, 2), Corrupt: errCorrupt}
	if n := r.Count("records", 1); n != 2 || r.Int() != 1 || r.Int() != 2 || r.End("record") != nil {
		t.Fatalf("2 records of a byte: %d, %v", n, r.Err)
	}
}

// TestNewReader: a reader past the header, of a copy of the body; a wrong magic or
// version fails, wrapping Corrupt.
func TestNewReader(t *testing.T) {
	body := AppendInts(AppendHeader(nil, "MAGIC", 3), 7)
	r, err := NewReader(body, "MAGIC", 3, errCorrupt)
	if err != nil {
		t.Fatal(err)
	}
	body[len(body)-1] = 8
	if v := r.Int(); v != 7 || r.End("record") != nil {
		t.Fatalf("read %d, %v", v, r.Err)
	}
	for _, c := range []struct {
		magic   string
		version uint16
	}{{"MAGIX", 3}, {"MAGIC", 4}} {
		if _, err := NewReader(body, c.magic, c.version, errCorrupt); !errors.Is(err, errCorrupt) {
			t.Errorf("%s v%d: %v", c.magic, c.version, err)
		}
	}
}
