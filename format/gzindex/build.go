package gzindex

import (
	"bytes"
	"compress/flate"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
)

// Build reads a gzip blob once, from start to end, and returns its index: a checkpoint at
// the first deflate block boundary after every spanSize compressed bytes (and before a
// span's output passes SoftSpanOut; never within 32 KiB of output of the last), each
// with the history its span's matches use and the sha256 of the span's output. Every
// member's CRC-32 and size are checked. Memory stays at a few hundred KiB plus the
// index. The checkpoints' windows go to windows, one after the other: the window blob,
// which a Reader reads by range. If out is not nil, it receives the uncompressed stream
// as it is decoded (the one pass can read the tar too); spanSize <= 0 means
// DefaultSpanSize.
func Build(r io.Reader, spanSize int64, out, windows io.Writer) (*Index, error) {
	if spanSize <= 0 {
		spanSize = DefaultSpanSize
	}
	if windows == nil {
		return nil, errors.New("gzindex: Build needs a writer for the window blob")
	}
	b := &builder{
		ix:      &Index{spanSize: spanSize},
		span:    sha256.New(),
		crc:     crc32.NewIEEE(),
		out:     out,
		windows: windows,
	}
	var err error
	if b.zw, err = flate.NewWriter(&b.zbuf, flate.DefaultCompression); err != nil {
		return nil, err
	}
	f := newInflater(nil, 0, r, b.write)
	f.refs = &b.refs
	for member := 0; member == 0 || !f.br.atEOF(); member++ {
		if err := b.member(f); err != nil {
			return nil, fmt.Errorf("gzindex: member %d (compressed byte %d): %w", member, f.br.bitPos()/8, err)
		}
	}
	b.ix.compressedSize = f.br.bitPos() / 8
	b.ix.size = b.total
	if err := b.finishWindow(); err != nil {
		return nil, err
	}
	switch n := len(b.ix.points); {
	case b.total == 0:
		b.ix.points = nil
	case b.ix.points[n-1].out == b.total:
		// A checkpoint with no output after it (at a final empty block, as
		// compress/flate ends a stream with): the span before it already has its digest.
		b.ix.points = b.ix.points[:n-1]
	default:
		b.endSpan()
	}
	return b.ix, nil
}

// builder is Build's state: the index so far and the running digests.
type builder struct {
	ix        *Index
	span      hash.Hash // sha256 of the current span's output
	crc       hash.Hash32
	out       io.Writer
	windows   io.Writer // the window blob
	total     int64     // output so far
	memberOut int64     // output of the current member
	zw        *flate.Writer
	zbuf      bytes.Buffer
	refs      refs
	window    []byte // the last checkpoint's window, until its span is decoded far enough to trim it
	pending   bool   // window is the last checkpoint's and not stored yet
}

// write is the inflater's sink.
func (b *builder) write(p []byte) error {
	b.span.Write(p)
	b.crc.Write(p)
	b.total += int64(len(p))
	b.memberOut += int64(len(p))
	if n := len(b.ix.points); n > 0 && b.total-b.ix.points[n-1].out > MaxSpanOut {
		return fmt.Errorf("a deflate block makes span %d longer than %d bytes", n-1, MaxSpanOut)
	}
	if b.out != nil {
		if _, err := b.out.Write(p); err != nil {
			return fmt.Errorf("writing uncompressed stream: %w", err)
		}
	}
	return nil
}

// member decodes one gzip member, checkpointing at block boundaries.
func (b *builder) member(f *inflater) error {
	if err := f.header(); err != nil {
		return err
	}
	b.crc.Reset()
	b.memberOut = 0
	for last := false; !last; {
		if err := b.checkpoint(f); err != nil {
			return err
		}
		var err error
		if last, err = f.block(); err != nil {
			return err
		}
	}
	crc, size, err := f.trailer()
	if err != nil {
		return err
	}
	if crc != b.crc.Sum32() {
		return corrupt("CRC-32 %08x, trailer says %08x", b.crc.Sum32(), crc)
	}
	if size != uint32(b.memberOut) {
		return corrupt("size %d (mod 2^32), trailer says %d", uint32(b.memberOut), size)
	}
	return nil
}

// checkpoint records a checkpoint at the block boundary f is at, if one is due: the
// first, then one a span size of input or SoftSpanOut of output after the last, provided
// the span has a window of output at least (so that no match after the new checkpoint
// reaches the last one's window).
func (b *builder) checkpoint(f *inflater) error {
	bit := f.br.bitPos()
	if n := len(b.ix.points); n > 0 {
		last := b.ix.points[n-1]
		if bit-last.bit > MaxSpanIn*8 {
			return fmt.Errorf("span %d longer than %d compressed bytes", n-1, MaxSpanIn)
		}
		if b.total-last.out < windowSize || bit-last.bit < b.ix.spanSize*8 && b.total-last.out < SoftSpanOut {
			return nil
		}
		b.endSpan()
		if err := b.finishWindow(); err != nil {
			return err
		}
	}
	w := f.window()
	b.window = append(b.window[:0], w...)
	b.refs.reset(b.total-int64(len(w)), b.total)
	b.pending = true
	b.ix.points = append(b.ix.points, checkpoint{bit: bit, out: b.total})
	return nil
}

// finishWindow stores the last checkpoint's window, trimmed to what its span uses, compressed.
func (b *builder) finishWindow() error {
	if !b.pending {
		return nil
	}
	b.pending = false
	w := b.refs.trim(b.window)
	p := &b.ix.points[len(b.ix.points)-1]
	p.windowLen = len(w)
	if len(w) == 0 {
		return nil
	}
	b.zbuf.Reset()
	b.zw.Reset(&b.zbuf)
	if _, err := b.zw.Write(w); err != nil {
		return err
	}
	if err := b.zw.Close(); err != nil {
		return err
	}
	p.winOff, p.winLen = b.ix.windowsSize, int64(b.zbuf.Len())
	p.winDigest = sha256.Sum256(b.zbuf.Bytes())
	if p.winLen > MaxWindowLen {
		return fmt.Errorf("gzindex: window of checkpoint %d compressed to %d bytes, over %d", len(b.ix.points)-1, p.winLen, MaxWindowLen)
	}
	if _, err := b.windows.Write(b.zbuf.Bytes()); err != nil {
		return fmt.Errorf("gzindex: writing window blob: %w", err)
	}
	b.ix.windowsSize += p.winLen
	return nil
}

// endSpan gives the last checkpoint its span's digest.
func (b *builder) endSpan() {
	p := &b.ix.points[len(b.ix.points)-1]
	b.span.Sum(p.digest[:0])
	b.span.Reset()
}
