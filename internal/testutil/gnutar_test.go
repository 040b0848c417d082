package testutil

import (
	"archive/tar"
	"bytes"
	"io"
	"testing"
)

// TestSparseTar: in every form, the stream holds the sparse file, its content the data in
// holes, then the extra files.
func TestSparseTar(t *testing.T) {
	data := map[int64][]byte{0: []byte("start"), 1 << 20: RandBytes(1, 5000)}
	for _, fm := range []string{"gnu", "pax", "posix"} {
		tr := tar.NewReader(bytes.NewReader(SparseTar(t, fm, 2<<20, data, map[string][]byte{"after": []byte("x")})))
		h, err := tr.Next()
		if err != nil || h.Name != "sparse" || h.Size != 2<<20 {
			t.Fatalf("%s: first entry %+v, %v", fm, h, err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		want := make([]byte, 2<<20)
		for off, d := range data {
			copy(want[off:], d)
		}
		if !bytes.Equal(b, want) {
			t.Errorf("%s: the sparse file's content differs", fm)
		}
		if h, err := tr.Next(); err != nil || h.Name != "after" {
			t.Errorf("%s: second entry %+v, %v", fm, h, err)
		}
	}
}

func TestAllocated(t *testing.T) {
	var keep []byte
	if n := Allocated(func() { keep = make([]byte, 1<<20) }); n < 1<<20 {
		t.Errorf("a 1 MiB allocation counted %d bytes", n)
	}
	_ = keep
}
