package format

// DefaultCutter cuts content into chunks; replaced by content-defined chunking.
var DefaultCutter Cutter = fixedCutter(256 << 10)

type fixedCutter int

func (f fixedCutter) Cut(data []byte, final bool) int { return min(len(data), int(f)) }
func (f fixedCutter) MaxChunk() int                   { return int(f) }
