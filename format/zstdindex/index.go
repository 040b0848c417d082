package zstdindex

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
	DefaultSpanSize = 64 << 10
	// SoftSpanOut is the output after which Build checkpoints at the next boundary
	// whatever the compressed distance, so that a highly compressed span stays small.
	SoftSpanOut = 32 << 20
	// MaxSpanOut bounds a span's output, which a reader holds in memory to verify before
	// serving: Build fails on a blob with a span that long, Decode refuses an index that
	// claims one.
	MaxSpanOut = 64 << 20
	// MaxSpanIn bounds a span's compressed bytes, which a reader fetches whole.
	MaxSpanIn = 2 * MaxSpanOut
	// MaxWindow is the largest frame window inside which Build checkpoints: a reader
	// of a span there holds up to that much of window twice (the dictionary and the
	// decoder's history). Frames with larger windows are checkpointed at their start only.
	MaxWindow = 8 << 20
	// MaxFrameWindow is the largest frame window Build and a Reader accept (zstd
	// --long's default is 128 MiB).
	MaxFrameWindow = 128 << 20
	// MaxSize bounds an encoded index Decode accepts.
	MaxSize = 64 << 20
	// MemFactor and MemSlack bound what Decode allocates: MemFactor times the input's
	// length plus MemSlack. Windows are not in the index: a reader fetches one by range
	// from the window blob when it needs it.
	MemFactor = 4
	MemSlack  = 4 << 10
)

// Version is the encoding Encode writes and Decode reads.
const Version = 1

// magic starts every encoded index; a big-endian uint16 version follows.
const magic = "LZPZSIDX"

// minPointLen is the shortest encoding of a checkpoint: three one-byte varints and a digest.
const minPointLen = 3 + sha256.Size

// ErrCorruptIndex is wrapped by every error of Decode.
var ErrCorruptIndex = errors.New("zstdindex: corrupt index")

// Index locates checkpoints in a zstd blob: places where a decoder can resume, each with
// the state it needs, and the digest of the span of output up to the next one.
type Index struct {
	spanSize       int64
	compressedSize int64
	size           int64
	windowsSize    int64
	points         []checkpoint
}

// checkpoint is a frame start or a block boundary inside a frame (mid).
type checkpoint struct {
	in  int64 // its first byte in the compressed blob
	out int64 // its first output byte in the uncompressed stream
	mid bool
	// Inside a frame: the frame's window size and checksum flag, the dictionary's
	// entropy tables and repeat offsets, the length of its content (the window) and
	// where the window is in the window blob, compressed.
	window         int64
	checksum       bool
	entropy        []byte
	reps           [3]uint32
	content        int64
	winOff, winLen int64
	digest         [sha256.Size]byte // sha256 of the span's output
}

// Span is one span of an index: its output range and the compressed bytes that hold it.
type Span struct {
	// Off and Len are the span's range in the uncompressed stream.
	Off, Len int64
	// CompOff and CompLen are the compressed bytes a reader fetches to decode the span.
	CompOff, CompLen int64
	// WindowOff and WindowLen are its window's bytes in the window blob, which a reader
	// fetches when it does not hold the output before the span (none at a frame start).
	WindowOff, WindowLen int64
	// Digest is the sha256 of the span's output.
	Digest [sha256.Size]byte
}

// Size returns the length of the uncompressed stream.
func (ix *Index) Size() int64 { return ix.size }

// CompressedSize returns the length of the zstd blob.
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
		end, compEnd = ix.points[i+1].out, ix.points[i+1].in
	}
	return Span{Off: p.out, Len: end - p.out, CompOff: p.in, CompLen: compEnd - p.in,
		WindowOff: p.winOff, WindowLen: p.winLen, Digest: p.digest}
}

// SpanAt returns the index of the span holding uncompressed offset off, which must be
// in [0, Size()).
func (ix *Index) SpanAt(off int64) int {
	return sort.Search(len(ix.points), func(i int) bool { return ix.points[i].out > off }) - 1
}

// Encode returns the index's binary form: the magic and version, then uvarints (span
// size, compressed size, size, window blob size, checkpoint count), then per checkpoint
// the uvarints of its compressed and output offsets (deltas from the previous
// checkpoint's) and its flags (1: inside a frame, 2: the frame has a checksum); inside a
// frame, the uvarints of the frame's window size, the entropy section's length, the
// entropy section, the three repeat offsets, the window's length, offset and compressed
// length in the window blob; then its span's sha256. Last, the sha256 of everything
// before it.
func (ix *Index) Encode() []byte { return wire.Seal(ix.encodeBody()) }

func (ix *Index) encodeBody() []byte {
	b := make([]byte, 0, 64+len(ix.points)*(minPointLen+64))
	b = wire.AppendHeader(b, magic, Version)
	b = wire.AppendInts(b, ix.spanSize, ix.compressedSize, ix.size, ix.windowsSize, int64(len(ix.points)))
	var in, out int64
	for _, p := range ix.points {
		b = wire.AppendInts(b, p.in-in, p.out-out)
		flags := 0
		if p.mid {
			flags |= 1
		}
		if p.checksum {
			flags |= 2
		}
		b = append(b, byte(flags))
		if p.mid {
			b = binary.AppendUvarint(b, uint64(p.window))
			b = binary.AppendUvarint(b, uint64(len(p.entropy)))
			b = append(b, p.entropy...)
			for _, r := range p.reps {
				b = binary.AppendUvarint(b, uint64(r))
			}
			b = wire.AppendInts(b, p.content, p.winOff, p.winLen)
		}
		b = append(b, p.digest[:]...)
		in, out = p.in, p.out
	}
	return b
}

// Decode parses an encoded index. It checks the trailing digest, then every bound a
// reader relies on (entropy sections parse); it allocates at most
// MemFactor*len(data)+MemSlack bytes, whatever data claims.
func Decode(data []byte) (*Index, error) {
	body, err := wire.Open(data, MaxSize, ErrCorruptIndex)
	if err != nil {
		return nil, err
	}
	return decodeBody(body)
}

// decodeBody parses an index without its trailing digest.
func decodeBody(data []byte) (*Index, error) {
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
	norm := make([]int16, 0, 64) // reused by the entropy sections' parses
	for i := range ix.points {
		if err := point(d, ix, i, norm); err != nil {
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
func point(d *wire.Reader, ix *Index, i int, norm []int16) error {
	p := &ix.points[i]
	p.in, p.out = d.Int(), d.Int()
	if i > 0 {
		p.in += ix.points[i-1].in
		p.out += ix.points[i-1].out
	}
	flags := d.Bytes(1)
	if d.Err != nil {
		return d.Err
	}
	if flags[0] > 3 || flags[0] == 2 {
		return fmt.Errorf("%w: checkpoint %d: flags %#x", ErrCorruptIndex, i, flags[0])
	}
	p.mid, p.checksum = flags[0]&1 != 0, flags[0]&2 != 0
	if p.mid {
		p.window = d.Int()
		p.entropy = d.Bytes(d.Int())
		for k := range p.reps {
			p.reps[k] = uint32(min(d.Int(), 1<<32-1))
		}
		p.content, p.winOff, p.winLen = d.Int(), d.Int(), d.Int()
		if d.Err != nil {
			return d.Err
		}
		if err := p.checkMid(ix.windowsSize, norm); err != nil {
			return fmt.Errorf("%w: checkpoint %d: %v", ErrCorruptIndex, i, err)
		}
	}
	copy(p.digest[:], d.Bytes(sha256.Size))
	return d.Err
}

// checkMid checks a checkpoint inside a frame: its window and dictionary fit the limits
// and parse.
func (p *checkpoint) checkMid(windowsSize int64, norm []int16) error {
	if p.window < minWindow || p.window > MaxWindow {
		return fmt.Errorf("frame window of %d bytes", p.window)
	}
	if p.content > p.window || p.winLen <= 0 || p.winOff > windowsSize-p.winLen {
		return fmt.Errorf("window of %d bytes at %d+%d in a window blob of %d", p.content, p.winOff, p.winLen, windowsSize)
	}
	for _, r := range p.reps {
		if r == 0 || int64(r) > p.content {
			return fmt.Errorf("repeat offset %d with a window of %d bytes", r, p.content)
		}
	}
	return checkEntropy(p.entropy, norm)
}

// checkEntropy checks that b is exactly a dictionary's entropy section: a Huffman table
// description and the three FSE table descriptions.
func checkEntropy(b []byte, norm []int16) error {
	if len(b) < 1 {
		return fmt.Errorf("%w: no Huffman table", errTable)
	}
	n := 1 + int(b[0])
	if b[0] >= 128 {
		n = 1 + (int(b[0])-127+1)/2
	}
	if n > len(b) {
		return fmt.Errorf("%w: Huffman table truncated", errTable)
	}
	b = b[n:]
	for _, t := range []int{tableOF, tableML, tableLL} {
		_, n, err := readDistribution(b, t, norm)
		if err != nil {
			return err
		}
		b = b[n:]
	}
	if len(b) != 0 {
		return fmt.Errorf("%w: %d bytes after the tables", errTable, len(b))
	}
	return nil
}

// check verifies what readers rely on: checkpoints in order within the blob, spans
// within the limits.
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
	for i, p := range ix.points {
		if i == 0 && (p.out != 0 || p.mid) {
			return bad("first checkpoint at output offset %d", p.out)
		}
		if i > 0 && (p.out <= ix.points[i-1].out || p.in <= ix.points[i-1].in) {
			return bad("checkpoint %d out of order", i)
		}
		if p.in >= ix.compressedSize || p.out >= ix.size {
			return bad("checkpoint %d past the end", i)
		}
		if s := ix.Span(i); s.Len > MaxSpanOut || s.CompLen > MaxSpanIn {
			return bad("span %d of %d bytes in %d, over the limits of %d in %d", i, s.Len, s.CompLen, MaxSpanOut, MaxSpanIn)
		}
	}
	return nil
}
