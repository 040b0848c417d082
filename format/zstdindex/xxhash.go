package zstdindex

import (
	"encoding/binary"
	"math/bits"
)

// xxh64 is XXH64 with seed 0, the hash of a frame's checksum (RFC 8878 3.1.1: its low
// 32 bits), streaming. Written out here so that the package needs compression only.
type xxh64 struct {
	v     [4]uint64
	total uint64
	buf   [32]byte
	n     int
}

const (
	prime1 uint64 = 11400714785074694791
	prime2 uint64 = 14029467366897019727
	prime3 uint64 = 1609587929392839161
	prime4 uint64 = 9650029242287828579
	prime5 uint64 = 2870177450012600261
)

func (h *xxh64) Reset() {
	p1, p2 := prime1, prime2 // variables: the sums wrap, as the algorithm wants
	*h = xxh64{v: [4]uint64{p1 + p2, p2, 0, -p1}}
}

func round(acc, in uint64) uint64 {
	return bits.RotateLeft64(acc+in*prime2, 31) * prime1
}

func mergeRound(acc, v uint64) uint64 {
	return (acc^round(0, v))*prime1 + prime4
}

func (h *xxh64) Write(p []byte) {
	h.total += uint64(len(p))
	if h.n > 0 {
		k := copy(h.buf[h.n:], p)
		h.n += k
		p = p[k:]
		if h.n < 32 {
			return
		}
		h.stripes(h.buf[:])
		h.n = 0
	}
	k := len(p) &^ 31
	h.stripes(p[:k])
	h.n = copy(h.buf[:], p[k:])
}

func (h *xxh64) stripes(p []byte) {
	for ; len(p) >= 32; p = p[32:] {
		for i := range h.v {
			h.v[i] = round(h.v[i], binary.LittleEndian.Uint64(p[8*i:]))
		}
	}
}

func (h *xxh64) Sum64() uint64 {
	var acc uint64
	if h.total >= 32 {
		v := h.v
		acc = bits.RotateLeft64(v[0], 1) + bits.RotateLeft64(v[1], 7) + bits.RotateLeft64(v[2], 12) + bits.RotateLeft64(v[3], 18)
		for _, x := range v {
			acc = mergeRound(acc, x)
		}
	} else {
		acc = h.v[2] + prime5
	}
	acc += h.total
	p := h.buf[:h.n]
	for ; len(p) >= 8; p = p[8:] {
		acc ^= round(0, binary.LittleEndian.Uint64(p))
		acc = bits.RotateLeft64(acc, 27)*prime1 + prime4
	}
	if len(p) >= 4 {
		acc ^= uint64(binary.LittleEndian.Uint32(p)) * prime1
		acc = bits.RotateLeft64(acc, 23)*prime2 + prime3
		p = p[4:]
	}
	for _, c := range p {
		acc ^= uint64(c) * prime5
		acc = bits.RotateLeft64(acc, 11) * prime1
	}
	acc ^= acc >> 33
	acc *= prime2
	acc ^= acc >> 29
	acc *= prime3
	acc ^= acc >> 32
	return acc
}
