package zstdindex

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
)

// The three sequence tables (RFC 8878 3.1.1.3.2.1), in the order a block's sequences
// section names their modes.
const (
	tableLL = iota // literals lengths
	tableOF        // offsets
	tableML        // match lengths
)

// maxSymbol and maxLog are each table's largest code and accuracy log (RFC 8878
// 3.1.1.3.2.2; offset codes above 30 are refused, as klauspost/compress does).
var (
	maxSymbol = [3]int{tableLL: 35, tableOF: 30, tableML: 52}
	maxLog    = [3]int{tableLL: 9, tableOF: 8, tableML: 9}
)

// predefined are the default distributions (RFC 8878 3.1.1.3.2.2).
var predefined = [3]distribution{
	tableLL: {log: 6, norm: []int16{4, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1,
		2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 2, 1, 1, 1, 1, 1, -1, -1, -1, -1}},
	tableOF: {log: 5, norm: []int16{1, 1, 1, 1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1,
		1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1}},
	tableML: {log: 6, norm: []int16{1, 4, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1,
		1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
		1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1}},
}

// llBase, llBits, mlBase, mlBits turn literals length and match length codes into values
// (RFC 8878 3.1.1.3.2.1.1).
var (
	llBits = [36]uint8{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	mlBits = [53]uint8{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
		1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	llBase, mlBase = bases(llBits[:], 0), bases(mlBits[:], 3)
)

func bases(extra []uint8, first uint32) []uint32 {
	b := make([]uint32, len(extra))
	v := first
	for i, n := range extra {
		b[i] = v
		v += 1 << n
	}
	return b
}

// distribution is an FSE table's normalized counts: -1 is a "less than 1" probability.
type distribution struct {
	log  int
	norm []int16
}

var errTable = errors.New("bad FSE table description")

// readDistribution parses an FSE table description (RFC 8878 4.1.1) of table t from
// the start of b; it returns the distribution and the description's length in bytes.
// norm, if long enough, is reused for the counts.
func readDistribution(b []byte, t int, norm []int16) (distribution, int, error) {
	r := fwdBits{b: b}
	d := distribution{log: int(r.read(4)) + 5}
	if d.log > maxLog[t] {
		return d, 0, fmt.Errorf("%w: accuracy log %d over %d", errTable, d.log, maxLog[t])
	}
	remaining := 1<<d.log + 1
	threshold := 1 << d.log
	nbBits := d.log + 1
	d.norm = norm[:0]
	if cap(norm) < maxSymbol[t]+1 {
		d.norm = make([]int16, 0, maxSymbol[t]+1)
	}
	for remaining > 1 {
		if len(d.norm) > maxSymbol[t] {
			return d, 0, fmt.Errorf("%w: more than %d symbols", errTable, maxSymbol[t]+1)
		}
		max := 2*threshold - 1 - remaining
		var count int
		if low := int(r.peek(nbBits - 1)); low < max {
			count = low
			r.skip(nbBits - 1)
		} else {
			count = int(r.peek(nbBits))
			if count >= threshold {
				count -= max
			}
			r.skip(nbBits)
		}
		count--
		remaining -= abs(count)
		d.norm = append(d.norm, int16(count))
		if remaining < 1 {
			return d, 0, fmt.Errorf("%w: probabilities over the table size", errTable)
		}
		for remaining < threshold {
			nbBits--
			threshold >>= 1
		}
		if count != 0 || remaining <= 1 {
			continue
		}
		for { // a zero probability is followed by a repeat count of more zeros
			n := int(r.read(2))
			for range n {
				d.norm = append(d.norm, 0)
			}
			if len(d.norm) > maxSymbol[t]+1 || r.over() {
				return d, 0, fmt.Errorf("%w: zeros past the last symbol", errTable)
			}
			if n != 3 {
				break
			}
		}
	}
	if r.over() {
		return d, 0, fmt.Errorf("%w: truncated", errTable)
	}
	return d, (r.pos + 7) / 8, nil
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

// fwdBits reads a little-endian bit stream forwards; bits past the end read as zeros
// and make over report true.
type fwdBits struct {
	b   []byte
	pos int // in bits
}

func (r *fwdBits) peek(n int) uint32 {
	var v uint64
	i := r.pos / 8
	if i+8 <= len(r.b) {
		v = binary.LittleEndian.Uint64(r.b[i:])
	} else {
		for k := len(r.b) - 1; k >= i; k-- {
			v = v<<8 | uint64(r.b[k])
		}
	}
	return uint32(v>>(r.pos%8)) & (1<<n - 1)
}

func (r *fwdBits) skip(n int)        { r.pos += n }
func (r *fwdBits) read(n int) uint32 { v := r.peek(n); r.skip(n); return v }
func (r *fwdBits) over() bool        { return r.pos > 8*len(r.b) }

// appendDistribution appends d's FSE table description (zstd's FSE_writeNCount).
func appendDistribution(dst []byte, d distribution) []byte {
	var w bitWriter
	w.b = dst
	w.write(uint64(d.log-5), 4)
	remaining := 1<<d.log + 1
	threshold := 1 << d.log
	nbBits := d.log + 1
	previous0 := false
	for s := 0; s < len(d.norm) && remaining > 1; {
		if previous0 {
			start := s
			for s < len(d.norm) && d.norm[s] == 0 {
				s++
			}
			for s >= start+3 {
				start += 3
				w.write(3, 2)
			}
			w.write(uint64(s-start), 2)
		}
		count := int(d.norm[s])
		s++
		max := 2*threshold - 1 - remaining
		remaining -= abs(count)
		count++
		if count >= threshold {
			count += max
		}
		n := nbBits
		if count < max {
			n--
		}
		w.write(uint64(count), n)
		previous0 = count == 1
		for remaining < threshold {
			nbBits--
			threshold >>= 1
		}
	}
	return w.flush()
}

// bitWriter appends a little-endian bit stream.
type bitWriter struct {
	b   []byte
	acc uint64
	n   int
}

func (w *bitWriter) write(v uint64, n int) {
	w.acc |= v << w.n
	w.n += n
	for w.n >= 8 {
		w.b = append(w.b, byte(w.acc))
		w.acc >>= 8
		w.n -= 8
	}
}

func (w *bitWriter) flush() []byte {
	if w.n > 0 {
		w.b = append(w.b, byte(w.acc))
	}
	return w.b
}

// fseTable is a decoding table: per state, its symbol, the bits to read for the next
// state and the baseline they add to.
type fseTable struct {
	log   int
	state []fseState
}

type fseState struct {
	symbol uint8
	nbBits uint8
	base   uint16
}

// table builds d's decoding table (RFC 8878 4.1.1, "FSE table").
func (d distribution) table() (fseTable, error) {
	size := 1 << d.log
	t := fseTable{log: d.log, state: make([]fseState, size)}
	next := make([]int, len(d.norm))
	high := size - 1
	for s, c := range d.norm {
		if c == -1 {
			t.state[high].symbol = uint8(s)
			high--
			next[s] = 1
		} else {
			next[s] = int(c)
		}
	}
	step := size>>1 + size>>3 + 3
	pos := 0
	for s, c := range d.norm {
		for range max(c, 0) {
			t.state[pos].symbol = uint8(s)
			for pos = (pos + step) & (size - 1); pos > high; pos = (pos + step) & (size - 1) {
			}
		}
	}
	if pos != 0 {
		return t, fmt.Errorf("%w: probabilities do not fill the table", errTable)
	}
	for u := range t.state {
		st := &t.state[u]
		n := next[st.symbol]
		next[st.symbol]++
		st.nbBits = uint8(d.log - (bits.Len(uint(n)) - 1))
		st.base = uint16(n<<st.nbBits - size)
	}
	return t, nil
}
