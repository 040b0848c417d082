package imageindex

import (
	"bytes"
	"testing"

	"lazypull/internal/testutil"
)

// decodeOverhead is what a decode may allocate beyond its budget that is not the
// decoder's: the error's formatting, the runtime's own.
const decodeOverhead = 16 << 10

// FuzzDecodeTable feeds hostile tables to DecodeTable: errors, never panics; allocates at
// most MemFactor times the input plus MemSlack (plus decodeOverhead); what decodes encodes
// to the same bytes.
func FuzzDecodeTable(f *testing.F) {
	b := build(f, testTar(f), Tar, 0)
	enc := b.Table.Encode()
	f.Add(enc)
	f.Add(enc[:len(enc)/2])
	f.Add((&Table{}).Encode())
	f.Fuzz(func(t *testing.T, p []byte) {
		tab, err := testutil.DecodeWithin(t, p, uint64(MemFactor*len(p)+MemSlack)+decodeOverhead, DecodeTable)
		if err != nil {
			return
		}
		if !bytes.Equal(tab.Encode(), p) {
			t.Fatal("a decoded table encodes to other bytes")
		}
	})
}

// FuzzDecodeLayer: a hostile layer blob errors, never panics, and what decodes encodes to
// the same bytes.
func FuzzDecodeLayer(f *testing.F) {
	for _, k := range []Kind{Tar, Gzip, Zstd} {
		b := build(f, blobOf(f, testTar(f), k), k, 64<<10)
		f.Add(encode(f, b), uint8(k))
	}
	f.Fuzz(func(t *testing.T, p []byte, k uint8) {
		l, err := DecodeLayer(p, Kind(k%3))
		if err != nil {
			return
		}
		if _, err := l.Encode(); err != nil {
			t.Fatalf("a decoded layer does not encode: %v", err)
		}
	})
}
