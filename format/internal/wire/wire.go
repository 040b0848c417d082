package wire

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

// Seal appends the sha256 of b to b.
func Seal(b []byte) []byte {
	sum := sha256.Sum256(b)
	return append(b, sum[:]...)
}

// Open checks an encoded index's size (at most maxSize) and trailing sha256, and returns
// its body. Its errors wrap corrupt.
func Open(data []byte, maxSize int, corrupt error) ([]byte, error) {
	if len(data) > maxSize {
		return nil, fmt.Errorf("%w: %d bytes, over the limit of %d", corrupt, len(data), maxSize)
	}
	if len(data) < sha256.Size {
		return nil, fmt.Errorf("%w: %d bytes", corrupt, len(data))
	}
	body, sum := data[:len(data)-sha256.Size], data[len(data)-sha256.Size:]
	if got := sha256.Sum256(body); !bytes.Equal(got[:], sum) {
		return nil, fmt.Errorf("%w: digest mismatch", corrupt)
	}
	return body, nil
}

// AppendHeader appends the magic and the big-endian uint16 version.
func AppendHeader(b []byte, magic string, version uint16) []byte {
	return binary.BigEndian.AppendUint16(append(b, magic...), version)
}

// AppendInts appends the uvarints of vs, which must not be negative.
func AppendInts(b []byte, vs ...int64) []byte {
	for _, v := range vs {
		b = binary.AppendUvarint(b, uint64(v))
	}
	return b
}

// Reader reads an encoded body, remembering its first error; every error wraps Corrupt.
type Reader struct {
	B       []byte // what is left to read
	Err     error
	Corrupt error
}

// NewReader returns a reader of a copy of body (what it reads may be kept) past its
// header, the magic and the version, which must be these. Its errors wrap corrupt.
func NewReader(body []byte, magic string, version uint16, corrupt error) (*Reader, error) {
	r := &Reader{B: bytes.Clone(body), Corrupt: corrupt}
	if err := r.Header(magic, version); err != nil {
		return nil, err
	}
	return r, nil
}

// Fail records an error, unless there is one already.
func (r *Reader) Fail(format string, args ...any) {
	if r.Err == nil {
		r.Err = fmt.Errorf("%w: %s", r.Corrupt, fmt.Sprintf(format, args...))
	}
}

// Header reads the magic and the version, which must be these.
func (r *Reader) Header(magic string, version uint16) error {
	if len(r.B) < len(magic)+2 || string(r.B[:len(magic)]) != magic {
		r.Fail("no magic")
		return r.Err
	}
	if v := binary.BigEndian.Uint16(r.B[len(magic):]); v != version {
		r.Fail("version %d, want %d", v, version)
		return r.Err
	}
	r.B = r.B[len(magic)+2:]
	return nil
}

// Int reads a uvarint that must be canonical (the shortest, so that what decodes
// encodes to the same bytes) and fit an int64 with room to add another (at most 2^62).
func (r *Reader) Int() int64 {
	if r.Err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.B)
	if n <= 0 || v > 1<<62 || n != UvarintLen(v) {
		r.Fail("bad varint")
		return 0
	}
	r.B = r.B[n:]
	return int64(v)
}

// Count reads the number of the records that follow, which must fit in what is left if
// each takes minLen bytes at least (so that it bounds what a decoder allocates for them).
func (r *Reader) Count(what string, minLen int) int64 {
	n := r.Int()
	if r.Err == nil && n > int64(len(r.B)/minLen) {
		r.Fail("%d %s in %d bytes", n, what, len(r.B))
	}
	return n
}

// End returns the first error, else an error if any bytes are left after the last
// record, named by what.
func (r *Reader) End(what string) error {
	if r.Err == nil && len(r.B) != 0 {
		r.Fail("%d bytes after the last %s", len(r.B), what)
	}
	return r.Err
}

// Bytes reads n bytes (a slice of the input, capacity n).
func (r *Reader) Bytes(n int64) []byte {
	if r.Err != nil {
		return nil
	}
	if n > int64(len(r.B)) {
		r.Fail("truncated")
		return nil
	}
	p := r.B[:n:n]
	r.B = r.B[n:]
	return p
}

// UvarintLen returns the length of v's shortest uvarint, the one binary.AppendUvarint writes.
func UvarintLen(v uint64) int {
	n := 1
	for ; v >= 0x80; v >>= 7 {
		n++
	}
	return n
}
