package zstdindex

import (
	"bytes"
	"errors"
	"fmt"
	"math/bits"

	"github.com/klauspost/compress/huff0"
)

var errBlock = errors.New("bad block")

// Table modes (RFC 8878 3.1.1.3.2.1); repeat never stays in force: it keeps the last.
const (
	modePredefined = iota
	modeRLE
	modeFSE
	modeRepeat
)

// tableState is one sequence table in force in a frame.
type tableState struct {
	set   bool // a block of the frame chose a table (repeat without one is an error)
	mode  int
	rle   uint8  // the symbol, in RLE mode
	desc  []byte // the description, in FSE mode
	table fseTable
}

// frameDecoder decodes one frame's blocks, keeping the state a later block depends on:
// the window of output, the repeat offsets and the entropy tables in force.
type frameDecoder struct {
	hdr       frameHeader
	reps      [3]int64
	huff      []byte // the Huffman table description in force; nil if none yet
	huffS     *huff0.Scratch
	huffDec   *huff0.Decoder
	tables    [3]tableState
	hist      []byte // the frame's output from histStart on: at least a window, then the block
	histStart int64
	// pin, if pinned, is a frame position hist keeps output from (a pending window).
	pin    int64
	pinned bool
	out    int64 // the frame's output so far
	lits   []byte
	// ref, if not nil, is called with each match's source range [from, to) of frame
	// output, when it starts before refBelow.
	ref      func(from, to int64)
	refBelow int64
}

func (f *frameDecoder) reset(h frameHeader) {
	*f = frameDecoder{hdr: h, reps: [3]int64{1, 4, 8}, huffS: f.huffS, hist: f.hist[:0], lits: f.lits, ref: f.ref}
}

// block decodes one block's content and appends its output to f.hist; it returns that output.
func (f *frameDecoder) block(h blockHeader, c []byte) ([]byte, error) {
	drop := int64(len(f.hist)) - f.hdr.window
	if f.pinned {
		drop = min(drop, f.pin-f.histStart)
	}
	if drop >= max(f.hdr.window/2, 4*maxBlock) { // amortized: a window moves once per half window
		k := copy(f.hist, f.hist[drop:])
		f.hist = f.hist[:k]
		f.histStart += drop
	}
	start := len(f.hist)
	switch h.typ {
	case blockRaw:
		f.hist = append(f.hist, c...)
	case blockRLE:
		f.hist = append(f.hist, bytes.Repeat(c[:1], h.size)...)
	default:
		if err := f.compressed(c); err != nil {
			return nil, err
		}
	}
	out := f.hist[start:]
	if len(out) > maxBlock || int64(len(out)) > f.hdr.window {
		return nil, fmt.Errorf("%w: %d bytes of output", errBlock, len(out))
	}
	f.out += int64(len(out))
	return out, nil
}

// compressed decodes a compressed block (RFC 8878 3.1.1.3).
func (f *frameDecoder) compressed(c []byte) error {
	n, err := f.literals(c)
	if err != nil {
		return fmt.Errorf("%w: literals: %v", errBlock, err)
	}
	if err := f.sequences(c[n:]); err != nil {
		return fmt.Errorf("%w: sequences: %v", errBlock, err)
	}
	return nil
}

// literals decodes the literals section at the start of c into f.lits and returns its length.
func (f *frameDecoder) literals(c []byte) (int, error) {
	if len(c) < 1 {
		return 0, errors.New("empty")
	}
	typ, sf := c[0]&3, c[0]>>2&3
	if typ < 2 {
		hl, size := 1, int(c[0]>>3)
		switch sf {
		case 1:
			if len(c) < 2 {
				return 0, errors.New("truncated header")
			}
			hl, size = 2, int(c[0]>>4)|int(c[1])<<4
		case 3:
			if len(c) < 3 {
				return 0, errors.New("truncated header")
			}
			hl, size = 3, int(c[0]>>4)|int(c[1])<<4|int(c[2])<<12
		}
		if size > maxBlock {
			return 0, fmt.Errorf("%d literals", size)
		}
		if typ == 0 {
			if len(c) < hl+size {
				return 0, errors.New("truncated")
			}
			f.lits = append(f.lits[:0], c[hl:hl+size]...)
			return hl + size, nil
		}
		if len(c) < hl+1 {
			return 0, errors.New("truncated")
		}
		f.lits = append(f.lits[:0], bytes.Repeat(c[hl:hl+1], size)...)
		return hl + 1, nil
	}
	hl := [4]int{3, 3, 4, 5}[sf]
	if len(c) < hl {
		return 0, errors.New("truncated header")
	}
	var v uint64
	for i := hl - 1; i >= 0; i-- {
		v = v<<8 | uint64(c[i])
	}
	fieldBits := [4]uint{10, 10, 14, 18}[sf]
	regen, comp := int(v>>4&(1<<fieldBits-1)), int(v>>(4+fieldBits)&(1<<fieldBits-1))
	if regen > maxBlock || len(c) < hl+comp {
		return 0, fmt.Errorf("%d literals in %d bytes", regen, comp)
	}
	data := c[hl : hl+comp]
	if typ == 2 {
		s, rest, err := huff0.ReadTable(data, f.huffS)
		if err != nil {
			return 0, fmt.Errorf("huffman table: %v", err)
		}
		f.huffS, f.huffDec = s, s.Decoder()
		f.huff = append(f.huff[:0], data[:len(data)-len(rest)]...)
		data = rest
	} else if f.huffDec == nil {
		return 0, errors.New("treeless literals with no table in force")
	}
	if cap(f.lits) < regen {
		f.lits = make([]byte, 0, maxBlock)
	}
	var out []byte
	var err error
	if sf == 0 {
		out, err = f.huffDec.Decompress1X(f.lits[:0:regen], data)
	} else {
		out, err = f.huffDec.Decompress4X(f.lits[:0:regen], data)
	}
	if err != nil {
		return 0, err
	}
	if len(out) != regen {
		return 0, fmt.Errorf("%d literals, header says %d", len(out), regen)
	}
	f.lits = out
	return hl + comp, nil
}

// sequences decodes a sequences section and executes it with f.lits.
func (f *frameDecoder) sequences(c []byte) error {
	if len(c) < 1 {
		return errors.New("empty")
	}
	nSeq, hl := int(c[0]), 1
	switch {
	case c[0] == 255:
		if len(c) < 3 {
			return errors.New("truncated header")
		}
		nSeq, hl = int(c[1])+int(c[2])<<8+0x7F00, 3
	case c[0] >= 128:
		if len(c) < 2 {
			return errors.New("truncated header")
		}
		nSeq, hl = int(c[0]-128)<<8+int(c[1]), 2
	}
	if nSeq == 0 {
		if len(c) != hl {
			return errors.New("bytes after an empty sequences section")
		}
		f.hist = append(f.hist, f.lits...)
		return nil
	}
	if len(c) < hl+1 || c[hl]&3 != 0 {
		return errors.New("bad modes")
	}
	modes := c[hl]
	c = c[hl+1:]
	for t := range 3 {
		n, err := f.setTable(t, int(modes>>(6-2*t)&3), c)
		if err != nil {
			return fmt.Errorf("table %d: %v", t, err)
		}
		c = c[n:]
	}
	return f.execute(nSeq, c)
}

// setTable puts table t in force for mode, reading its description from c; it returns
// the description's length.
func (f *frameDecoder) setTable(t, mode int, c []byte) (int, error) {
	ts := &f.tables[t]
	switch mode {
	case modeRepeat:
		if !ts.set {
			return 0, errors.New("repeat mode with no table in force")
		}
		return 0, nil
	case modePredefined:
		tab, _ := predefined[t].table()
		*ts = tableState{set: true, mode: mode, table: tab}
		return 0, nil
	case modeRLE:
		if len(c) < 1 || int(c[0]) > maxSymbol[t] {
			return 0, errors.New("bad RLE symbol")
		}
		*ts = tableState{set: true, mode: mode, rle: c[0], table: fseTable{state: []fseState{{symbol: c[0]}}}}
		return 1, nil
	}
	d, n, err := readDistribution(c, t, nil)
	if err != nil {
		return 0, err
	}
	tab, err := d.table()
	if err != nil {
		return 0, err
	}
	*ts = tableState{set: true, mode: mode, desc: bytes.Clone(c[:n]), table: tab}
	return n, nil
}

// execute decodes nSeq sequences from the bit stream c and executes them.
func (f *frameDecoder) execute(nSeq int, c []byte) error {
	br, err := newBackBits(c)
	if err != nil {
		return err
	}
	ll, of, ml := &f.tables[tableLL].table, &f.tables[tableOF].table, &f.tables[tableML].table
	sLL, sOF, sML := br.read(ll.log), br.read(of.log), br.read(ml.log)
	lits := f.lits
	for i := range nSeq {
		ofCode, mlCode, llCode := of.state[sOF].symbol, ml.state[sML].symbol, ll.state[sLL].symbol
		if int(ofCode) > maxSymbol[tableOF] {
			return fmt.Errorf("offset code %d", ofCode)
		}
		offVal := int64(1)<<ofCode + int64(br.read(int(ofCode)))
		mlen := int(mlBase[mlCode]) + int(br.read(int(mlBits[mlCode])))
		llen := int(llBase[llCode]) + int(br.read(int(llBits[llCode])))
		if i < nSeq-1 {
			sLL = uint32(ll.state[sLL].base) + br.read(int(ll.state[sLL].nbBits))
			sML = uint32(ml.state[sML].base) + br.read(int(ml.state[sML].nbBits))
			sOF = uint32(of.state[sOF].base) + br.read(int(of.state[sOF].nbBits))
		}
		off := f.offset(offVal, llen)
		if llen > len(lits) {
			return fmt.Errorf("sequence %d: %d literals, %d left", i, llen, len(lits))
		}
		f.hist = append(f.hist, lits[:llen]...)
		lits = lits[llen:]
		if err := f.copyMatch(off, mlen); err != nil {
			return fmt.Errorf("sequence %d: %w", i, err)
		}
		if len(f.hist) > maxBlock+int(f.out-f.histStart) {
			return errors.New("over the block size")
		}
	}
	if br.bits != 0 || br.over {
		return errors.New("bit stream not consumed exactly")
	}
	f.hist = append(f.hist, lits...)
	return nil
}

// offset resolves an offset value to an offset and updates the repeat offsets
// (RFC 8878 3.1.1.5).
func (f *frameDecoder) offset(v int64, llen int) int64 {
	r := &f.reps
	if v > 3 {
		r[2], r[1], r[0] = r[1], r[0], v-3
		return r[0]
	}
	i := int(v) - 1
	if llen == 0 {
		i++
	}
	switch i {
	case 0:
	case 1:
		r[0], r[1] = r[1], r[0]
	case 2:
		r[0], r[1], r[2] = r[2], r[0], r[1]
	default:
		r[0], r[1], r[2] = r[0]-1, r[0], r[1]
	}
	return r[0]
}

// copyMatch appends n bytes copied from off bytes back.
func (f *frameDecoder) copyMatch(off int64, n int) error {
	pos := f.histStart + int64(len(f.hist)) // frame position of the match
	if off <= 0 || off > pos || off > f.hdr.window || off > int64(len(f.hist)) {
		return fmt.Errorf("offset %d at frame output %d (window %d)", off, pos, f.hdr.window)
	}
	if f.ref != nil && pos-off < f.refBelow {
		f.ref(pos-off, min(pos-off+int64(n), f.refBelow))
	}
	src := len(f.hist) - int(off)
	for n > 0 { // overlapping copies repeat the pattern: copy at most off bytes a time
		k := min(n, int(off))
		f.hist = append(f.hist, f.hist[src:src+k]...)
		src += k
		n -= k
	}
	return nil
}

// backBits reads the backward bit stream of sequences (RFC 8878 4.1): from the highest
// bit below the final byte's marker bit down to bit 0.
type backBits struct {
	b    []byte
	bits int // bits left
	over bool
}

func newBackBits(b []byte) (*backBits, error) {
	if len(b) == 0 || b[len(b)-1] == 0 {
		return nil, errors.New("bit stream without an end mark")
	}
	return &backBits{b: b, bits: 8*(len(b)-1) + bits.Len8(b[len(b)-1]) - 1}, nil
}

func (r *backBits) read(n int) uint32 {
	if n == 0 {
		return 0
	}
	if n > r.bits {
		r.over = true
		r.bits = 0
		return 0
	}
	r.bits -= n
	f := fwdBits{b: r.b, pos: r.bits}
	return f.peek(n)
}
