package spans

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// errFetch is a fetch's own error.
var errFetch = errors.New("fetch failed")

// failingAt reads like r, then fails with errFetch past n bytes.
type failingAt struct {
	r io.ReaderAt
	n int64
}

func (f failingAt) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) <= f.n {
		return f.r.ReadAt(p, off)
	}
	k, _ := f.r.ReadAt(p[:max(f.n-off, 0)], off)
	return k, errFetch
}

// TestReadFull: the bytes asked for; a short read is io.ErrUnexpectedEOF when the source
// says nothing or io.EOF, and the source's own error when it says why.
func TestReadFull(t *testing.T) {
	src := bytes.NewReader([]byte("0123456789"))
	if b, err := ReadFull(src, 2, 5); err != nil || string(b) != "23456" {
		t.Fatalf("read %q, %v", b, err)
	}
	if b, err := ReadFull(src, 8, 5); !errors.Is(err, io.ErrUnexpectedEOF) || b != nil {
		t.Fatalf("past the end: %q, %v", b, err)
	}
	if b, err := ReadFull(failingAt{src, 6}, 2, 5); !errors.Is(err, errFetch) || b != nil {
		t.Fatalf("a failing source: %q, %v", b, err)
	}
	if b, err := ReadFull(failingAt{src, 10}, 2, 5); err != nil || string(b) != "23456" {
		t.Fatalf("a source that fails later: %q, %v", b, err)
	}
}
