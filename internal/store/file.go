package store

import (
	"crypto/sha256"
	"fmt"
	"sort"

	"lazypull/format"
)

// File describes the content of one regular file: its digest and size, and its chunks in
// file order as the layer's index lists them (format.Index.Chunks). A file of one chunk has
// that chunk's digest; an empty file has no chunks and the digest of no bytes.
type File struct {
	Digest format.Digest
	Size   int64
	Chunks []format.Chunk
}

// FileOf returns the File of a regular file or hard link entry of a layer's index.
// Sparse files are refused: their content is not laid out in chunks.
func FileOf(ix *format.Index, e *format.Entry) (File, error) {
	t, err := ix.Content(e)
	if err != nil {
		return File{}, err
	}
	if !t.IsRegular() {
		return File{}, fmt.Errorf("%q: not a regular file", e.Name)
	}
	if t.Sparse {
		return File{}, fmt.Errorf("%q: a sparse file: its content is not in chunks", e.Name)
	}
	f := File{Digest: t.Digest, Size: t.Size, Chunks: ix.Chunks(t)}
	if err := f.Validate(); err != nil {
		return File{}, fmt.Errorf("%q: %w", e.Name, err)
	}
	return f, nil
}

// Validate checks that the chunks tile the file: contiguous from 0, each 1 to
// format.MaxChunkSize bytes, adding up to Size; and that a file of one chunk or none has
// the digest that implies. ReadAt checks only the chunks a read uses; Fill checks all.
func (f File) Validate() error {
	if f.Size < 0 {
		return fmt.Errorf("file %s: negative size %d", f.Digest, f.Size)
	}
	var off int64
	for i, c := range f.Chunks {
		if c.FileOffset != off || c.Size <= 0 || c.Size > format.MaxChunkSize {
			return fmt.Errorf("file %s: chunk %d (%s) at %d+%d: want offset %d and 1 to %d bytes", f.Digest, i, c.Digest, c.FileOffset, c.Size, off, format.MaxChunkSize)
		}
		off += c.Size
	}
	if off != f.Size {
		return fmt.Errorf("file %s: chunks hold %d bytes, size is %d", f.Digest, off, f.Size)
	}
	if len(f.Chunks) == 1 && f.Chunks[0].Digest != f.Digest {
		return fmt.Errorf("file %s: its one chunk has digest %s", f.Digest, f.Chunks[0].Digest)
	}
	if len(f.Chunks) == 0 && f.Digest != emptyDigest {
		return fmt.Errorf("file %s: empty, but not the digest of no bytes", f.Digest)
	}
	return nil
}

// span returns the chunks f.Chunks[lo:hi] that cover [off, off+n), checking that they are
// contiguous and cover it.
func (f File) span(off, n int64) (lo, hi int, err error) {
	cs := f.Chunks
	end := off + n
	lo = sort.Search(len(cs), func(i int) bool { return cs[i].FileOffset+cs[i].Size > off })
	if lo == len(cs) || cs[lo].FileOffset > off {
		return 0, 0, fmt.Errorf("file %s: no chunk holds offset %d", f.Digest, off)
	}
	hi = lo
	for hi < len(cs) && cs[hi].FileOffset < end {
		c := cs[hi]
		if c.Size <= 0 || c.Size > format.MaxChunkSize || (hi > lo && c.FileOffset != cs[hi-1].FileOffset+cs[hi-1].Size) {
			return 0, 0, fmt.Errorf("file %s: chunk %d (%s) at %d+%d does not follow the one before", f.Digest, hi, c.Digest, c.FileOffset, c.Size)
		}
		hi++
	}
	if last := cs[hi-1]; last.FileOffset+last.Size < end {
		return 0, 0, fmt.Errorf("file %s: chunks end at %d, before %d", f.Digest, last.FileOffset+last.Size, end)
	}
	return lo, hi, nil
}

// overlap returns where chunk c and the file range [off, off+n) meet: p[pLo:pHi] is c's
// data from cOff on.
func overlap(c format.Chunk, off int64, n int) (pLo, pHi int, cOff int64) {
	lo := max(c.FileOffset, off)
	hi := min(c.FileOffset+c.Size, off+int64(n))
	return int(lo - off), int(hi - off), lo - c.FileOffset
}

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }
