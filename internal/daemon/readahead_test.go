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
// slots are busy (it was, and the reader fetched it itself, a request per read), a chunk
// local already inside a window is read through, not asked for apart, and reads reaching
// the mount out of order (the kernel's own read-ahead) do not start the stream again.
func TestSequentialReadFewRequests(t *testing.T) {
	const size, mib = 128 << 20, 1 << 20
	data := testutil.RandBytes(5, size)
	img, _ := lazyImageOf(t, map[string][]byte{"data/weights.bin": data})
	for _, tc := range []struct {
		name    string
		swapped bool // each pair of 1 MiB reads in the other order
	}{{"in order", false}, {"out of order", true}} {
		t.Run(tc.name, func(t *testing.T) {
			ref, reqs, _ := pushCounted(t, img, "seq:v1")
			im, st := openFresh(t, ref)
			reqs.reset()
			l := im.Layers[0]
			e, _ := l.Index.Lookup("data/weights.bin")
			b := make([]byte, mib)
			read := func(off int64) {
				t.Helper()
				if n, err := l.ReadAt(context.Background(), e, b, off); n != len(b) || !bytes.Equal(b, data[off:off+mib]) {
					t.Fatalf("read at %d: %d bytes, %v, or wrong bytes", off, n, err)
				}
			}
			// Local already, in the middle of a window: its stream reads through it.
			read(40 * mib)
			for off := int64(0); off < size; off += 2 * mib {
				if tc.swapped {
					read(off + mib)
					read(off)
				} else {
					read(off)
					read(off + mib)
				}
			}
			// 1 MiB read ahead doubling to 64 MiB: 1+2+...+64 covers 127 MiB in 7
			// windows; reads that get ahead of the first windows (this reader is faster
			// than the registry) fetch for themselves: 9-15 requests. Out of order, each
			// pair started the stream again: 129.
			if n := reqs.count("GET blobs"); n > 18 {
				t.Logf("requests: %q", reqs.reg.Requests())
				t.Errorf("%d blob requests for a sequential read of %d MiB; want at most 18", n, size>>20)
			}
			if s := st.Stats(); s.BytesFetched > int64(size)*11/10 {
				t.Errorf("%d bytes fetched for a %d-byte file: chunks fetched twice", s.BytesFetched, size)
			}
		})
	}
}
