package zstdindex

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"io"

	"github.com/klauspost/compress/zstd"
)

// Build reads a zstd blob once, from start to end, and returns its index: a checkpoint
// at the first frame or block boundary after every spanSize compressed bytes (or
// SoftSpanOut bytes of output), each with what a stock decoder needs to resume there,
// and the sha256 of its span's output. The windows of checkpoints inside frames go to
// windows, compressed, one after the other: the index records where (the window blob).
// Every frame's checksum is checked. Memory stays at about twice the largest frame
// window (one and a half, plus a span's output while its window is pending) plus the
// index. If out is not nil, it receives the uncompressed stream as it is decoded;
// spanSize <= 0 means DefaultSpanSize.
func Build(r io.Reader, spanSize int64, out, windows io.Writer) (*Index, error) {
	if spanSize <= 0 {
		spanSize = DefaultSpanSize
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return nil, err
	}
	defer enc.Close()
	b := &builder{
		ix:      &Index{spanSize: spanSize},
		br:      bufio.NewReaderSize(r, 1<<16),
		span:    sha256.New(),
		xx:      new(xxh64),
		out:     out,
		windows: windows,
		enc:     enc,
	}
	for frame := 0; ; frame++ {
		more, err := b.frame()
		if err != nil {
			return nil, fmt.Errorf("zstdindex: frame %d (compressed byte %d): %w", frame, b.in, err)
		}
		if !more {
			break
		}
	}
	return b.finish()
}

// builder is Build's state: the index so far, the frame being decoded, the running
// digests and the last checkpoint's window, until its span is decoded.
type builder struct {
	ix      *Index
	br      *bufio.Reader
	in      int64 // compressed bytes read
	span    hash.Hash
	xx      *xxh64
	out     io.Writer
	windows io.Writer
	enc     *zstd.Encoder
	total   int64 // output so far
	f       frameDecoder
	buf     []byte

	pending     bool   // the last checkpoint's window is not stored yet
	window      []byte // its window, the frame's output before it, once its span is decoded
	windowStart int64  // frame position of window[0]
	windowLen   int
	used        []uint64
	winOff      int64 // window blob bytes written
}

// frame decodes the frame or skippable frame at b.in; it returns false at the blob's end.
func (b *builder) frame() (bool, error) {
	if err := b.checkpoint(true); err != nil {
		return false, err
	}
	head, err := b.br.Peek(maxFrameHeader)
	if len(head) == 0 && err == io.EOF {
		return false, nil
	}
	if len(head) < 8 {
		return false, fmt.Errorf("%w: %d bytes at the end", errFrame, len(head))
	}
	if binary.LittleEndian.Uint32(head)&skippableMask == skippableMagic {
		n := int64(binary.LittleEndian.Uint32(head[4:]))
		if _, err := b.skip(8 + n); err != nil {
			return false, fmt.Errorf("skippable frame: %w", err)
		}
		return true, nil
	}
	h, err := parseFrameHeader(head)
	if err != nil {
		return false, err
	}
	if h.window > MaxFrameWindow {
		return false, fmt.Errorf("%w: window of %d bytes, over the limit of %d", errFrame, h.window, MaxFrameWindow)
	}
	if _, err := b.skip(int64(h.len)); err != nil {
		return false, err
	}
	b.f.reset(h)
	b.xx.Reset()
	for first, last := true, false; !last; first = false {
		if !first {
			if err := b.checkpoint(false); err != nil {
				return false, err
			}
		}
		if last, err = b.block(); err != nil {
			return false, err
		}
	}
	// No match of a later frame reads this one: store a pending window now, while
	// the frame's history holds it.
	if err := b.finishWindow(); err != nil {
		return false, err
	}
	if h.contentSize >= 0 && h.contentSize != b.f.out {
		return false, fmt.Errorf("%w: %d bytes of output, header says %d", errFrame, b.f.out, h.contentSize)
	}
	if h.checksum {
		sum, err := b.read(4)
		if err != nil {
			return false, fmt.Errorf("checksum: %w", err)
		}
		if got := uint32(b.xx.Sum64()); binary.LittleEndian.Uint32(sum) != got {
			return false, fmt.Errorf("%w: checksum %08x, frame says %08x", errFrame, got, binary.LittleEndian.Uint32(sum))
		}
	}
	return true, nil
}

// block decodes the block at b.in and emits its output.
func (b *builder) block() (last bool, err error) {
	hb, err := b.read(blockHeaderLen)
	if err != nil {
		return false, err
	}
	h, err := parseBlockHeader(hb)
	if err != nil {
		return false, err
	}
	c, err := b.read(h.contentLen())
	if err != nil {
		return false, err
	}
	out, err := b.f.block(h, c)
	if err != nil {
		return false, fmt.Errorf("block at compressed byte %d: %w", b.in-int64(len(c)+blockHeaderLen), err)
	}
	b.xx.Write(out)
	b.span.Write(out)
	b.total += int64(len(out))
	if n := len(b.ix.points); n > 0 && b.total-b.ix.points[n-1].out > MaxSpanOut {
		return false, fmt.Errorf("a block makes span %d longer than %d bytes", n-1, MaxSpanOut)
	}
	if b.out != nil {
		if _, err := b.out.Write(out); err != nil {
			return false, fmt.Errorf("writing uncompressed stream: %w", err)
		}
	}
	return h.last, nil
}

// read returns the next n compressed bytes (valid until the next read).
func (b *builder) read(n int) ([]byte, error) {
	if cap(b.buf) < n {
		b.buf = make([]byte, n, max(n, maxBlock))
	}
	p := b.buf[:n]
	if _, err := io.ReadFull(b.br, p); err != nil {
		return nil, unexpected(err)
	}
	b.in += int64(n)
	return p, nil
}

func (b *builder) skip(n int64) (int64, error) {
	k, err := io.CopyN(io.Discard, b.br, n)
	b.in += k
	return k, unexpected(err)
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// checkpoint records a checkpoint at the boundary b.in is at, if one is due and its
// state can be written as a dictionary: a span size of input or SoftSpanOut of output
// after the last, with output since.
func (b *builder) checkpoint(frameStart bool) error {
	if n := len(b.ix.points); n > 0 {
		last := b.ix.points[n-1]
		if b.in-last.in > MaxSpanIn {
			return fmt.Errorf("span %d longer than %d compressed bytes", n-1, MaxSpanIn)
		}
		if b.total == last.out || b.in-last.in < b.ix.spanSize && b.total-last.out < SoftSpanOut {
			return nil
		}
	}
	p := checkpoint{in: b.in, out: b.total}
	if !frameStart {
		if b.f.hdr.window > MaxWindow || !b.f.expressible() {
			return nil
		}
		p.mid = true
		p.window = b.f.hdr.window
		p.checksum = b.f.hdr.checksum
		p.entropy = b.f.entropy()
		for i, r := range b.f.reps {
			p.reps[i] = uint32(r)
		}
	}
	if len(b.ix.points) > 0 {
		b.endSpan()
		if err := b.finishWindow(); err != nil {
			return err
		}
	}
	b.ix.points = append(b.ix.points, p)
	if p.mid {
		// The window stays in the frame decoder's history (pinned) until the span is
		// decoded: finishWindow reads the bytes the span's matches used from there.
		b.windowLen = int(min(b.f.hdr.window, b.f.out))
		b.windowStart = b.f.out - int64(b.windowLen)
		b.f.pin, b.f.pinned = b.windowStart, true
		words := (b.windowLen + 63) / 64
		if cap(b.used) < words {
			b.used = make([]uint64, words)
		}
		b.used = b.used[:words]
		clear(b.used)
		b.pending = true
		b.f.ref, b.f.refBelow = b.markUsed, b.f.out
	}
	return nil
}

// markUsed records that the current span's matches read the window's [from, to).
func (b *builder) markUsed(from, to int64) {
	for i := max(from, b.windowStart) - b.windowStart; i < to-b.windowStart; {
		if i%64 == 0 && to-b.windowStart-i >= 64 {
			b.used[i/64] = ^uint64(0)
			i += 64
			continue
		}
		b.used[i/64] |= 1 << (i % 64)
		i++
	}
}

// usedAt reports whether the current span's matches read window byte i.
func (b *builder) usedAt(i int) bool { return b.used[i/64]&(1<<(i%64)) != 0 }

// nextRun returns the next run [i, j) of window bytes the span's matches read, from i
// on; i == len(b.window) if there is none.
func (b *builder) nextRun(i int) (int, int) {
	for i < len(b.window) && !b.usedAt(i) {
		if i%64 == 0 && b.used[i/64] == 0 {
			i += 64
		} else {
			i++
		}
	}
	i = min(i, len(b.window))
	j := i
	for j < len(b.window) && b.usedAt(j) {
		if j%64 == 0 && b.used[j/64] == ^uint64(0) {
			j += 64
		} else {
			j++
		}
	}
	return i, min(j, len(b.window))
}

// finishWindow stores the last checkpoint's window: from the first byte its span's
// matches read (but as long as its longest repeat offset, which a dictionary requires),
// as the runs of bytes they read (sparseWindow), compressed.
func (b *builder) finishWindow() error {
	if !b.pending {
		return nil
	}
	b.pending = false
	b.f.ref = nil
	b.f.pinned = false
	from := b.windowStart - b.f.histStart
	b.window = b.f.hist[from : from+int64(b.windowLen)]
	p := &b.ix.points[len(b.ix.points)-1]
	first, _ := b.nextRun(0)
	n := int64(len(b.window) - first)
	for _, r := range p.reps {
		n = max(n, int64(r))
	}
	var hdr, data []byte
	runs, end := 0, first // end: window index where the last run ended
	for i, j := b.nextRun(first); i < len(b.window); i, j = b.nextRun(j) {
		hdr = binary.AppendUvarint(hdr, uint64(i-end))
		hdr = binary.AppendUvarint(hdr, uint64(j-i))
		data = append(data, b.window[i:j]...)
		runs, end = runs+1, j
	}
	// The content starts n bytes before the window's end: the first run at
	// first-(len(window)-n) (the runs' first gap is from first).
	lead := uint64(n - int64(len(b.window)-first))
	sparse := binary.AppendUvarint(binary.AppendUvarint(nil, lead), uint64(runs))
	sparse = append(append(sparse, hdr...), data...)
	z := b.enc.EncodeAll(sparse, nil)
	if _, err := b.windows.Write(z); err != nil {
		return fmt.Errorf("writing windows: %w", err)
	}
	p.content, p.winOff, p.winLen = n, b.winOff, int64(len(z))
	b.winOff += int64(len(z))
	return nil
}

// endSpan gives the last checkpoint its span's digest.
func (b *builder) endSpan() {
	p := &b.ix.points[len(b.ix.points)-1]
	b.span.Sum(p.digest[:0])
	b.span.Reset()
}

// finish ends the last span and returns the index.
func (b *builder) finish() (*Index, error) {
	ix := b.ix
	ix.compressedSize, ix.size = b.in, b.total
	switch n := len(ix.points); {
	case n == 0:
	case ix.points[n-1].out == b.total:
		// A checkpoint with no output after it (before trailing empty frames): the span
		// before it already has its digest.
		b.pending = false
		ix.points = ix.points[:n-1]
	default:
		b.endSpan()
		if err := b.finishWindow(); err != nil {
			return nil, fmt.Errorf("zstdindex: %w", err)
		}
	}
	ix.windowsSize = b.winOff
	if b.total == 0 {
		ix.points = nil
	}
	return ix, nil
}

// expressible reports whether the state in force can be written as a dictionary: not
// with an RLE-mode table (a later block may repeat it; decoders refuse a distribution
// of one symbol, the only way to write it).
func (f *frameDecoder) expressible() bool {
	for _, ts := range f.tables {
		if ts.set && ts.mode == modeRLE {
			return false
		}
	}
	return true
}

// entropy returns the dictionary's entropy section for the tables in force: the Huffman
// table, then the offsets, match lengths and literals lengths tables (a predefined one written out).
func (f *frameDecoder) entropy() []byte {
	b := append([]byte(nil), f.huff...)
	if f.huff == nil {
		b = append(b, noHuffman...)
	}
	for _, t := range []int{tableOF, tableML, tableLL} {
		switch ts := f.tables[t]; {
		case !ts.set || ts.mode == modePredefined:
			b = appendDistribution(b, predefined[t])
		default:
			b = append(b, ts.desc...)
		}
	}
	return b
}

// noHuffman is the Huffman table written into a dictionary when no table is in force
// (a block that reuses one would be corrupt): two symbols of one bit each.
var noHuffman = []byte{128, 0x10}
