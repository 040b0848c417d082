package store

import (
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"testing"

	"lazypull/format"
)

// BenchmarkHeldOf counts what the store holds of a layer of 100,000 files of 4 chunks each
// (none local: every chunk looked up), the cost of one snapshot's Usage when the store
// changed since the last.
func BenchmarkHeldOf(b *testing.B) {
	s := openStore(b, b.TempDir())
	files := make([]File, 100_000)
	for i := range files {
		var buf [8]byte
		binary.LittleEndian.PutUint64(buf[:], uint64(i))
		f := File{Digest: format.Digest(sha256.Sum256(buf[:])), Size: 4 << 10}
		for j := range 4 {
			buf[7] = byte(j + 1)
			f.Chunks = append(f.Chunks, format.Chunk{Digest: format.Digest(sha256.Sum256(buf[:])), FileOffset: int64(j) << 10, Size: 1 << 10})
		}
		files[i] = f
	}
	b.ResetTimer()
	for range b.N {
		s.HeldOf(slices.Values(files))
	}
}
