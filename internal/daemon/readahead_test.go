package daemon

import (
	"bytes"
	"context"
	"testing"

	"lazypull/internal/testutil"
)

// TestSequentialReadFewRequests: a large file read sequentially in the kernel's 1 MiB
// requests, faster than the registry answers, is fetched in a few large Range requests
// (streamSource), each byte once: a window is never passed over while the read-ahead
// slots are busy (it was, and the reader fetched it itself, a request per read), and a
// chunk local already inside a window is read through, not asked for apart.
func TestSequentialReadFewRequests(t *testing.T) {
	const size = 128 << 20
	files := map[string][]byte{"data/weights.bin": testutil.RandBytes(5, size)}
	img, _ := lazyImageOf(t, files)
	ref, reqs, _ := pushCounted(t, img, "seq:v1")
	im, st := openFresh(t, ref)
	reqs.reset()
	l := im.Layers[0]
	e, _ := l.Index.Lookup("data/weights.bin")
	b := make([]byte, 1<<20)
	// Local already, in the middle of a window: its stream reads through it and drops it.
	if _, err := l.ReadAt(context.Background(), e, b[:4096], 40<<20); err != nil {
		t.Fatal(err)
	}
	for off := int64(0); off < size; off += int64(len(b)) {
		if n, err := l.ReadAt(context.Background(), e, b, off); n != len(b) || !bytes.Equal(b, files["data/weights.bin"][off:off+int64(len(b))]) {
			t.Fatalf("read at %d: %d bytes, %v, or wrong bytes", off, n, err)
		}
	}
	// 1 MiB read ahead doubling to 64 MiB: 1+2+...+64 covers 127 MiB in 7 windows; a few
	// reads ahead of the first windows fetch for themselves.
	if n := reqs.count("GET blobs"); n > 13 {
		t.Logf("requests: %q", reqs.reg.Requests())
		t.Errorf("%d blob requests for a sequential read of %d MiB; want at most 13", n, size>>20)
	}
	if s := st.Stats(); s.BytesFetched > int64(size)*11/10 {
		t.Errorf("%d bytes fetched for a %d-byte file: chunks fetched twice", s.BytesFetched, size)
	}
}
