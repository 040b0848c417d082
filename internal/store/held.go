package store

import (
	"context"
	"fmt"
	"iter"

	"lazypull/format"
)

// Held is what the store holds of some files and metadata (HeldOf).
type Held struct {
	Bytes   int64 // of the files' objects or local chunks, and of the metadata
	Objects int   // files complete, standalone chunk objects and metadata counted
}

// HeldOf counts what the store holds of files and of the metadata meta, each counted once:
// a complete file's object, else the chunks of it that are local (objects of their own, or
// ranges of multi-chunk objects). It reads the index under the lock and touches no file
// and no access time, so that it can be called often (a snapshot's Usage, polled).
func (s *Store) HeldOf(files iter.Seq[File], meta ...format.Digest) Held {
	var h Held
	if !s.enter() {
		return h
	}
	defer s.exit()
	seen := make(map[format.Digest]bool)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range meta {
		if o := s.metas[d]; o != nil && !seen[d] {
			seen[d] = true
			h.Bytes += o.size
			h.Objects++
		}
	}
	for f := range files {
		if seen[f.Digest] {
			continue
		}
		seen[f.Digest] = true
		if o := s.objects[f.Digest]; o != nil {
			h.Bytes += o.size
			h.Objects++
			continue
		}
		for _, c := range f.Chunks {
			if seen[c.Digest] {
				continue
			}
			o, _, ok := s.locateLocked(c)
			if !ok {
				continue
			}
			seen[c.Digest] = true
			h.Bytes += c.Size
			if o.digest == c.Digest {
				h.Objects++
			}
		}
	}
	return h
}

// Changes counts the additions and removals of objects and metadata since Open: a caller
// that caches HeldOf's answer counts again only when it moved.
func (s *Store) Changes() uint64 { return s.changes.Load() }

// Keep is what a prune leaves whatever its target: files (their objects, and the objects
// that hold their chunks) and metadata by digest.
type Keep struct {
	Files []File
	Meta  []format.Digest
	// AllMeta keeps every manifest and index: for a prune that cannot tell which images
	// are in use.
	AllMeta bool
}

// PruneKeeping is Prune that also leaves what keep names, pinned for the prune's time.
func (s *Store) PruneKeeping(ctx context.Context, target int64, keep Keep) (PruneResult, error) {
	if target < 0 {
		return PruneResult{}, fmt.Errorf("store prune: target %d: must not be negative", target)
	}
	l := s.NewLease()
	defer l.Release()
	for _, f := range keep.Files {
		l.Pin(f)
	}
	var holders []format.Digest
	s.mu.Lock()
	// A chunk that a multi-chunk object of another file holds: that object stays too.
	for _, f := range keep.Files {
		for _, c := range f.Chunks {
			if loc, ok := s.chunks[c.Digest]; ok && !loc.obj.dead && loc.obj.digest != f.Digest {
				bump(s.filePins, loc.obj.digest, 1)
				holders = append(holders, loc.obj.digest)
			}
		}
	}
	if keep.AllMeta {
		keep.Meta = keep.Meta[:len(keep.Meta):len(keep.Meta)]
		for d := range s.metas {
			keep.Meta = append(keep.Meta, d)
		}
	}
	for _, d := range keep.Meta {
		bump(s.metaPins, d, 1)
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		for _, d := range holders {
			bump(s.filePins, d, -1)
		}
		for _, d := range keep.Meta {
			bump(s.metaPins, d, -1)
		}
		s.mu.Unlock()
	}()
	return s.Prune(ctx, target)
}
