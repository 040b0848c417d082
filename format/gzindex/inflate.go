package gzindex

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// This file is a deflate (RFC 1951) and gzip member (RFC 1952) decoder written for one
// thing compress/flate cannot do: start at any block boundary, given as a bit offset,
// with the 32 KiB of output that precede it preset as history (zlib's zran does the
// same with inflatePrime and inflateSetDictionary). It also tells its driver where each
// block starts, which is where checkpoints go.

const (
	// windowSize is deflate's history: the farthest back a match may reach.
	windowSize = 32 << 10
	// maxMatch is the longest match deflate emits.
	maxMatch = 258
	// outChunk is how much output accumulates before it is handed to the sink.
	outChunk = 256 << 10
	// fastBits is the width of a Huffman table's direct lookup; longer codes (rare) are
	// decoded canonically, bit by bit.
	fastBits = 9
	// maxCodeLen is the longest Huffman code deflate allows.
	maxCodeLen = 15
)

var (
	// errCorrupt wraps every way a stream can be malformed.
	errCorrupt = errors.New("corrupt gzip stream")
	// errStop is what a sink returns when it has all the output it wants.
	errStop = errors.New("stop")
)

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errCorrupt, fmt.Sprintf(format, args...))
}

// bitReader reads deflate's bit stream (least significant bit first) from src, refilled
// from r when r is not nil.
type bitReader struct {
	src  []byte // input at hand
	i    int    // next byte of src to load into b
	base int64  // stream offset of src[0]
	b    uint64 // loaded bits, the next one lowest; bits above nb are the stream's next or 0
	nb   uint   // number of loaded bits
	r    io.Reader
	buf  []byte // what src is read into when r is not nil
	err  error  // r's error, io.EOF included
}

// bitPos returns the stream offset, in bits, of the next bit to be read.
func (br *bitReader) bitPos() int64 { return (br.base+int64(br.i))*8 - int64(br.nb) }

// refill loads bits until b holds at least 57 or the input ends.
func (br *bitReader) refill() {
	if br.i+8 <= len(br.src) {
		// Load 8 bytes at once. Bits above nb already hold the stream's next bits (or
		// 0), so OR-ing them again changes nothing.
		br.b |= binary.LittleEndian.Uint64(br.src[br.i:]) << br.nb
		n := (63 - br.nb) >> 3
		br.i += int(n)
		br.nb += n * 8
		return
	}
	for br.nb <= 56 {
		if br.i == len(br.src) && !br.more() {
			return
		}
		br.b |= uint64(br.src[br.i]) << br.nb
		br.i++
		br.nb += 8
	}
}

// more reads more input from r into src, keeping src's last 8 bytes in front (rewind may
// give back up to 8 loaded bytes). It reports whether src has a byte at i.
func (br *bitReader) more() bool {
	if br.r == nil || br.err != nil {
		return false
	}
	keep := min(8, len(br.src))
	drop := len(br.src) - keep
	n0 := copy(br.buf, br.src[drop:])
	br.base += int64(drop)
	br.i -= drop
	for {
		n, err := br.r.Read(br.buf[n0:])
		br.src = br.buf[:n0+n]
		if err != nil {
			br.err = err
		}
		if n > 0 || err != nil {
			return br.i < len(br.src)
		}
	}
}

// short is the error of input that ends before the bits a decoder needs.
func (br *bitReader) short() error {
	if br.err != nil && br.err != io.EOF {
		return fmt.Errorf("reading gzip stream: %w", br.err)
	}
	return io.ErrUnexpectedEOF
}

// bits reads n <= 32 bits.
func (br *bitReader) bits(n uint) (uint32, error) {
	if br.nb < n {
		br.refill()
		if br.nb < n {
			return 0, br.short()
		}
	}
	v := uint32(br.b & (1<<n - 1))
	br.b >>= n
	br.nb -= n
	return v, nil
}

// skip drops n < 8 bits (a checkpoint's position within its first byte).
func (br *bitReader) skip(n uint) error {
	_, err := br.bits(n)
	return err
}

// align drops the bits left in the current byte.
func (br *bitReader) align() {
	k := br.nb % 8
	br.b >>= k
	br.nb -= k
}

// rewind gives the whole bytes loaded into b back to src, so that bytes can be copied
// from src directly. The bit position must be byte-aligned.
func (br *bitReader) rewind() {
	br.i -= int(br.nb / 8)
	br.b, br.nb = 0, 0
}

// atEOF reports whether the input ends at the current (byte-aligned) position.
func (br *bitReader) atEOF() bool {
	br.rewind()
	return br.i == len(br.src) && !br.more()
}

// huffman is a canonical Huffman code: a direct table for codes of up to fastBits bits
// and the counts and symbols that decode any code.
type huffman struct {
	fast   [1 << fastBits]uint16 // symbol<<4 | length; 0: longer code, or none
	count  [maxCodeLen + 1]uint16
	symbol [288]uint16
}

// init builds the code of lengths (one per symbol, 0 for none). It returns how many codes
// are left unused: 0 for a complete code; an over-subscribed code is an error.
func (h *huffman) init(lengths []uint8) (int, error) {
	h.count = [maxCodeLen + 1]uint16{}
	for _, l := range lengths {
		h.count[l]++
	}
	h.count[0] = 0
	left := 1
	for l := 1; l <= maxCodeLen; l++ {
		left = left<<1 - int(h.count[l])
		if left < 0 {
			return 0, corrupt("over-subscribed Huffman code")
		}
	}
	var offs, next [maxCodeLen + 1]uint16
	code := uint16(0)
	for l := 1; l <= maxCodeLen; l++ {
		if l < maxCodeLen {
			offs[l+1] = offs[l] + h.count[l]
		}
		code = (code + h.count[l-1]) << 1
		next[l] = code
	}
	h.fast = [1 << fastBits]uint16{}
	for sym, l := range lengths {
		if l == 0 {
			continue
		}
		h.symbol[offs[l]] = uint16(sym)
		offs[l]++
		c := next[l]
		next[l]++
		if l > fastBits {
			continue
		}
		for j := reverse(c, uint(l)); j < 1<<fastBits; j += 1 << l {
			h.fast[j] = uint16(sym)<<4 | uint16(l)
		}
	}
	return left, nil
}

// reverse returns the n low bits of c in reverse order: Huffman codes are sent most
// significant bit first into a stream read least significant bit first.
func reverse(c uint16, n uint) uint16 {
	var r uint16
	for range n {
		r = r<<1 | c&1
		c >>= 1
	}
	return r
}

// sym decodes one symbol of h.
func (br *bitReader) sym(h *huffman) (int, error) {
	if br.nb < maxCodeLen {
		br.refill()
	}
	e := h.fast[br.b&(1<<fastBits-1)]
	if l := uint(e & 15); l != 0 && l <= br.nb {
		br.b >>= l
		br.nb -= l
		return int(e >> 4), nil
	}
	return br.slowSym(h)
}

// slowSym decodes one symbol of h canonically, a bit at a time.
func (br *bitReader) slowSym(h *huffman) (int, error) {
	code, first, index := 0, 0, 0
	b := br.b
	for l := uint(1); l <= maxCodeLen; l++ {
		if l > br.nb {
			return 0, br.short()
		}
		code |= int(b & 1)
		b >>= 1
		count := int(h.count[l])
		if code-count < first {
			br.b >>= l
			br.nb -= l
			return int(h.symbol[index+code-first]), nil
		}
		index += count
		first = (first + count) << 1
		code <<= 1
	}
	return 0, corrupt("invalid Huffman code")
}

var (
	lenBase = [29]uint16{3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59,
		67, 83, 99, 115, 131, 163, 195, 227, 258}
	lenExtra  = [29]uint8{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0}
	distBase  = [30]uint16{1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577}
	distExtra = [30]uint8{0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13}
	// clenOrder is the order a dynamic block sends its code length code's lengths in.
	clenOrder = [19]uint8{16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15}
)

// inflater decodes gzip members into out, a sliding buffer whose bytes before pos are
// history, and hands the output to sink.
type inflater struct {
	br        bitReader
	out       []byte
	pos       int // next byte of out to write
	flushed   int // out[:flushed] has been handed to sink
	histStart int // the first byte of out a match may reach (the member's or the window's start)
	sink      func([]byte) error
	outBase   int64 // stream offset of out[0]
	refs      *refs // if not nil, records which bytes of a checkpoint's window matches use

	lit, dist, clen     huffman
	fixedLit, fixedDist huffman
	lens                [286 + 30]uint8
	fixedReady          bool
	blockTypes          [3]int // blocks decoded, by type (tests check all three are covered)
}

// newInflater returns an inflater over src, refilled from r if r is not nil; base is
// src[0]'s stream offset.
func newInflater(src []byte, base int64, r io.Reader, sink func([]byte) error) *inflater {
	f := &inflater{out: make([]byte, windowSize+outChunk+maxMatch), sink: sink}
	f.br = bitReader{src: src, base: base, r: r}
	if r != nil {
		f.br.buf = make([]byte, 64<<10)
	}
	return f
}

// preset makes window the history the next block may refer to.
func (f *inflater) preset(window []byte) {
	f.pos = copy(f.out, window)
	f.flushed, f.histStart = f.pos, 0
}

// window returns the history a checkpoint at the current position needs: the last 32
// KiB of output, or less since the member started.
func (f *inflater) window() []byte {
	return f.out[max(f.histStart, f.pos-windowSize):f.pos]
}

// flush hands the output not yet handed to sink.
func (f *inflater) flush() error {
	if f.pos == f.flushed {
		return nil
	}
	p := f.out[f.flushed:f.pos]
	f.flushed = f.pos
	return f.sink(p)
}

// slide flushes, then keeps only the last window of out.
func (f *inflater) slide() error {
	if err := f.flush(); err != nil {
		return err
	}
	shift := f.pos - windowSize
	if shift <= 0 {
		return nil
	}
	copy(f.out, f.out[shift:f.pos])
	f.pos -= shift
	f.outBase += int64(shift)
	f.flushed = f.pos
	f.histStart = max(f.histStart-shift, 0)
	return nil
}

// header reads a gzip member's header; the stream must be at a byte boundary.
func (f *inflater) header() error {
	var h [10]byte
	for i := range h {
		b, err := f.br.bits(8)
		if err != nil {
			return err
		}
		h[i] = byte(b)
	}
	if h[0] != 0x1f || h[1] != 0x8b {
		return corrupt("not a gzip member (magic %#x %#x)", h[0], h[1])
	}
	if h[2] != 8 {
		return corrupt("compression method %d, not deflate", h[2])
	}
	flg := h[3]
	if flg&0xe0 != 0 {
		return corrupt("reserved header flags %#x", flg)
	}
	if flg&4 != 0 { // FEXTRA
		n, err := f.br.bits(16)
		if err != nil {
			return err
		}
		for range n {
			if _, err := f.br.bits(8); err != nil {
				return err
			}
		}
	}
	for _, bit := range []byte{8, 16} { // FNAME, FCOMMENT: zero-terminated
		if flg&bit == 0 {
			continue
		}
		for {
			b, err := f.br.bits(8)
			if err != nil {
				return err
			}
			if b == 0 {
				break
			}
		}
	}
	if flg&2 != 0 { // FHCRC
		if _, err := f.br.bits(16); err != nil {
			return err
		}
	}
	f.histStart = f.pos
	return nil
}

// trailer reads a member's CRC-32 and ISIZE.
func (f *inflater) trailer() (crc, size uint32, err error) {
	f.br.align()
	var v [4]uint32
	for i := range v {
		if v[i], err = f.br.bits(16); err != nil {
			return 0, 0, err
		}
	}
	return v[0] | v[1]<<16, v[2] | v[3]<<16, nil
}

// block decodes one deflate block and flushes its output. It reports whether the block
// was the member's last.
func (f *inflater) block() (last bool, err error) {
	h, err := f.br.bits(3)
	if err != nil {
		return false, err
	}
	if h>>1 < 3 {
		f.blockTypes[h>>1]++
	}
	switch h >> 1 {
	case 0:
		err = f.stored()
	case 1:
		if !f.fixedReady {
			f.initFixed()
		}
		err = f.codes(&f.fixedLit, &f.fixedDist)
	case 2:
		if err = f.dynamic(); err == nil {
			err = f.codes(&f.lit, &f.dist)
		}
	default:
		err = corrupt("reserved block type 3")
	}
	if err != nil {
		return false, err
	}
	return h&1 == 1, f.flush()
}

// initFixed builds the fixed Huffman codes of block type 1.
func (f *inflater) initFixed() {
	var l [288]uint8
	for i := range l {
		switch {
		case i < 144:
			l[i] = 8
		case i < 256:
			l[i] = 9
		case i < 280:
			l[i] = 7
		default:
			l[i] = 8
		}
	}
	_, _ = f.fixedLit.init(l[:])
	var d [32]uint8
	for i := range d {
		d[i] = 5
	}
	_, _ = f.fixedDist.init(d[:])
	f.fixedReady = true
}

// stored copies a stored block.
func (f *inflater) stored() error {
	f.br.align()
	n, err := f.br.bits(16)
	if err != nil {
		return err
	}
	nn, err := f.br.bits(16)
	if err != nil {
		return err
	}
	if n != ^nn&0xffff {
		return corrupt("stored block length %d does not match its complement", n)
	}
	f.br.rewind()
	for n > 0 {
		if f.pos >= len(f.out)-maxMatch {
			if err := f.slide(); err != nil {
				return err
			}
		}
		if f.br.i == len(f.br.src) && !f.br.more() {
			return f.br.short()
		}
		k := copy(f.out[f.pos:min(len(f.out), f.pos+int(n))], f.br.src[f.br.i:])
		f.br.i += k
		f.pos += k
		n -= uint32(k)
	}
	return nil
}

// dynamic reads a dynamic block's code definitions into f.lit and f.dist.
func (f *inflater) dynamic() error {
	h, err := f.br.bits(14)
	if err != nil {
		return err
	}
	nlen, ndist, ncode := int(h&31)+257, int(h>>5&31)+1, int(h>>10)+4
	if nlen > 286 || ndist > 30 {
		return corrupt("dynamic block with %d length and %d distance codes", nlen, ndist)
	}
	var cl [19]uint8
	for i := range ncode {
		v, err := f.br.bits(3)
		if err != nil {
			return err
		}
		cl[clenOrder[i]] = uint8(v)
	}
	if left, err := f.clen.init(cl[:]); err != nil || left != 0 {
		return corrupt("incomplete code length code")
	}
	lens := f.lens[:nlen+ndist]
	for i := 0; i < len(lens); {
		s, err := f.br.sym(&f.clen)
		if err != nil {
			return err
		}
		if s < 16 {
			lens[i] = uint8(s)
			i++
			continue
		}
		var v uint8
		var rep uint32
		switch s {
		case 16:
			if i == 0 {
				return corrupt("length repeat with no previous length")
			}
			v = lens[i-1]
			rep, err = f.br.bits(2)
			rep += 3
		case 17:
			rep, err = f.br.bits(3)
			rep += 3
		default:
			rep, err = f.br.bits(7)
			rep += 11
		}
		if err != nil {
			return err
		}
		if i+int(rep) > len(lens) {
			return corrupt("code lengths overrun")
		}
		for range rep {
			lens[i] = v
			i++
		}
	}
	if lens[256] == 0 {
		return corrupt("no end-of-block code")
	}
	if left, err := f.lit.init(lens[:nlen]); err != nil || (left != 0 && !single(lens[:nlen])) {
		return corrupt("bad literal/length code")
	}
	if left, err := f.dist.init(lens[nlen:]); err != nil || (left != 0 && !single(lens[nlen:])) {
		return corrupt("bad distance code")
	}
	return nil
}

// single reports whether lengths define at most one code, of length 1: the one
// incomplete code deflate allows (as zlib does).
func single(lengths []uint8) bool {
	n := 0
	for _, l := range lengths {
		if l > 1 {
			return false
		}
		n += int(l)
	}
	return n <= 1
}

// codes decodes a Huffman-coded block's symbols up to its end-of-block.
func (f *inflater) codes(lit, dist *huffman) error {
	for {
		if f.pos >= len(f.out)-maxMatch {
			if err := f.slide(); err != nil {
				return err
			}
		}
		s, err := f.br.sym(lit)
		if err != nil {
			return err
		}
		if s < 256 {
			f.out[f.pos] = byte(s)
			f.pos++
			continue
		}
		if s == 256 {
			return nil
		}
		if s -= 257; s >= len(lenBase) {
			return corrupt("invalid length symbol %d", s+257)
		}
		e, err := f.br.bits(uint(lenExtra[s]))
		if err != nil {
			return err
		}
		n := int(lenBase[s]) + int(e)
		ds, err := f.br.sym(dist)
		if err != nil {
			return err
		}
		if ds >= len(distBase) {
			return corrupt("invalid distance symbol %d", ds)
		}
		if e, err = f.br.bits(uint(distExtra[ds])); err != nil {
			return err
		}
		d := int(distBase[ds]) + int(e)
		if d > f.pos-f.histStart {
			return corrupt("distance %d reaches before the history", d)
		}
		if f.refs != nil {
			f.refs.mark(f.outBase+int64(f.pos-d), n)
		}
		// An overlapping match (d < n) repeats its last d bytes: copy what is already
		// there, doubling each time.
		from, dst := f.pos-d, f.out[f.pos:f.pos+n]
		for k := 0; k < n; {
			k += copy(dst[k:], f.out[from:f.pos+k])
		}
		f.pos += n
	}
}

// refs records which bytes of a checkpoint's window the output after it copies: a
// window keeps only those (the others zeroed, its unused head cut), which makes windows,
// most of an index, smaller. Build puts checkpoints at least a window apart, so only the
// last one's window can still be referred to.
type refs struct {
	start, end int64 // the window's range in the output stream
	used       [windowSize / 64]uint64
}

// reset starts recording for a window covering [start, end) of the output.
func (r *refs) reset(start, end int64) {
	r.start, r.end = start, end
	r.used = [windowSize / 64]uint64{}
}

// mark records a match copying n bytes from stream offset src.
func (r *refs) mark(src int64, n int) {
	for k := max(src, r.start); k < min(src+int64(n), r.end); k++ {
		i := k - r.start
		r.used[i/64] |= 1 << (i % 64)
	}
}

// trim zeroes the bytes of w (the window) no match used and returns it from the first
// used byte on.
func (r *refs) trim(w []byte) []byte {
	first := len(w)
	for i := range w {
		if r.used[i/64]&(1<<(i%64)) == 0 {
			w[i] = 0
		} else if first == len(w) {
			first = i
		}
	}
	return w[first:]
}
