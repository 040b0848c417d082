package daemon

import (
	"bytes"
	"testing"

	"lazypull/format"
	"lazypull/internal/testutil"
)

// TestRawFrame: a zstd frame of raw blocks decodes (format.DecodeFrame, the store's
// decoder) to the bytes it wraps, at block boundaries and off them.
func TestRawFrame(t *testing.T) {
	for _, n := range []int{1, 100, rawBlockMax - 1, rawBlockMax, rawBlockMax + 1, 3 * rawBlockMax, wholeFileMax} {
		b := testutil.RandBytes(uint64(n), n)
		got, err := format.DecodeFrame(nil, rawFrame(b), int64(n))
		if err != nil || !bytes.Equal(got, b) {
			t.Errorf("%d bytes: decoded %d bytes, %v", n, len(got), err)
		}
	}
}
