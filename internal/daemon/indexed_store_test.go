package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"slices"
	"sync/atomic"
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

// countingReaderAt counts the reads of an io.ReaderAt.
type countingReaderAt struct {
	r     *bytes.Reader
	reads atomic.Int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	c.reads.Add(1)
	return c.r.ReadAt(p, off)
}

// TestTarSourceGroups: files close in the tar stream are read together, far ones apart,
// and each comes to fn as a frame of exactly its bytes, in stream order, whatever the
// order asked; a chunk that is not a whole small file is refused before any read.
func TestTarSourceGroups(t *testing.T) {
	stream := testutil.RandBytes(7, 3*tarGroupMax)
	ra := &countingReaderAt{r: bytes.NewReader(stream)}
	l := &indexedLayer{tar: ra}
	chunk := func(off, n int64) format.Chunk {
		return format.Chunk{Offset: off, Size: n, CompSize: n, Digest: format.Digest(sha256.Sum256(stream[off : off+n]))}
	}
	far := int64(2 * tarGroupMax)
	asked := []format.Chunk{chunk(far, 1000), chunk(5000, 300), chunk(0, 4096), chunk(5000+300+tarGroupGap, 10)}
	var got []int64
	err := tarSource{l}.Fetch(context.Background(), asked, func(c format.Chunk, frame []byte) error {
		b, err := c.Decode(nil, frame)
		if err != nil {
			return err
		}
		if !bytes.Equal(b, stream[c.Offset:c.Offset+c.Size]) {
			t.Errorf("chunk at %d: wrong bytes", c.Offset)
		}
		got = append(got, c.Offset)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []int64{0, 5000, 5000 + 300 + tarGroupGap, far}; !slices.Equal(got, want) {
		t.Errorf("chunks handed over at %v, want %v", got, want)
	}
	if n := ra.reads.Load(); n != 2 {
		t.Errorf("%d reads of the tar stream, want 2 (three close files, one far)", n)
	}
	ra.reads.Store(0)
	big := chunk(0, wholeFileMax+1)
	if err := (tarSource{l}).Fetch(context.Background(), []format.Chunk{chunk(0, 10), big}, func(format.Chunk, []byte) error { return nil }); err == nil || ra.reads.Load() != 0 {
		t.Errorf("a chunk over wholeFileMax: %v after %d reads; want refused before any", err, ra.reads.Load())
	}
}
