package store

import (
	"runtime"
	"sync"
	"weak"

	"lazypull/format"
)

// indexes shares decoded layer indexes by the digest of their payload. Images on a node
// share their base layers, and a daemon that opens each image on its own reads the index
// of a shared layer once per image: decoded, each copy of the python test image's two
// indexes is about 2 MiB of heap, so ten images of one base held ten copies, most of the
// snapshotter's memory (docs/benchmarks.md, lazypull-bench snapshotter). An Index is
// never changed once decoded (Lookup's map is built under a sync.Once), so callers can
// share it. The table holds weak pointers: an index nobody uses is collected as before,
// and its entry is dropped then.
type indexes struct {
	m sync.Map // format.Digest -> weak.Pointer[format.Index]
}

// ShareIndex returns the Index callers should use for the index decoded as ix from the
// payload with digest d (verified by format's readers): ix, or the one decoded before from
// the same payload and still in use, by any image of the store. The payload is still read
// and verified on every open; what is shared is the decoded copy kept.
func (s *Store) ShareIndex(d format.Digest, ix *format.Index) *format.Index {
	return s.indexes.share(d, ix)
}

// SharedIndex returns the decoded index of the payload with digest d that an image of the
// store still uses (ShareIndex), or nil: a caller that needs the index of a layer another
// open image has (the delta of an update, daemon/delta.go) takes it without reading and
// decoding the payload again.
func (s *Store) SharedIndex(d format.Digest) *format.Index {
	v, ok := s.indexes.m.Load(d)
	if !ok {
		return nil
	}
	return v.(weak.Pointer[format.Index]).Value()
}

func (t *indexes) share(d format.Digest, ix *format.Index) *format.Index {
	wp := weak.Make(ix)
	for {
		v, loaded := t.m.LoadOrStore(d, wp)
		if !loaded {
			break
		}
		if old := v.(weak.Pointer[format.Index]).Value(); old != nil {
			return old
		}
		if t.m.CompareAndSwap(d, v, wp) { // the old one was collected
			break
		}
	}
	// The cleanup must not reference ix, or ix would never be collected.
	runtime.AddCleanup(ix, func(d format.Digest) { t.m.CompareAndDelete(d, wp) }, d)
	return ix
}

// shared reports whether an index of digest d is in the table.
func (t *indexes) shared(d format.Digest) bool {
	_, ok := t.m.Load(d)
	return ok
}
