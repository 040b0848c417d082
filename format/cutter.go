package format

import "lazypull/format/chunker"

// DefaultCutter cuts file content with content-defined chunking at chunker.DefaultParams
// (32 KiB minimum, 128 KiB average, 512 KiB maximum): small enough that a start-up read
// fetches little more than it needs, large enough that a 1 GiB file has ~8k chunks.
var DefaultCutter Cutter = CDC(chunker.DefaultParams)

// CDC returns a Cutter with the given content-defined chunking parameters.
func CDC(p chunker.Params) Cutter { return cdc(p) }

type cdc chunker.Params

func (c cdc) Cut(data []byte, final bool) int {
	n, ok := chunker.Cut(chunker.Params(c), data, final)
	if !ok && final {
		return len(data)
	}
	return n
}

func (c cdc) MaxChunk() int { return c.Max }
