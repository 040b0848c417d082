package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"lazypull/format"
)

// Source fetches compressed frames of one layer blob: fn is called once per chunk with the
// chunk's frame bytes (valid during the call only); it is the fetch package's job to
// coalesce ranges, retry and try mirrors.
//
// fn may be called from several goroutines at once. It returns an error (wrapping
// ErrCorrupt) for a frame that does not decompress to the chunk's digest; the Source may
// then fetch that chunk again (from another mirror, say) and call fn again, or stop and
// return an error. Fetch returns nil only when fn accepted every chunk.
type Source interface {
	Fetch(ctx context.Context, chunks []format.Chunk, fn func(c format.Chunk, frame []byte) error) error
}

// attempts bounds how often a read starts over: when an object it planned to read from
// vanished, or when the reader whose fetch it waited for gave up (its context ended).
const attempts = 3

// flight is one chunk being fetched, or one file being assembled; whoever needs it waits
// on done instead of fetching it again.
type flight struct {
	c    format.Chunk
	file File // a file the chunk belongs to: for error messages, and to assemble

	done chan struct{}
	mu   sync.Mutex
	over bool
	data []byte  // the verified chunk
	buf  *[]byte // data's pooled buffer (chunkBufs), handed back when holds drops to 0
	// holds counts who may still read data: the fetch and then the writer (one, from
	// newFlight), and each read that planned to copy from it (plan, with keep).
	holds atomic.Int32
	err   error
	bad   error // the last corrupt delivery, reported if no good one follows
	// keep says a reader will copy data after done; set under Store.mu while the flight is
	// in Store.flights. A flight nobody reads (a Fill's) drops data once stored.
	keep bool
	// direct: the chunk goes into its file's filling (direct.go), not an object of its own.
	direct bool
	// joined counts the reads that found the flight running and waited for it.
	joined int
	// stored is closed once the chunk is stored, or will not be: storeErr (set before)
	// says why not, when it was fetched.
	stored   chan struct{}
	settled  bool
	storeErr error
}

func newFlight(c format.Chunk, file File) *flight {
	fl := &flight{c: c, file: file, done: make(chan struct{}), stored: make(chan struct{})}
	fl.holds.Store(1)
	return fl
}

// unhold says one holder of fl is done with its data; the last hands the buffer back.
func (s *Store) unhold(fl *flight) {
	if fl.holds.Add(-1) != 0 {
		return
	}
	fl.mu.Lock()
	b := fl.buf
	fl.buf, fl.data = nil, nil
	fl.mu.Unlock()
	s.bufs.put(b)
}

// settle says the flight's chunk is stored (err == nil) or will not be.
func (fl *flight) settle(err error) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.settled {
		return
	}
	fl.settled, fl.storeErr = true, err
	close(fl.stored)
}

// finish ends the flight once; false if it had ended. buf is data's pooled buffer, if any.
func (fl *flight) finish(data []byte, buf *[]byte, err error) bool {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.over {
		return false
	}
	fl.over, fl.data, fl.buf, fl.err = true, data, buf, err
	close(fl.done)
	return true
}

func (fl *flight) failed() bool {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return fl.over && fl.err != nil
}

func (fl *flight) ended() bool {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return fl.over
}

func (fl *flight) wait(ctx context.Context) error {
	select {
	case <-fl.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ReadAt reads len(p) bytes of file f from offset off, as io.ReaderAt does (io.EOF when
// the file ends first). What is local is read from the store; the chunks that are missing
// are fetched from src in a single Fetch call, verified, stored and served. A chunk that
// another read is fetching at the same time is waited for, not fetched twice. When the last
// missing chunk of a file arrives, the whole file is assembled in the background, so that
// LocalPath finds it.
//
// Bytes that were fetched and verified are served even when they cannot be stored (a
// full disk): the store stays consistent, and logs a warning.
func (s *Store) ReadAt(ctx context.Context, src Source, f File, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("store read %s at %d: negative offset", f.Digest, off)
	}
	if off >= f.Size {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	if !s.enter() {
		return 0, ErrClosed
	}
	defer s.exit()
	var eof error
	if rest := f.Size - off; int64(len(p)) > rest {
		p, eof = p[:rest], io.EOF
	}

	if o := s.acquire(f.Digest); o != nil && o.size != f.Size {
		err := s.wrongSize(o, f)
		s.release(o)
		if err != nil {
			return 0, err
		}
	} else if o != nil {
		ok, err := s.readLocal(o, p, off)
		s.release(o)
		if ok {
			s.st.hits.Add(1)
			return len(p), eof
		}
		if err != nil {
			return 0, fmt.Errorf("store read %s at %d+%d: %w", f.Digest, off, len(p), err)
		}
	}

	lo, hi, err := f.span(off, int64(len(p)))
	if err != nil {
		return 0, fmt.Errorf("store read at %d+%d: %w", off, len(p), err)
	}
	if _, err := s.readChunks(ctx, src, f, f.Chunks[lo:hi], p, off); err != nil {
		return 0, err
	}
	// A file all of whose chunks are local already (inside other files, say) is assembled
	// now; chunks fetched just now are stored later, and their writer looks again.
	s.maybeAssemble(f, false)
	return len(p), eof
}

// ReadAhead makes local the chunks that hold f's bytes [off, off+n), as a ReadAt of that
// range would, without copying them anywhere: a read-ahead of a file read sequentially.
// The missing chunks are fetched in one Source.Fetch call, verified and queued to be
// stored; chunks that another read is fetching are left to it. It returns once its own
// fetch has ended, with the first chunk's error if any did not arrive or verify. A read
// that joins its flights meanwhile is served from memory (as from any flight); a later
// one reads the store. Why not ReadAt into a buffer: a window of 16 MiB was allocated,
// zeroed, filled and dropped, two passes over every byte read for nothing. Its chunks
// queue for the writers as a fill's do (bounded by maxPending): a window may be larger
// than anything a read asks for, and a source that streams holds only one frame.
func (s *Store) ReadAhead(ctx context.Context, src Source, f File, off, n int64) error {
	if off < 0 || n < 0 || off > f.Size-n {
		return fmt.Errorf("store read-ahead: range %d+%d outside file %s of %d bytes", off, n, f.Digest, f.Size)
	}
	if n == 0 {
		return nil
	}
	if !s.enter() {
		return ErrClosed
	}
	defer s.exit()
	s.mu.Lock()
	complete := s.objects[f.Digest] != nil
	s.mu.Unlock()
	if complete {
		return nil
	}
	lo, hi, err := f.span(off, n)
	if err != nil {
		return fmt.Errorf("store read-ahead at %d+%d: %w", off, n, err)
	}
	parts, mine := s.plan(f, f.Chunks[lo:hi], false)
	for _, pt := range parts {
		if pt.o != nil {
			s.release(pt.o)
		}
	}
	if len(mine) == 0 {
		return nil
	}
	for _, fl := range mine {
		fl.direct = true
	}
	s.fetch(ctx, src, mine, true)
	for _, fl := range mine {
		fl.mu.Lock()
		ferr := fl.err
		fl.mu.Unlock()
		if ferr != nil {
			return ferr
		}
	}
	return nil
}

// readLocal reads p from an object at off. ok is false when the object turned out to be
// gone or short, so the caller should fetch instead (the object is forgotten); err is set
// for other I/O errors, which the caller returns.
func (s *Store) readLocal(o *object, p []byte, off int64) (ok bool, err error) {
	f, err := s.file(o)
	if err == nil {
		var n int
		n, err = f.ReadAt(p, off)
		if n == len(p) {
			return true, nil
		}
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// Removed behind our back (or evicted between lookup and open): forget it.
		s.log.Warn("store: object vanished; fetching its content again", "object", o.digest)
		s.mu.Lock()
		s.forgetLocked(o)
		s.mu.Unlock()
		return false, nil
	case errors.Is(err, io.EOF):
		s.log.Warn("store: object is shorter than it should be; removing it", "object", o.digest, "want_end", off+int64(len(p)), "size", o.size)
		s.mu.Lock()
		rerr := s.removeLocked(o)
		s.mu.Unlock()
		return false, rerr
	}
	return false, fmt.Errorf("read object %s: %w", o.digest, err)
}

// part is where one chunk of a read comes from: a local object, or a flight.
type part struct {
	c   format.Chunk
	o   *object // held (refs) until read
	off int64   // of the chunk in o
	fl  *flight
}

// readChunks fills p (file bytes from off) from the given chunks of f.
func (s *Store) readChunks(ctx context.Context, src Source, f File, chunks []format.Chunk, p []byte, off int64) (fetched bool, err error) {
	for attempt := 1; ; attempt++ {
		parts, mine := s.plan(f, chunks, true)
		if len(mine) > 0 {
			fetched = true
			s.fetch(ctx, src, mine, false)
		}
		waited, again, err := s.copyParts(ctx, parts, p, off)
		if err == nil && !again {
			if waited {
				s.st.misses.Add(1)
			} else {
				s.st.hits.Add(1)
			}
			return fetched, nil
		}
		if err != nil {
			return fetched, err
		}
		if attempt == attempts {
			return fetched, fmt.Errorf("store read %s at %d+%d: gave up after %d attempts: objects kept vanishing or other readers kept giving up", f.Digest, off, len(p), attempts)
		}
	}
}

// plan finds each chunk locally (holding its object), or joins the flight fetching it, or
// starts a flight (returned in mine, for the caller to fetch). keep marks the flights as
// read from (see flight.keep).
func (s *Store) plan(f File, chunks []format.Chunk, keep bool) (parts []part, mine []*flight) {
	parts = make([]part, 0, len(chunks))
	var stamps []*object
	s.mu.Lock()
	for _, c := range chunks {
		if o, off, ok := s.locateLocked(c); ok {
			o.refs++
			if s.touchLocked(o) {
				stamps = append(stamps, o)
			}
			parts = append(parts, part{c: c, o: o, off: off})
			continue
		}
		fl := s.flights[c.Digest]
		if fl != nil && fl.failed() {
			fl = nil // ended in error: start over
		}
		if fl == nil {
			fl = newFlight(c, f)
			s.flights[c.Digest] = fl
			mine = append(mine, fl)
		} else {
			fl.joined++
		}
		fl.keep = fl.keep || keep
		if keep {
			fl.holds.Add(1) // let go in copyParts
		}
		parts = append(parts, part{c: c, fl: fl})
	}
	s.mu.Unlock()
	for _, o := range stamps {
		s.stamp(o)
	}
	return parts, mine
}

// copyParts copies each part's share of [off, off+len(p)) into p. waited says a flight was
// involved; again says the read should be planned again (an object vanished, or the reader
// that fetched a chunk gave up while this one still wants it).
func (s *Store) copyParts(ctx context.Context, parts []part, p []byte, off int64) (waited, again bool, err error) {
	defer func() {
		for _, pt := range parts {
			if pt.o != nil {
				s.release(pt.o)
			} else {
				s.unhold(pt.fl)
			}
		}
	}()
	for _, pt := range parts {
		pLo, pHi, cOff := overlap(pt.c, off, len(p))
		if pt.o != nil {
			ok, err := s.readLocal(pt.o, p[pLo:pHi], pt.off+cOff)
			if err != nil {
				return waited, false, fmt.Errorf("store chunk %s: %w", pt.c.Digest, err)
			}
			again = again || !ok
			continue
		}
		waited = true
		if err := pt.fl.wait(ctx); err != nil {
			return waited, false, err
		}
		if pt.fl.err != nil {
			if ctx.Err() == nil && (errors.Is(pt.fl.err, context.Canceled) || errors.Is(pt.fl.err, context.DeadlineExceeded)) {
				again = true
				continue
			}
			return waited, false, pt.fl.err
		}
		copy(p[pLo:pHi], pt.fl.data[cOff:])
	}
	return waited, again, nil
}

// fetch fetches the chunks of the flights in mine with one Fetch call, verifies each, ends
// its flight (so whoever waits is served at once) and queues it to be stored; flights whose
// chunk did not arrive end with an error. A bulk fetch (Fill) waits for room in the write
// queue, so that a slow disk slows it down rather than filling memory; a read never waits
// for the disk.
func (s *Store) fetch(ctx context.Context, src Source, mine []*flight, bulk bool) {
	want := make([]format.Chunk, len(mine))
	by := make(map[format.Digest]*flight, len(mine))
	for i, fl := range mine {
		want[i] = fl.c
		by[fl.c.Digest] = fl
	}
	err := src.Fetch(ctx, want, func(c format.Chunk, frame []byte) error {
		fl := by[c.Digest]
		if fl == nil {
			return fmt.Errorf("store: the source delivered chunk %s, which was not asked for", c.Digest)
		}
		if fl.ended() {
			return nil // delivered twice
		}
		// Decode with the chunk as we know it, not as the source says it is.
		dst, buf := s.bufs.get(fl.c.Size)
		data, err := fl.c.Decode(dst, frame)
		if err != nil {
			s.bufs.put(buf)
			s.st.corrupt.Add(1)
			err = fmt.Errorf("store chunk %s of %s: %w: %w", fl.c.Digest, fl.file.Digest, ErrCorrupt, err)
			fl.mu.Lock()
			fl.bad = err
			fl.mu.Unlock()
			return err
		}
		if !fl.finish(data, buf, nil) {
			s.bufs.put(buf) // delivered twice at once: the first one's data is the flight's
			return nil
		}
		s.st.chunksFetched.Add(1)
		s.st.bytesFetched.Add(int64(len(frame)))
		s.enqueue(fl, data, bulk)
		// A stream of frames (a pack, a large multi-range answer) is decoded and hashed
		// here back to back, and with another busy goroutine it holds every P of a small
		// machine: a FUSE request or a containerd call then waits for the preemption, up
		// to 10 ms each, while the container starts. Yield between chunks.
		runtime.Gosched()
		return nil
	})
	for _, fl := range mine {
		fl.mu.Lock()
		ferr := fl.bad
		fl.mu.Unlock()
		if ferr == nil {
			ferr = err
			if ferr == nil {
				ferr = errors.New("the source returned without it")
			}
			ferr = fmt.Errorf("fetch chunk %s of %s: %w", fl.c.Digest, fl.file.Digest, ferr)
		}
		if fl.ended() {
			continue
		}
		// Out of the map first: a waiter woken by finish must not find it again.
		s.dropFlight(fl)
		if fl.finish(nil, nil, ferr) {
			fl.settle(nil)
			s.unhold(fl)
		}
	}
}

// storeChunks writes verified chunks as objects of their own (on a writer goroutine), as
// one batch: every temp file is written and its write-back started (sync_file_range)
// before any is fsynced, so that the first fsync's journal commit carries the others'
// block allocations and the rest find little left to do. One commit per batch, where a
// chunk at a time cost one each: a prefetch stores hundreds of chunks while containerd's
// own fsyncs (content, metadata) queue behind the same journal. A chunk that cannot be
// stored was served from memory all the same.
func (s *Store) storeChunks(jobs []writeJob) {
	files := make([]*os.File, len(jobs))
	errs := make([]error, len(jobs))
	inFill := make([]bool, len(jobs)) // written into its file's filling (direct.go)
	for i, j := range jobs {
		if direct(j.fl) {
			if inFill[i], errs[i] = s.storeDirect(j.fl, j.data); inFill[i] {
				continue
			}
		}
		files[i], errs[i] = s.createTemp(func(w *os.File) error {
			_, err := w.Write(j.data)
			return err
		})
		if errs[i] == nil {
			// A hint: the fsync below is what makes the bytes durable.
			_ = unix.SyncFileRange(int(files[i].Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
		}
	}
	for i, j := range jobs {
		fl := j.fl
		err := errs[i]
		var tmp string
		if err == nil && !inFill[i] {
			tmp, err = syncTemp(files[i])
		}
		if err == nil && !inFill[i] {
			_, err = s.commit(fl.c.Digest, tmp, int64(len(j.data)), fl, nil)
		}
		s.mu.Lock()
		if s.flights[fl.c.Digest] == fl {
			delete(s.flights, fl.c.Digest)
		}
		if !fl.keep {
			fl.data = nil // nobody reads it: let it go before the Fetch ends
		}
		s.mu.Unlock()
		if err != nil {
			s.writeFailed(fmt.Sprintf("chunk %s of %s", fl.c.Digest, fl.file.Digest), err)
			err = fmt.Errorf("store chunk %s of %s in %s: %w", fl.c.Digest, fl.file.Digest, s.dir, err)
		}
		fl.settle(err)
	}
}

func (s *Store) dropFlight(fl *flight) {
	s.mu.Lock()
	if s.flights[fl.c.Digest] == fl {
		delete(s.flights, fl.c.Digest)
	}
	s.mu.Unlock()
}

// locateLocked finds a chunk: an object of its own (a chunk, or a whole one-chunk file),
// or a range of a multi-chunk object.
func (s *Store) locateLocked(c format.Chunk) (*object, int64, bool) {
	if o := s.objects[c.Digest]; o != nil && o.size == c.Size {
		return o, 0, true
	}
	if l, ok := s.chunks[c.Digest]; ok {
		if l.obj.dead {
			delete(s.chunks, c.Digest)
		} else if l.size == c.Size {
			return l.obj, l.off, true
		}
	}
	return nil, 0, false
}

// writeJob is a verified chunk waiting to be stored.
type writeJob struct {
	fl   *flight
	data []byte
}

// writeQueue holds verified chunks until the writers store them. Its bytes are bounded
// for bulk fetches (maxPending); reads always get in, their size being bounded by the
// reads themselves.
type writeQueue struct {
	mu       sync.Mutex
	cond     *sync.Cond
	jobs     []writeJob
	pending  int64 // bytes queued or being written
	active   int   // jobs being written
	stopping bool
}

func (s *Store) enqueue(fl *flight, data []byte, bulk bool) {
	q := &s.wq
	n := int64(len(data))
	q.mu.Lock()
	for bulk && q.pending > 0 && q.pending+n > maxPending && !q.stopping {
		q.cond.Wait()
	}
	q.pending += n
	q.jobs = append(q.jobs, writeJob{fl, data})
	q.cond.Broadcast()
	q.mu.Unlock()
}

// writer stores queued chunks until the queue is stopped and empty, taking all that are
// queued (up to maxBatch) as one batch (storeChunks). After a batch it looks whether the
// files its chunks belong to are now all local, to assemble them.
func (s *Store) writer() {
	defer s.writers.Done()
	q := &s.wq
	for {
		q.mu.Lock()
		for len(q.jobs) == 0 && !q.stopping {
			q.cond.Wait()
		}
		if len(q.jobs) == 0 {
			q.mu.Unlock()
			return
		}
		n := min(len(q.jobs), maxBatch)
		batch := slices.Clone(q.jobs[:n])
		clear(q.jobs[:n])
		q.jobs = q.jobs[n:]
		q.active += n
		q.mu.Unlock()

		s.storeChunks(batch)
		var bytes int64
		for _, j := range batch {
			s.maybeAssemble(j.fl.file, true)
			bytes += int64(len(j.data))
			s.unhold(j.fl) // stored, and out of s.flights
		}

		q.mu.Lock()
		q.active -= n
		q.pending -= bytes
		q.cond.Broadcast()
		q.mu.Unlock()
	}
}

// flush waits until every queued chunk is stored (or failed to be).
func (s *Store) flush() {
	q := &s.wq
	q.mu.Lock()
	for len(q.jobs) > 0 || q.active > 0 {
		q.cond.Wait()
	}
	q.mu.Unlock()
}
