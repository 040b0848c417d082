package zstdindex

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The frame and block layout of RFC 8878 section 3.1.
const (
	frameMagic     = 0xFD2FB528
	skippableMagic = 0x184D2A50 // to 0x184D2A5F: the low four bits are free
	skippableMask  = 0xFFFFFFF0
	// maxFrameHeader is the longest frame header: magic, descriptor, window
	// descriptor, a 4-byte dictionary ID and an 8-byte content size.
	maxFrameHeader = 4 + 1 + 1 + 4 + 8
	blockHeaderLen = 3
	// maxBlock is the largest block content and output the format allows.
	maxBlock  = 128 << 10
	minWindow = 1 << 10
)

// Block types (RFC 8878 3.1.1.2).
const (
	blockRaw = iota
	blockRLE
	blockCompressed
	blockReserved
)

var errFrame = errors.New("bad frame")

// frameHeader is what a frame header says that decoding depends on.
type frameHeader struct {
	len         int   // the header's length, magic included
	window      int64 // the window size: how far back matches may reach
	checksum    bool  // the last block is followed by a 4-byte checksum
	contentSize int64 // -1 if not given
	dictID      uint32
}

// parseFrameHeader parses the frame header at the start of b, which holds at least
// maxFrameHeader bytes or the rest of the blob.
func parseFrameHeader(b []byte) (frameHeader, error) {
	var h frameHeader
	if len(b) < 5 || binary.LittleEndian.Uint32(b) != frameMagic {
		return h, fmt.Errorf("%w: no frame magic", errFrame)
	}
	fhd := b[4]
	if fhd&0x08 != 0 {
		return h, fmt.Errorf("%w: reserved descriptor bit set", errFrame)
	}
	single := fhd&0x20 != 0
	h.checksum = fhd&0x04 != 0
	dictLen := [4]int{0, 1, 2, 4}[fhd&3]
	fcsLen := [4]int{0, 2, 4, 8}[fhd>>6]
	if fcsLen == 0 && single {
		fcsLen = 1
	}
	h.len = 5 + dictLen + fcsLen
	if !single {
		h.len++
	}
	if len(b) < h.len {
		return h, fmt.Errorf("%w: truncated header", errFrame)
	}
	p := b[5:]
	if !single {
		h.window = windowSize(p[0])
		p = p[1:]
	}
	for i := range dictLen {
		h.dictID |= uint32(p[i]) << (8 * i)
	}
	p = p[dictLen:]
	h.contentSize = -1
	switch fcsLen {
	case 1:
		h.contentSize = int64(p[0])
	case 2:
		h.contentSize = int64(binary.LittleEndian.Uint16(p)) + 256
	case 4:
		h.contentSize = int64(binary.LittleEndian.Uint32(p))
	case 8:
		v := binary.LittleEndian.Uint64(p)
		if v > 1<<62 {
			return h, fmt.Errorf("%w: content size %d", errFrame, v)
		}
		h.contentSize = int64(v)
	}
	if single {
		h.window = max(h.contentSize, minWindow)
	}
	if h.window < minWindow {
		return h, fmt.Errorf("%w: window of %d bytes", errFrame, h.window)
	}
	if h.dictID != 0 {
		return h, fmt.Errorf("%w: frame names dictionary %d, which this package cannot have", errFrame, h.dictID)
	}
	return h, nil
}

// windowDescriptor returns the smallest window descriptor for at least w bytes.
func windowDescriptor(w int64) byte {
	for d := byte(0); d < 255; d++ {
		if windowSize(d) >= w {
			return d
		}
	}
	return 255
}

// windowSize is the window a descriptor declares.
func windowSize(desc byte) int64 {
	base := int64(1) << (10 + desc>>3)
	return base + base/8*int64(desc&7)
}

// blockHeader is a block's header (RFC 8878 3.1.1.2).
type blockHeader struct {
	last bool
	typ  int
	size int // of its content; for an RLE block, of its output (its content is one byte)
}

func parseBlockHeader(b []byte) (blockHeader, error) {
	v := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16
	h := blockHeader{last: v&1 != 0, typ: int(v>>1) & 3, size: int(v >> 3)}
	if h.typ == blockReserved {
		return h, fmt.Errorf("%w: reserved block type", errFrame)
	}
	if h.size > maxBlock {
		return h, fmt.Errorf("%w: block of %d bytes", errFrame, h.size)
	}
	return h, nil
}

// contentLen is the length of the block's content in the blob.
func (h blockHeader) contentLen() int {
	if h.typ == blockRLE {
		return 1
	}
	return h.size
}
