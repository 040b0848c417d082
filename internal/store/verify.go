package store

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"

	"lazypull/format"
)

// VerifyResult says what Verify checked and what it removed.
type VerifyResult struct {
	Objects   int   // objects hashed
	Bytes     int64 // bytes hashed
	Bad       int   // objects that did not match their digest, removed
	Chunks    int   // chunk locations inside multi-chunk objects checked
	BadChunks int   // chunk locations that did not match, forgotten
}

// Verify hashes every object and every chunk location the store knows and drops whatever
// does not match its digest. Reads go on meanwhile. Nothing the store wrote can fail this
// (see doc.go); it is there for damage from outside: a bad disk, a hand edit.
func (s *Store) Verify(ctx context.Context) (VerifyResult, error) {
	var r VerifyResult
	s.mu.Lock()
	objs := make([]*object, 0, len(s.objects))
	for _, o := range s.objects {
		o.refs++
		objs = append(objs, o)
	}
	s.mu.Unlock()
	defer func() {
		for _, o := range objs {
			s.release(o)
		}
	}()
	buf := make([]byte, 1<<20)
	for _, o := range objs {
		if err := ctx.Err(); err != nil {
			return r, err
		}
		got, n, err := s.hashRange(o, 0, o.size, buf)
		r.Objects++
		r.Bytes += n
		if err == nil && got == o.digest {
			continue
		}
		r.Bad++
		s.log.Warn("store: object does not match its digest; removing it", "object", o.digest, "got", got, "err", err)
		s.mu.Lock()
		rerr := s.removeLocked(o)
		s.mu.Unlock()
		if rerr != nil {
			return r, rerr
		}
	}

	type loc struct {
		d format.Digest
		l chunkLoc
	}
	var locs []loc
	s.mu.Lock()
	for d, l := range s.chunks {
		if !l.obj.dead && !l.obj.filling() { // a filling's chunks were verified as written
			locs = append(locs, loc{d, l})
		}
	}
	s.mu.Unlock()
	for _, x := range locs {
		if err := ctx.Err(); err != nil {
			return r, err
		}
		got, _, err := s.hashRange(x.l.obj, x.l.off, x.l.size, buf)
		if err != nil && x.l.obj.dead {
			continue // evicted meanwhile
		}
		r.Chunks++
		if err == nil && got == x.d {
			continue
		}
		r.BadChunks++
		s.log.Warn("store: chunk location does not match the chunk; forgetting it", "chunk", x.d, "object", x.l.obj.digest, "offset", x.l.off, "err", err)
		s.mu.Lock()
		if s.chunks[x.d] == x.l {
			delete(s.chunks, x.d)
			s.changes.Add(1)
		}
		s.mu.Unlock()
	}
	return r, nil
}

// hashRange hashes n bytes of an object from off; a short object is an error.
func (s *Store) hashRange(o *object, off, n int64, buf []byte) (format.Digest, int64, error) {
	f, err := s.openObject(o)
	if err != nil {
		return format.Digest{}, 0, err
	}
	defer f.Close()
	h := sha256.New()
	k, err := io.CopyBuffer(h, io.NewSectionReader(f, off, n), buf)
	if err == nil && k != n {
		err = fmt.Errorf("%d bytes at %d: %w", n, off, io.ErrUnexpectedEOF)
	}
	if err == nil {
		// A longer file does not match either: its digest covers all of it.
		if off == 0 && n == o.size {
			if st, serr := f.Stat(); serr == nil && st.Size() != n {
				err = fmt.Errorf("object is %d bytes, was %d", st.Size(), n)
			}
		}
	}
	return format.Digest(h.Sum(nil)), k, err
}

// wrongSize handles an object whose size is not the one a reader's index gives its digest
// (o is held). Either the object was damaged on disk, or the index is wrong about the
// content its digest names; the object is hashed to tell. A damaged object is removed, and
// wrongSize returns nil: the caller fetches. An intact one stays, and the read fails
// wrapping ErrCorrupt: no byte of it is served as a file of another size.
func (s *Store) wrongSize(o *object, f File) error {
	got, _, err := s.hashRange(o, 0, o.size, make([]byte, 1<<20))
	if err == nil && got == o.digest {
		s.st.corrupt.Add(1)
		return fmt.Errorf("store read %s: the index says %d bytes, the content with that digest has %d: %w", f.Digest, f.Size, o.size, ErrCorrupt)
	}
	s.log.Warn("store: object does not match its digest; removing it", "object", o.digest, "size", o.size, "index_size", f.Size, "err", err)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.removeLocked(o)
}
