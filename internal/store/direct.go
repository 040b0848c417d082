package store

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"lazypull/format"
)

// filling is a multi-chunk file being written straight into one temp file of its size
// (tmp/object-N): each verified chunk is written at its offsets, the file's sha256 is
// computed over the prefix of chunks present as it grows, and when every chunk is in, the
// file is fsynced once and renamed to its digest. No object per chunk, no copy, no re-read.
// Which chunks it holds is kept in memory only: the temp file is removed by Open, so a
// crash costs the fetch of what it held, never a wrong byte. Its object (Store.fills) is in
// the LRU order and the bound with the bytes it holds, and its chunks are found through
// Store.chunks, like those of a complete multi-chunk object.
type filling struct {
	tmp     string
	renamed atomic.Bool // the temp file is the object now (pathOf)

	mu   sync.Mutex // guards what follows; taken before Store.mu
	f    File
	w    *os.File // for writing; closed once complete, or when the object is dead and unused
	at   map[format.Digest][]int
	have []bool
	next int // chunks [0, next) are hashed into h
	h    hash.Hash
	buf  []byte
}

// direct says a fetched chunk of this file goes into the file's filling: chunks fetched
// ahead of a sequential reader, or to make the file complete (Fill).
func direct(fl *flight) bool { return fl.direct && len(fl.file.Chunks) > 1 }

// storeDirect writes a verified chunk into its file's filling (on a writer goroutine).
// handled is false when the chunk is to be stored as an object of its own instead: the
// file is being filled as cut into other chunks (the same content, another index).
func (s *Store) storeDirect(fl *flight, data []byte) (handled bool, err error) {
	o, err := s.fillOf(fl.file)
	if err != nil || o == nil {
		return true, err
	}
	defer s.release(o)
	fi := o.fill
	if !slices.Equal(fi.f.Chunks, fl.file.Chunks) {
		return false, nil
	}
	fi.mu.Lock()
	off, added, err := fi.put(fl.c, data)
	if err == nil {
		err = s.fillGaps(o)
	}
	fi.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		// A file that cannot be written further (a full disk) is dropped, its space with it.
		if rerr := s.removeLocked(o); rerr != nil {
			s.log.Warn("store: cannot remove a partly filled file", "err", rerr)
		}
		return true, err
	}
	if o.dead || added == 0 {
		return true, nil
	}
	o.size += added
	s.bytes += added
	s.chunks[fl.c.Digest] = chunkLoc{obj: o, off: off, size: fl.c.Size}
	s.changes.Add(1)
	s.enforceLocked()
	return true, nil
}

// fillOf returns f's filling object, held, making it if need be; nil when f is complete.
func (s *Store) fillOf(f File) (*object, error) {
	for {
		s.mu.Lock()
		if s.objects[f.Digest] != nil {
			s.mu.Unlock()
			return nil, nil
		}
		if o := s.fills[f.Digest]; o != nil {
			o.refs++
			s.touchLocked(o)
			s.mu.Unlock()
			return o, nil
		}
		s.mu.Unlock()
		fi, rd, err := s.newFilling(f)
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		if s.objects[f.Digest] != nil || s.fills[f.Digest] != nil {
			s.mu.Unlock()
			_ = rd.Close()
			_ = fi.w.Close()
			_ = os.Remove(fi.tmp)
			continue
		}
		o := &object{digest: f.Digest, stamp: time.Now().Unix(), fill: fi, refs: 1}
		o.elem = s.lru.PushFront(o)
		o.fd, o.fdElem = rd, s.fds.PushFront(o)
		s.fills[f.Digest] = o
		s.mu.Unlock()
		return o, nil
	}
}

func (s *Store) newFilling(f File) (*filling, *os.File, error) {
	w, err := os.CreateTemp(s.path(tmpName), objectTemp)
	if err != nil {
		return nil, nil, err
	}
	rd, err := os.Open(w.Name())
	if err == nil {
		err = w.Truncate(f.Size)
	}
	if err != nil {
		if rd != nil {
			_ = rd.Close()
		}
		_ = w.Close()
		_ = os.Remove(w.Name())
		return nil, nil, err
	}
	fi := &filling{tmp: w.Name(), f: f, w: w, at: make(map[format.Digest][]int), have: make([]bool, len(f.Chunks)), h: sha256.New()}
	for i, c := range f.Chunks {
		fi.at[c.Digest] = append(fi.at[c.Digest], i)
	}
	return fi, rd, nil
}

// put writes a verified chunk at each of its offsets not written yet and hashes the
// prefix as far as it now reaches. off is the chunk's first offset; added the bytes new.
func (fi *filling) put(c format.Chunk, data []byte) (off, added int64, err error) {
	idx := fi.at[c.Digest]
	if len(idx) == 0 {
		return 0, 0, fmt.Errorf("chunk %s is not in file %s", c.Digest, fi.f.Digest)
	}
	off = fi.f.Chunks[idx[0]].FileOffset
	for _, i := range idx {
		if fi.have[i] {
			continue
		}
		if _, err := fi.w.WriteAt(data, fi.f.Chunks[i].FileOffset); err != nil {
			return off, added, err
		}
		fi.have[i] = true
		added += int64(len(data))
	}
	return off, added, fi.advance(c.Digest, data)
}

// advance hashes the chunks present from next on, in order: the one just written from
// memory, those that came before their turn from the temp file (the page cache).
func (fi *filling) advance(d format.Digest, data []byte) error {
	for fi.next < len(fi.have) && fi.have[fi.next] {
		c := fi.f.Chunks[fi.next]
		if c.Digest == d {
			fi.h.Write(data)
		} else {
			if int64(cap(fi.buf)) < c.Size {
				fi.buf = make([]byte, c.Size)
			}
			b := fi.buf[:c.Size]
			if _, err := fi.w.ReadAt(b, c.FileOffset); err != nil {
				return fmt.Errorf("read back chunk %s: %w", c.Digest, err)
			}
			fi.h.Write(b)
		}
		fi.next++
	}
	return nil
}

// completeFill completes f from its filling, if it has one (done false otherwise): the
// chunks it lacks are copied from where they lie (shared with other files, or stored
// before), the rest of the file is hashed, checked against f's digest, fsynced, recorded
// in the chunk log and renamed into place.
func (s *Store) completeFill(ctx context.Context, f File) (done bool, err error) {
	s.mu.Lock()
	o := s.fills[f.Digest]
	if o == nil || o.dead {
		s.mu.Unlock()
		return false, nil
	}
	o.refs++
	s.mu.Unlock()
	defer s.release(o)
	fi := o.fill
	fi.mu.Lock()
	defer fi.mu.Unlock()
	if fi.w == nil {
		return true, nil // completed meanwhile
	}
	if err := s.copyMissing(ctx, o); err != nil {
		return true, fmt.Errorf("complete file %s: %w", f.Digest, err)
	}
	if err := fi.advance(format.Digest{}, nil); err != nil {
		return true, fmt.Errorf("complete file %s: %w", f.Digest, err)
	}
	if got := format.Digest(fi.h.Sum(nil)); got != f.Digest {
		s.log.Warn("store: a file's chunks do not hash to its digest; dropping it", "file", f.Digest, "got", got)
		s.mu.Lock()
		_ = s.removeLocked(o)
		s.mu.Unlock()
		return true, fmt.Errorf("complete file %s in %s: its chunks hash to %s: %w", f.Digest, s.dir, got, ErrCorrupt)
	}
	err = fi.w.Sync()
	if err == nil {
		err = fi.w.Chmod(0o444)
	}
	if err == nil {
		// Before the rename: a record whose object never appeared is ignored by Open.
		err = s.clog.append(recordOf(f))
	}
	if err == nil {
		err = s.commitFill(o)
	}
	if err != nil {
		return true, fmt.Errorf("complete file %s in %s: %w", f.Digest, s.dir, err)
	}
	_ = fi.w.Close()
	fi.w = nil
	s.dropParts(f, o)
	return true, nil
}

// copyMissing copies into o's filling the chunks it lacks from wherever they lie.
func (s *Store) copyMissing(ctx context.Context, o *object) error {
	for i := range o.fill.f.Chunks {
		if o.fill.have[i] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := s.copyIn(o, i); err != nil {
			return err
		}
	}
	return nil
}

// fillGaps copies into o's filling the chunks that stop its hashed prefix and are stored
// elsewhere already (the first chunks of a sequential read, which plain reads store as
// objects of their own, before the read-ahead starts), and hashes on: the file's sha256
// then keeps up with the chunks as they come, from memory, instead of re-reading the
// whole file when it completes. Best effort: completeFill copies what is left. fi.mu held.
func (s *Store) fillGaps(o *object) error {
	fi := o.fill
	moved := false
	for fi.next < len(fi.have) && !fi.have[fi.next] && s.copyIn(o, fi.next) == nil {
		moved = true
	}
	if !moved {
		return nil
	}
	return fi.advance(format.Digest{}, nil)
}

// copyIn copies chunk i of o's filling from where it lies in the store (errMissing if
// nowhere). fi.mu held.
func (s *Store) copyIn(o *object, i int) error {
	fi := o.fill
	c := fi.f.Chunks[i]
	s.mu.Lock()
	p, off, ok := s.locateLocked(c)
	if ok && p == o {
		ok = false // a location in this very file that was not written: cannot be
	}
	if ok {
		p.refs++
	}
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("chunk %s: %w", c.Digest, errMissing)
	}
	r, err := s.file(p)
	if err == nil {
		err = copyRange(fi.w, r, off, c.FileOffset, c.Size)
	}
	s.release(p)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("chunk %s: %w", c.Digest, errMissing)
	}
	if err != nil {
		return fmt.Errorf("copy chunk %s from object %s: %w", c.Digest, p.digest, err)
	}
	fi.have[i] = true
	s.mu.Lock()
	if !o.dead {
		o.size += c.Size
		s.bytes += c.Size
	}
	s.mu.Unlock()
	return nil
}

// commitFill renames a complete, verified, synced filling into place as its object.
func (s *Store) commitFill(o *object) error {
	fi := o.fill
	p := s.objectPath(o.digest)
	s.mu.Lock()
	defer s.mu.Unlock()
	if o.dead {
		return fmt.Errorf("evicted while completed: %w", errMissing)
	}
	if s.objects[o.digest] != nil {
		return s.removeLocked(o)
	}
	err := os.Rename(fi.tmp, p)
	if errors.Is(err, fs.ErrNotExist) {
		// Its two-hex directory was removed by hand (Open makes them all); a rare
		// case, made again under the lock.
		if err = s.remakeDir(p); err == nil {
			err = os.Rename(fi.tmp, p)
		}
	}
	if err != nil {
		return err
	}
	fi.renamed.Store(true)
	delete(s.fills, o.digest)
	s.objects[o.digest] = o
	s.bytes += fi.f.Size - o.size
	o.size = fi.f.Size
	o.composite = true
	for _, c := range fi.f.Chunks {
		s.chunks[c.Digest] = chunkLoc{obj: o, off: c.FileOffset, size: c.Size}
	}
	s.changes.Add(1)
	s.enforceLocked()
	return nil
}

// filling says o is a file being filled, not (yet) an object under objects/.
func (o *object) filling() bool { return o.fill != nil && !o.fill.renamed.Load() }
