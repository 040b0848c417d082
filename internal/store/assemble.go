package store

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"

	"lazypull/format"
)

// errMissing: a chunk an assembly needs is not (or no longer) local.
var errMissing = errors.New("chunk not local")

// LocalPath returns the path of a complete, verified copy of the whole file, if the store
// has one. The file at the path must only be read. It may be evicted as soon as LocalPath
// returns unless a Lease pins f; OpenLocal has no such window.
func (s *Store) LocalPath(f File) (string, bool) {
	s.mu.Lock()
	o := s.objects[f.Digest]
	stamp := o != nil && s.touchLocked(o)
	s.mu.Unlock()
	if o == nil {
		return "", false
	}
	if stamp {
		s.stamp(o)
	}
	return s.objectPath(f.Digest), true
}

// OpenLocal opens the complete local copy of the file read-only, for FUSE passthrough; the
// error wraps fs.ErrNotExist when there is none. Eviction may unlink the file while it is
// open: what is open stays readable until closed (its space is freed then).
func (s *Store) OpenLocal(f File) (*os.File, error) {
	if !s.enter() {
		return nil, ErrClosed
	}
	defer s.exit()
	o := s.acquire(f.Digest)
	if o == nil {
		return nil, fmt.Errorf("store %s: file %s: %w", s.dir, f.Digest, fs.ErrNotExist)
	}
	defer s.release(o)
	if o.size != f.Size {
		return nil, fmt.Errorf("store %s: file %s: the object has %d bytes, the index says %d: %w", s.dir, f.Digest, o.size, f.Size, ErrCorrupt)
	}
	r, err := os.Open(s.objectPath(f.Digest))
	if errors.Is(err, fs.ErrNotExist) {
		s.mu.Lock()
		s.forgetLocked(o)
		s.mu.Unlock()
	}
	if err != nil {
		return nil, fmt.Errorf("store %s: open file %s: %w", s.dir, f.Digest, err)
	}
	return r, nil
}

// Fill makes each file complete in the store: it fetches every chunk that is not local,
// for all the files at once in one Fetch call (so that the source can coalesce ranges),
// then assembles each multi-chunk file from its chunks, wherever they are. Chunks are
// pinned while Fill runs; pin the files with a Lease to keep them afterwards.
func (s *Store) Fill(ctx context.Context, src Source, files ...File) error {
	if !s.enter() {
		return ErrClosed
	}
	defer s.exit()
	for _, f := range files {
		if err := f.Validate(); err != nil {
			return fmt.Errorf("store fill: %w", err)
		}
	}
	l := s.NewLease()
	defer l.Release()
	for _, f := range files {
		l.Pin(f)
	}
	// Pins keep chunk objects, but a chunk may also move into another file's assembly,
	// which is not pinned: under pressure it can go before this file is assembled. Fetch
	// what went, and try again.
	for attempt := 1; ; attempt++ {
		if err := s.fetchMissing(ctx, src, files); err != nil {
			return err
		}
		var again []File
		var lost error
		for _, f := range files {
			err := s.assembleOrWait(ctx, f)
			if errors.Is(err, errMissing) {
				again, lost = append(again, f), err
				continue
			}
			if err != nil {
				return err
			}
		}
		if len(again) == 0 {
			return nil
		}
		if attempt == attempts {
			return fmt.Errorf("store fill: chunks were evicted before their files could be assembled, %d times; the store's bound (%d bytes) is too small for what is pinned and filled at once: %w", attempts, s.maxBytes, lost)
		}
		files = again
	}
}

// fetchMissing makes every chunk of the files (that are not complete already) local.
func (s *Store) fetchMissing(ctx context.Context, src Source, files []File) error {
	return s.fetchChunks(ctx, src, files, true, func(f File) []format.Chunk { return f.Chunks })
}

// fetchChunks makes local the chunks that chunksOf picks of each file (that is not
// complete already), with one Fetch call for all of them. direct: into the files'
// fillings (the files are to be made complete), not objects of their own.
func (s *Store) fetchChunks(ctx context.Context, src Source, files []File, direct bool, chunksOf func(File) []format.Chunk) error {
	for attempt := 1; ; attempt++ {
		var parts []part
		var mine []*flight
		seen := make(map[format.Digest]bool)
		for _, f := range files {
			s.mu.Lock()
			complete := s.objects[f.Digest] != nil
			s.mu.Unlock()
			if complete {
				continue
			}
			var need []format.Chunk
			for _, c := range chunksOf(f) {
				if !seen[c.Digest] {
					seen[c.Digest] = true
					need = append(need, c)
				}
			}
			p, m := s.plan(f, need, false)
			parts, mine = append(parts, p...), append(mine, m...)
		}
		for _, pt := range parts {
			if pt.o != nil {
				s.release(pt.o) // local: pinned by Fill's lease from here on
			}
		}
		if len(mine) > 0 {
			for _, fl := range mine {
				fl.direct = direct
			}
			s.fetch(ctx, src, mine, true)
		}
		again := false
		for _, pt := range parts {
			if pt.fl == nil {
				continue
			}
			select {
			case <-pt.fl.stored:
			case <-ctx.Done():
				return ctx.Err()
			}
			switch {
			case pt.fl.err != nil && ctx.Err() == nil && (errors.Is(pt.fl.err, context.Canceled) || errors.Is(pt.fl.err, context.DeadlineExceeded)):
				again = true
			case pt.fl.err != nil:
				return pt.fl.err
			case pt.fl.storeErr != nil:
				return pt.fl.storeErr
			}
		}
		if !again {
			return nil
		}
		if attempt == attempts {
			return fmt.Errorf("store fill: gave up after %d attempts: the readers that fetched chunks kept giving up", attempts)
		}
	}
}

// Want is a byte range of a file to make local (Prefetch).
type Want struct {
	File     File
	Off, Len int64
}

// Chunks are the chunks of w.File that hold bytes of its range.
func (w Want) Chunks() []format.Chunk {
	var out []format.Chunk
	for _, c := range w.File.Chunks {
		if c.FileOffset < w.Off+w.Len && w.Off < c.FileOffset+c.Size {
			out = append(out, c)
		}
	}
	return out
}

// Prefetch makes local the chunks that cover the wanted ranges, fetching all that are
// missing with one Fetch call (so that the source can coalesce them into few requests),
// and returns when they are stored. It is how a mount fetches a profile's reads before the
// workload asks for them: a read that needs a chunk while Prefetch fetches it waits for
// that fetch (the flight), it never fetches the chunk again. Unlike Fill, files are not
// made complete: only what the ranges cover is fetched. Pin the files with a Lease to keep
// the chunks.
func (s *Store) Prefetch(ctx context.Context, src Source, wants ...Want) error {
	if !s.enter() {
		return ErrClosed
	}
	defer s.exit()
	// The chunks each file needs, files in the order first wanted.
	var files []File
	need := map[format.Digest][]format.Chunk{}
	for i, w := range wants {
		if err := w.File.Validate(); err != nil {
			return fmt.Errorf("store prefetch: want %d: %w", i, err)
		}
		if w.Off < 0 || w.Len < 0 || w.Off > w.File.Size-w.Len {
			return fmt.Errorf("store prefetch: want %d: range %d+%d outside file %s of %d bytes", i, w.Off, w.Len, w.File.Digest, w.File.Size)
		}
		if _, ok := need[w.File.Digest]; !ok {
			files = append(files, w.File)
			need[w.File.Digest] = nil
		}
		need[w.File.Digest] = append(need[w.File.Digest], w.Chunks()...)
	}
	l := s.NewLease()
	defer l.Release()
	for _, f := range files {
		l.Pin(f)
	}
	return s.fetchChunks(ctx, src, files, false, func(f File) []format.Chunk { return need[f.Digest] })
}

// assembleOrWait makes f complete from local chunks, or waits for the assembly running.
func (s *Store) assembleOrWait(ctx context.Context, f File) error {
	if len(f.Chunks) == 0 {
		return s.putEmpty()
	}
	for {
		s.mu.Lock()
		// An assembly running may have renamed the file into place and not yet dropped
		// the parts: wait for it to end.
		if fl := s.assembling[f.Digest]; fl != nil {
			s.mu.Unlock()
			if err := fl.wait(ctx); err != nil {
				return err
			}
			if fl.err != nil && !errors.Is(fl.err, context.Canceled) {
				return fl.err
			}
			continue
		}
		if s.objects[f.Digest] != nil {
			s.mu.Unlock()
			return nil
		}
		fl := newFlight(format.Chunk{}, f)
		s.assembling[f.Digest] = fl
		s.mu.Unlock()
		err := s.assemble(ctx, f)
		s.endAssembly(f, fl, err)
		return err
	}
}

// putEmpty stores the empty file.
func (s *Store) putEmpty() error {
	s.mu.Lock()
	has := s.objects[emptyDigest] != nil
	s.mu.Unlock()
	if has {
		return nil
	}
	tmp, err := s.writeTemp(func(*os.File) error { return nil })
	if err == nil {
		_, err = s.commit(emptyDigest, tmp, 0, nil, nil)
	}
	if err != nil {
		return fmt.Errorf("store %s: empty file: %w", s.dir, err)
	}
	return nil
}

// maybeAssemble starts a background assembly of f once all its chunks are local (and it
// is not complete). It resumes its scan of f's chunks where the last one stopped, so a big
// file read in order costs O(chunks) in all, not per read; without a fetch since the last
// scan there is nothing new to look for.
func (s *Store) maybeAssemble(f File, fetched bool) {
	if len(f.Chunks) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.objects[f.Digest] != nil || s.assembling[f.Digest] != nil {
		return
	}
	cur, seen := s.progress[f.Digest]
	if seen && !fetched {
		return
	}
	for cur < len(f.Chunks) {
		if _, _, ok := s.locateLocked(f.Chunks[cur]); !ok {
			break
		}
		cur++
	}
	if cur < len(f.Chunks) {
		if len(s.progress) >= maxProgress {
			clear(s.progress)
		}
		s.progress[f.Digest] = cur
		return
	}
	delete(s.progress, f.Digest)
	if f.Validate() != nil {
		return // ReadAt checked the chunks it read; an inconsistent file is never stored
	}
	fl := newFlight(format.Chunk{}, f)
	s.assembling[f.Digest] = fl
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		var err error
		select {
		case s.asm <- struct{}{}:
			err = s.assemble(s.bgCtx, f)
			<-s.asm
		case <-s.bgCtx.Done():
			err = s.bgCtx.Err()
		}
		s.endAssembly(f, fl, err)
		switch {
		case err == nil, errors.Is(err, context.Canceled):
		case errors.Is(err, errMissing):
			s.log.Debug("store: assembly lost a chunk to eviction", "file", f.Digest, "err", err)
		case isFull(err):
			s.writeFailed("file "+f.Digest.String(), err)
		default:
			s.log.Warn("store: cannot assemble file", "file", f.Digest, "err", err)
		}
	}()
}

func (s *Store) endAssembly(f File, fl *flight, err error) {
	s.mu.Lock()
	if s.assembling[f.Digest] == fl {
		delete(s.assembling, f.Digest)
	}
	s.mu.Unlock()
	fl.finish(nil, nil, err)
	if err == nil {
		s.st.assembled.Add(1)
	}
}

// assemble writes f as one object from its local chunks (copy_file_range, so a filesystem
// with reflinks shares the blocks), verifies the whole against f's digest, records where
// its chunks lie, renames it into place and drops the chunk objects it now holds.
func (s *Store) assemble(ctx context.Context, f File) error {
	if done, err := s.completeFill(ctx, f); done || err != nil {
		return err // a file being filled is completed from its temp file instead
	}
	return s.assembleParts(ctx, f)
}

// assembleParts writes f as one object from its local chunks (assemble).
func (s *Store) assembleParts(ctx context.Context, f File) error {
	s.mu.Lock()
	if s.objects[f.Digest] != nil {
		s.mu.Unlock()
		return nil
	}
	parts := make([]part, len(f.Chunks))
	for i, c := range f.Chunks {
		o, off, ok := s.locateLocked(c)
		if !ok {
			s.mu.Unlock()
			for _, p := range parts[:i] {
				s.release(p.o)
			}
			return fmt.Errorf("assemble file %s: chunk %s: %w", f.Digest, c.Digest, errMissing)
		}
		o.refs++
		parts[i] = part{c: c, o: o, off: off}
	}
	s.mu.Unlock()
	held := true
	releaseAll := func() {
		if held {
			held = false
			for _, p := range parts {
				s.release(p.o)
			}
		}
	}
	defer releaseAll()

	var bad *part // a part whose bytes do not hash to its chunk: local damage
	tmp, err := s.writeTemp(func(w *os.File) error {
		srcs := make(map[*object]*os.File)
		defer func() {
			for _, r := range srcs {
				_ = r.Close()
			}
		}()
		for _, p := range parts {
			if err := ctx.Err(); err != nil {
				return err
			}
			r := srcs[p.o]
			if r == nil {
				var err error
				if r, err = s.openObject(p.o); err != nil {
					if errors.Is(err, fs.ErrNotExist) {
						return fmt.Errorf("chunk %s: %w", p.c.Digest, errMissing)
					}
					return err
				}
				srcs[p.o] = r
			}
			if err := copyRange(w, r, p.off, p.c.FileOffset, p.c.Size); err != nil {
				return fmt.Errorf("copy chunk %s from object %s: %w", p.c.Digest, p.o.digest, err)
			}
		}
		// Verify what was written, as a reader will read it.
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(w, 0, f.Size)); err != nil {
			return err
		}
		if got := format.Digest(h.Sum(nil)); got != f.Digest {
			for i := range parts {
				b := make([]byte, parts[i].c.Size)
				if _, err := w.ReadAt(b, parts[i].c.FileOffset); err != nil || sha256Sum(b) != parts[i].c.Digest {
					bad = &parts[i]
					return fmt.Errorf("chunk %s from object %s: %w", parts[i].c.Digest, parts[i].o.digest, ErrCorrupt)
				}
			}
			return fmt.Errorf("its chunks hash to %s: %w", got, ErrCorrupt)
		}
		return nil
	})
	if err != nil {
		if bad != nil {
			s.log.Warn("store: local data does not match its digest; removing it", "object", bad.o.digest, "chunk", bad.c.Digest)
			s.mu.Lock()
			_ = s.removeLocked(bad.o)
			s.mu.Unlock()
		}
		return fmt.Errorf("assemble file %s in %s: %w", f.Digest, s.dir, err)
	}
	releaseAll()
	if len(f.Chunks) > 1 {
		// Before the rename: a record whose object never appeared is ignored by Open.
		if err := s.clog.append(recordOf(f)); err != nil {
			_ = os.Remove(tmp)
			return fmt.Errorf("assemble file %s: %w", f.Digest, err)
		}
	}
	o, err := s.commit(f.Digest, tmp, f.Size, nil, f.Chunks)
	if err != nil {
		return fmt.Errorf("assemble file %s in %s: %w", f.Digest, s.dir, err)
	}
	s.dropParts(f, o)
	return nil
}

// dropParts removes the chunk objects of f that f's object now holds, unless in use or
// pinned as files of their own.
func (s *Store) dropParts(f File, fo *object) {
	if len(f.Chunks) < 2 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if fo.dead {
		return
	}
	for _, c := range f.Chunks {
		p := s.objects[c.Digest]
		if p == nil || p == fo || p.composite || s.filePins[c.Digest] > 0 {
			continue
		}
		if p.refs > 0 {
			p.drop = true // when the reads using it are done
			continue
		}
		if err := s.removeLocked(p); err != nil {
			s.log.Warn("store: cannot drop a chunk object after assembly", "err", err)
			continue
		}
		s.st.dropped.Add(1)
	}
}

// copyRange copies n bytes from src at srcOff to dst at dstOff, in the kernel when it can.
func copyRange(dst, src *os.File, srcOff, dstOff, n int64) error {
	for n > 0 {
		k, err := unix.CopyFileRange(int(src.Fd()), &srcOff, int(dst.Fd()), &dstOff, int(min(n, 1<<30)), 0)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EXDEV), errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EINVAL), errors.Is(err, unix.EOPNOTSUPP):
			return copyRangeSlow(dst, src, srcOff, dstOff, n)
		case err != nil:
			return err
		case k == 0:
			return fmt.Errorf("source ends %d bytes early: %w", n, io.ErrUnexpectedEOF)
		}
		n -= int64(k)
	}
	return nil
}

func copyRangeSlow(dst, src *os.File, srcOff, dstOff, n int64) error {
	buf := make([]byte, min(n, 1<<20))
	for n > 0 {
		b := buf[:min(n, int64(len(buf)))]
		if _, err := src.ReadAt(b, srcOff); err != nil {
			return err
		}
		if _, err := dst.WriteAt(b, dstOff); err != nil {
			return err
		}
		srcOff += int64(len(b))
		dstOff += int64(len(b))
		n -= int64(len(b))
	}
	return nil
}

// Missing returns the chunks of f that are neither local nor being fetched, in file
// order: what a background fill still has to fetch. A complete file has none.
func (s *Store) Missing(f File) []format.Chunk {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.objects[f.Digest] != nil {
		return nil
	}
	var out []format.Chunk
	for _, c := range f.Chunks {
		if _, _, ok := s.locateLocked(c); ok {
			continue
		}
		if fl := s.flights[c.Digest]; fl != nil && !fl.failed() {
			continue
		}
		out = append(out, c)
	}
	return out
}
