package gzindex

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"

	"lazypull/format/internal/wire"
)

const (
	// DefaultSpanSize is the compressed distance between checkpoints Build uses when
	// given none (docs/benchmarks.md has the measurement behind it).
	DefaultSpanSize = 32 << 10
	// SoftSpanOut is the output after which Build checkpoints at the next block boundary
	// whatever the compressed distance, so that a highly compressed span stays small.
	SoftSpanOut = 32 << 20
	// MaxSpanOut bounds a span's output, which a reader holds in memory to verify before
	// serving: Build fails on a stream with a block that long (zlib's are far shorter),
	// Decode refuses an index that claims one.
	MaxSpanOut = 64 << 20
	// MaxSpanIn bounds a span's compressed bytes, which a reader fetches whole: Build
	// fails on a stream with a span that long (only empty members can make one), Decode
	// refuses an index that claims one.
	MaxSpanIn = 2 * MaxSpanOut
	// MaxSize bounds an encoded index Decode accepts: 64 MiB, the index of a layer of
	// tens of GiB checkpointed every 32 KiB (each checkpoint takes 70-80 bytes; its
	// window, 1-2 KiB trimmed and compressed, is in the window blob).
	MaxSize = 64 << 20
	// MaxWindowLen bounds a window's compressed bytes in the window blob (32 KiB raw
	// deflate of incompressible bytes is a few bytes longer than 32 KiB).
	MaxWindowLen = windowSize + 1024
	// MemFactor and MemSlack bound what Decode allocates: MemFactor times the input's
	// length plus MemSlack. Windows are not in the index: a reader fetches one by range
	// from the window blob when it needs it.
	MemFactor = 4
	MemSlack  = 4 << 10
)

// Version is the encoding Encode writes and Decode reads. Version 1 held the windows
// inline; Decode refuses it with ErrVersion.
const Version = 2

// ErrVersion is wrapped by Decode's error for an index of another version (with
// ErrCorruptIndex).
var ErrVersion = errors.New("index of another version")

// magic starts every encoded index; a big-endian uint16 version follows.
const magic = "LZPGZIDX"

// minPointLen is the shortest encoding of a checkpoint: four one-byte varints and a digest.
const minPointLen = 4 + sha256.Size

// ErrCorruptIndex is wrapped by every error of Decode.
var ErrCorruptIndex = errors.New("gzindex: corrupt index")

// Index locates checkpoints in a gzip blob: places where inflating can resume, each with
// the history it needs, and the digest of the span of output up to the next one.
type Index struct {
	spanSize       int64
	compressedSize int64
	size           int64
	windowsSize    int64
	points         []checkpoint
}

// checkpoint is a deflate block boundary.
type checkpoint struct {
	bit       int64 // the block's first bit in the compressed blob
	out       int64 // offset of its first output byte in the uncompressed stream
	windowLen int   // length of the history before it (<= 32 KiB; less after a member start)
	// The window's raw-deflate-compressed bytes in the window blob and their sha256;
	// winOff is the sum of the windows' lengths before it (not encoded).
	winOff, winLen int64
	winDigest      [sha256.Size]byte
	digest         [sha256.Size]byte // sha256 of the span's output: up to the next checkpoint or the end
}

// Span is one span of an index: its output range and the compressed bytes that hold it.
type Span struct {
	// Off and Len are the span's range in the uncompressed stream.
	Off, Len int64
	// CompOff and CompLen are the compressed bytes a reader fetches to decode the span:
	// from the byte holding its first bit to the byte holding the next span's first bit
	// (to the blob's end for the last span).
	CompOff, CompLen int64
	// WindowOff and WindowLen are its window's bytes in the window blob, which a reader
	// fetches when it does not hold the output before the span (none at a member start).
	WindowOff, WindowLen int64
	// Digest is the sha256 of the span's output.
	Digest [sha256.Size]byte
}

// Size returns the length of the uncompressed stream.
func (ix *Index) Size() int64 { return ix.size }

// CompressedSize returns the length of the gzip blob.
func (ix *Index) CompressedSize() int64 { return ix.compressedSize }

// WindowsSize returns the length of the window blob.
func (ix *Index) WindowsSize() int64 { return ix.windowsSize }

// SpanSize returns the compressed distance between checkpoints the index was built with.
func (ix *Index) SpanSize() int64 { return ix.spanSize }

// NumSpans returns the number of spans.
func (ix *Index) NumSpans() int { return len(ix.points) }

// Span returns span i.
func (ix *Index) Span(i int) Span {
	p := ix.points[i]
	end, compEnd := ix.size, ix.compressedSize
	if i+1 < len(ix.points) {
		next := ix.points[i+1]
		end, compEnd = next.out, (next.bit+7)/8
	}
	return Span{Off: p.out, Len: end - p.out, CompOff: p.bit / 8, CompLen: compEnd - p.bit/8,
		WindowOff: p.winOff, WindowLen: p.winLen, Digest: p.digest}
}

// SpanAt returns the index of the span holding uncompressed offset off, which must be
// in [0, Size()).
func (ix *Index) SpanAt(off int64) int {
	return sort.Search(len(ix.points), func(i int) bool { return ix.points[i].out > off }) - 1
}

// Encode returns the index's binary form: the magic and version, then uvarints (span
// size, compressed size, size, window blob size, checkpoint count), then per checkpoint
// the uvarints of its bit and output offsets (deltas from the previous checkpoint's), its
// window's length and compressed length (its bytes in the window blob follow the previous
// window's), its span's sha256, and the sha256 of its compressed window if it has one;
// last, the sha256 of everything before it.
func (ix *Index) Encode() []byte { return wire.Seal(ix.encodeBody()) }

func (ix *Index) encodeBody() []byte {
	b := make([]byte, 0, 64+len(ix.points)*(minPointLen+16))
	b = wire.AppendHeader(b, magic, Version)
	b = wire.AppendInts(b, ix.spanSize, ix.compressedSize, ix.size, ix.windowsSize, int64(len(ix.points)))
	var bit, out int64
	for _, p := range ix.points {
		b = wire.AppendInts(b, p.bit-bit, p.out-out, int64(p.windowLen), p.winLen)
		b = append(b, p.digest[:]...)
		if p.winLen > 0 {
			b = append(b, p.winDigest[:]...)
		}
		bit, out = p.bit, p.out
	}
	return b
}

// Decode parses an encoded index. It checks the trailing digest, then every bound a
// reader relies on; it allocates at most MemFactor*len(data)+MemSlack bytes, whatever
// data claims.
func Decode(data []byte) (*Index, error) {
	body, err := wire.Open(data, MaxSize, ErrCorruptIndex)
	if err != nil {
		return nil, err
	}
	return decodeBody(body)
}

// decodeBody parses an index without its trailing digest.
func decodeBody(data []byte) (*Index, error) {
	if len(data) >= len(magic)+2 && string(data[:len(magic)]) == magic {
		if v := binary.BigEndian.Uint16(data[len(magic):]); v != Version {
			return nil, fmt.Errorf("%w: %w: version %d, this reader reads version %d only (version 1 held the windows inline; rebuild the index with lazypull index)", ErrCorruptIndex, ErrVersion, v, Version)
		}
	}
	d, err := wire.NewReader(data, magic, Version, ErrCorruptIndex)
	if err != nil {
		return nil, err
	}
	ix := &Index{spanSize: d.Int(), compressedSize: d.Int(), size: d.Int(), windowsSize: d.Int()}
	n := d.Count("checkpoints", minPointLen)
	if d.Err != nil {
		return nil, d.Err
	}
	ix.points = make([]checkpoint, n)
	for i := range ix.points {
		if err := point(d, ix, i); err != nil {
			return nil, err
		}
	}
	if err := d.End("checkpoint"); err != nil {
		return nil, err
	}
	if err := ix.check(); err != nil {
		return nil, err
	}
	return ix, nil
}

// point reads checkpoint i.
func point(d *wire.Reader, ix *Index, i int) error {
	p := &ix.points[i]
	p.bit, p.out = d.Int(), d.Int()
	if i > 0 {
		prev := ix.points[i-1]
		p.bit += prev.bit
		p.out += prev.out
	}
	wl, cl := d.Int(), d.Int()
	if d.Err != nil {
		return d.Err
	}
	if i > 0 {
		p.winOff = ix.points[i-1].winOff + ix.points[i-1].winLen
	}
	if wl > windowSize || cl > MaxWindowLen || (wl == 0) != (cl == 0) || cl > ix.windowsSize-p.winOff {
		return fmt.Errorf("%w: checkpoint %d: window of %d bytes in %d at %d in a window blob of %d", ErrCorruptIndex, i, wl, cl, p.winOff, ix.windowsSize)
	}
	p.windowLen, p.winLen = int(wl), cl
	copy(p.digest[:], d.Bytes(sha256.Size))
	if cl > 0 {
		copy(p.winDigest[:], d.Bytes(sha256.Size))
	}
	if d.Err != nil {
		return fmt.Errorf("checkpoint %d: %w", i, d.Err)
	}
	return nil
}

// check verifies what readers rely on: checkpoints in order within the blob, spans of
// output within MaxSpanOut, windows no longer than the output before them.
func (ix *Index) check() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrCorruptIndex, fmt.Sprintf(format, args...))
	}
	if ix.spanSize <= 0 {
		return bad("span size %d", ix.spanSize)
	}
	if (ix.size == 0) != (len(ix.points) == 0) {
		return bad("%d checkpoints for %d bytes", len(ix.points), ix.size)
	}
	if n := len(ix.points); n > 0 && ix.points[n-1].winOff+ix.points[n-1].winLen != ix.windowsSize || n == 0 && ix.windowsSize != 0 {
		return bad("windows do not fill the window blob of %d bytes", ix.windowsSize)
	}
	for i, p := range ix.points {
		if i == 0 && p.out != 0 {
			return bad("first checkpoint at output offset %d", p.out)
		}
		if i > 0 && (p.out <= ix.points[i-1].out || p.bit <= ix.points[i-1].bit) {
			return bad("checkpoint %d out of order", i)
		}
		if p.bit >= ix.compressedSize*8 || p.out >= ix.size {
			return bad("checkpoint %d past the end", i)
		}
		if int64(p.windowLen) > p.out {
			return bad("checkpoint %d: window of %d bytes at output offset %d", i, p.windowLen, p.out)
		}
		if s := ix.Span(i); s.Len > MaxSpanOut || s.CompLen > MaxSpanIn {
			return bad("span %d of %d bytes in %d, over the limits of %d in %d", i, s.Len, s.CompLen, MaxSpanOut, MaxSpanIn)
		}
	}
	return nil
}
