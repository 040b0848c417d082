package format

import (
	"runtime"
	"sync"
	"weak"
)

// Decoded indexes are shared within a process. Images on a node share their base layers,
// and a daemon that opens each image on its own reads the index of a shared layer once per
// image: decoded, each copy of the python test image's two indexes is about 2 MiB of heap,
// so ten images of one base held ten copies, most of the snapshotter's memory
// (docs/benchmarks.md, lazypull-bench snapshotter). ReadIndex still reads and verifies the
// payload every time; when the verified digest is that of an index decoded before and
// still in use, it returns that Index instead of decoding another. An Index is never
// changed once decoded (Lookup's map is built under a sync.Once), so callers can share it.
// The table holds weak pointers: an index nobody uses is collected as before, and its
// entry is dropped then.
var sharedIndexes sync.Map // Digest -> weak.Pointer[Index]

// sharedIndex returns the live Index decoded from the payload with digest d, if any.
func sharedIndex(d Digest) *Index {
	if v, ok := sharedIndexes.Load(d); ok {
		return v.(weak.Pointer[Index]).Value()
	}
	return nil
}

// shareIndex records ix as the Index of digest d and returns the Index callers should use:
// ix, or the one another caller decoded from the same payload meanwhile.
func shareIndex(d Digest, ix *Index) *Index {
	wp := weak.Make(ix)
	for {
		v, loaded := sharedIndexes.LoadOrStore(d, wp)
		if !loaded {
			break
		}
		if old := v.(weak.Pointer[Index]).Value(); old != nil {
			return old
		}
		if sharedIndexes.CompareAndSwap(d, v, wp) { // the old one was collected
			break
		}
	}
	// The cleanup must not reference ix, or ix would never be collected.
	runtime.AddCleanup(ix, func(d Digest) { sharedIndexes.CompareAndDelete(d, wp) }, d)
	return ix
}
