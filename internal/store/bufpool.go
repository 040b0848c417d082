package store

import (
	"math/bits"
	"sync"
)

// chunkBufs recycles the buffers verified chunks are decoded into. A cold sequential read
// decodes every byte into a fresh buffer, and Go zeroes each one before the decoder
// overwrites it: 0.26 CPU s per GiB, more on a busy machine, where memclr competes for
// memory bandwidth. Buffers are kept by size class (powers of two from 64 KiB to 1 MiB,
// the default chunker's chunks being at most 512 KiB); larger chunks are allocated.
//
// A buffer goes back only when nobody can read it any more (flight.holds): the writer has
// stored its chunk, every read that planned to copy from it has copied or given up, and
// the flight is out of Store.flights, so no read can join it.
type chunkBufs struct {
	classes [chunkClasses]sync.Pool // of *[]byte
	// poison (tests) overwrites each buffer handed back, so that a read served from a
	// buffer recycled too early serves wrong bytes, which the tests compare.
	poison bool
}

const (
	minChunkClass = 16 // 64 KiB
	chunkClasses  = 5  // 64 KiB .. 1 MiB
)

// chunkClass returns the size class of an n-byte chunk, or -1 for one not pooled.
func chunkClass(n int64) int {
	if n <= 0 || n > 1<<(minChunkClass+chunkClasses-1) {
		return -1
	}
	c := max(bits.Len64(uint64(n-1)), minChunkClass) - minChunkClass
	return c
}

// get returns a buffer of capacity at least n (length 0) and what to hand back to put; nil
// for a size not pooled.
func (p *chunkBufs) get(n int64) ([]byte, *[]byte) {
	c := chunkClass(n)
	if c < 0 {
		return nil, nil
	}
	if b, ok := p.classes[c].Get().(*[]byte); ok {
		return (*b)[:0], b
	}
	b := make([]byte, 0, 1<<(minChunkClass+c))
	return b, &b
}

// put hands a buffer from get back; nil is ignored.
func (p *chunkBufs) put(b *[]byte) {
	if b == nil {
		return
	}
	if c := chunkClass(int64(cap(*b))); c >= 0 && cap(*b) == 1<<(minChunkClass+c) {
		if p.poison {
			full := (*b)[:cap(*b)]
			for i := range full {
				full[i] = 0xa5
			}
		}
		p.classes[c].Put(b)
	}
}
