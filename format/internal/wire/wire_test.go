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
