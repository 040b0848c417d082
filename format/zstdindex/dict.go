package zstdindex

import (
	"encoding/binary"
	"fmt"
)

// dictMagic starts a zstd dictionary (RFC 8878 section 5).
const dictMagic = 0xEC30A437

// dictID is the ID of the dictionary a span's first frame names.
const dictID = 1

// dictionary returns checkpoint p's state as a zstd dictionary: its entropy tables and
// repeat offsets, and content, the window: the frame's output before p (at least as
// far back as the span's matches reach).
func (p *checkpoint) dictionary(content []byte) []byte {
	b := make([]byte, 0, 8+len(p.entropy)+12+len(content))
	b = binary.LittleEndian.AppendUint32(b, dictMagic)
	b = binary.LittleEndian.AppendUint32(b, dictID)
	b = append(b, p.entropy...)
	for _, r := range p.reps {
		b = binary.LittleEndian.AppendUint32(b, r)
	}
	return append(b, content...)
}

// appendFrameHeader appends a frame header with a window of at least window bytes, no
// content size, no checksum and, if dict, naming dictID.
func appendFrameHeader(b []byte, window int64, dict bool) []byte {
	b = binary.LittleEndian.AppendUint32(b, frameMagic)
	if !dict {
		return append(b, 0, windowDescriptor(window))
	}
	b = append(b, 3, windowDescriptor(window))
	return binary.LittleEndian.AppendUint32(b, dictID)
}

// stream rewrites src, the compressed bytes of spans from checkpoint p on, into a
// stream a stock decoder decodes to their output: every (part of a) frame gets a header
// of its own without content size or checksum (the first, inside a frame, names the
// dictionary of p's state), the checksums are dropped, skippable frames too, and the
// last block copied is marked last. It returns the stream and the largest window its
// headers declare. src is hostile: a wrong stream is caught by the span digests.
func (p *checkpoint) stream(src []byte) ([]byte, int64, error) {
	out := make([]byte, 0, len(src)+64)
	window, checksum := p.window, p.checksum
	if p.mid {
		out = appendFrameHeader(out, window, true)
	}
	inFrame := p.mid
	lastHeader := -1 // offset in out of the last block header copied in an open frame
	for pos := 0; pos < len(src); {
		if !inFrame {
			n, h, err := frameAt(src[pos:])
			if err != nil {
				return nil, 0, fmt.Errorf("compressed byte %d of the span: %w", pos, err)
			}
			pos += n
			if h == nil { // a skippable frame
				continue
			}
			if h.window > MaxFrameWindow {
				return nil, 0, fmt.Errorf("%w: window of %d bytes", errFrame, h.window)
			}
			window, checksum = max(window, h.window), h.checksum
			out = appendFrameHeader(out, h.window, false)
			inFrame = true
			continue
		}
		if len(src)-pos < blockHeaderLen {
			return nil, 0, fmt.Errorf("%w: truncated block header", errFrame)
		}
		h, err := parseBlockHeader(src[pos:])
		if err != nil {
			return nil, 0, err
		}
		end := pos + blockHeaderLen + h.contentLen()
		if end > len(src) {
			return nil, 0, fmt.Errorf("%w: truncated block", errFrame)
		}
		lastHeader = len(out)
		out = append(out, src[pos:end]...)
		pos = end
		if h.last {
			inFrame, lastHeader = false, -1
			if checksum {
				pos += 4
			}
		}
	}
	switch {
	case lastHeader >= 0:
		out[lastHeader] |= 1
	case inFrame:
		return nil, 0, fmt.Errorf("%w: a frame without blocks", errFrame)
	}
	return out, window, nil
}

// frameAt parses the frame header at the start of b: its length and header, or nil
// for a skippable frame (the length is then the whole frame's).
func frameAt(b []byte) (int, *frameHeader, error) {
	if len(b) >= 8 && binary.LittleEndian.Uint32(b)&skippableMask == skippableMagic {
		n := 8 + int64(binary.LittleEndian.Uint32(b[4:]))
		if n > int64(len(b)) {
			return 0, nil, fmt.Errorf("%w: truncated skippable frame", errFrame)
		}
		return int(n), nil, nil
	}
	h, err := parseFrameHeader(b)
	if err != nil {
		return 0, nil, err
	}
	return h.len, &h, nil
}
