package store

import (
	"context"
	"fmt"
	"sync"
	"time"

	"lazypull/format"
)

// Lease pins files against eviction: a mount holds one, pins the files it serves (or has
// open) and releases it on unmount. Pinning a file pins its object and the objects of its
// chunks, so a file that is only partly local keeps what it has. Pins count: a file two
// leases pin stays until both unpin it. A Lease is safe for concurrent use.
type Lease struct {
	s        *Store
	mu       sync.Mutex
	files    map[format.Digest]*leased
	released bool
}

type leased struct {
	n int
	f File
}

// NewLease returns an empty lease.
func (s *Store) NewLease() *Lease {
	return &Lease{s: s, files: make(map[format.Digest]*leased)}
}

// Pin keeps f, and the chunks it is made of, from eviction until Unpin or Release. A file
// need not be local to be pinned: what arrives later is kept too.
func (l *Lease) Pin(f File) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released {
		return
	}
	if e := l.files[f.Digest]; e != nil {
		e.n++
		return
	}
	l.files[f.Digest] = &leased{n: 1, f: f}
	l.s.pin(f, 1)
}

// Unpin undoes one Pin of f.
func (l *Lease) Unpin(f File) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.files[f.Digest]
	if e == nil {
		return
	}
	if e.n--; e.n == 0 {
		delete(l.files, f.Digest)
		l.s.pin(e.f, -1)
	}
}

// Release unpins everything the lease pins; the lease pins nothing after.
func (l *Lease) Release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released {
		return
	}
	l.released = true
	for _, e := range l.files {
		l.s.pin(e.f, -1)
	}
	l.files = nil
	l.s.mu.Lock()
	l.s.enforceLocked()
	l.s.mu.Unlock()
}

func (s *Store) pin(f File, delta int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	bump(s.filePins, f.Digest, delta)
	for _, c := range f.Chunks {
		bump(s.chunkPins, c.Digest, delta)
	}
}

func bump(m map[format.Digest]int, d format.Digest, delta int) {
	if n := m[d] + delta; n > 0 {
		m[d] = n
	} else {
		delete(m, d)
	}
}

func (s *Store) pinnedLocked(o *object) bool {
	return s.filePins[o.digest] > 0 || s.chunkPins[o.digest] > 0 || (o.meta && s.metaPins[o.digest] > 0)
}

// enforceLocked keeps the bound, after an object was added or pins were released.
func (s *Store) enforceLocked() {
	if s.maxBytes == 0 || s.bytes <= s.maxBytes {
		return
	}
	s.evictLocked(s.maxBytes)
	if s.bytes > s.maxBytes && time.Since(s.lastOver) >= warnEvery {
		s.lastOver = time.Now()
		s.log.Warn("store: over its bound: the rest is pinned by mounts or being read", "dir", s.dir, "bytes", s.bytes, "max_bytes", s.maxBytes)
	}
}

// evictLocked removes least recently used objects that are neither pinned nor being read
// until the store holds at most target bytes, and returns what it removed.
func (s *Store) evictLocked(target int64) (n int, bytes int64) {
	for e := s.lru.Back(); e != nil && s.bytes > target; {
		o := e.Value.(*object)
		e = e.Prev()
		if o.refs > 0 || s.pinnedLocked(o) {
			continue
		}
		if err := s.removeLocked(o); err != nil {
			s.log.Warn("store: cannot evict", "err", err)
			continue
		}
		n++
		bytes += o.size
	}
	s.st.evictions.Add(int64(n))
	s.st.evictedBytes.Add(bytes)
	return n, bytes
}

// PruneResult says what Prune removed.
type PruneResult struct {
	Objects int // objects and metadata
	Bytes   int64
}

// Prune evicts least recently used objects that no Lease pins and no read is using until
// the store holds at most target bytes; Prune(ctx, 0) drops everything unpinned.
func (s *Store) Prune(ctx context.Context, target int64) (PruneResult, error) {
	var r PruneResult
	if target < 0 {
		return r, fmt.Errorf("store prune: target %d: must not be negative", target)
	}
	if !s.enter() {
		return r, ErrClosed
	}
	defer s.exit()
	for {
		if err := ctx.Err(); err != nil {
			return r, err
		}
		// In steps, so that reads are not held up behind a long prune.
		s.mu.Lock()
		step := max(target, s.bytes-64<<20)
		n, b := s.evictLocked(step)
		done := n == 0 || s.bytes <= target
		s.mu.Unlock()
		r.Objects += n
		r.Bytes += b
		if done {
			return r, nil
		}
	}
}
