package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"lazypull/format"
	"lazypull/internal/fetch"
	"lazypull/internal/profile"
	"lazypull/internal/store"
)

// The index of a layer is checked against the layer's tar before what it says of an
// entry is served: the entry's content (ReadAt, LocalFile) or its link target (Check).
// The unit is a header run (format.HeaderRun): the header frames between two files'
// content, which hold the tar headers of every entry up to and including the next file.
// A run is fetched once (with the first content range that needs it, in the same Fetch,
// so usually in the same Range request: the run's frames lie right before the file's
// first chunk in the blob), checked against its run digest (format.Index.CheckRunDigest, a
// version 2 index) and with format.Index.CheckRun, and its verdict kept: in
// memory, and for a run that matches, in the store (store.PutChecked), so that a restart
// neither fetches it again nor needs the registry to serve what the store holds.

// Run states.
const (
	runUnknown uint32 = iota
	runMatches
	runMismatch
)

// tarCheck holds a layer's header runs and their verdicts.
type tarCheck struct {
	once sync.Once
	err  error // the frames cannot be those of a tar the index describes: nothing is served
	// refused is set when the layer's tar does not have the config's diff ID (checkDiffID):
	// nothing more is served.
	refused atomic.Pointer[refusedError]
	index   format.Digest // what the verdicts are kept under in the store
	runs    []format.HeaderRun
	runOf   []int32
	links   map[int][]int // a file's entry -> the hard links to it in this layer

	state []atomic.Uint32 // per run

	mu      sync.Mutex
	flights map[int]*runFlight // runs being fetched
	bad     map[int]error      // runs that do not match, and why
	dirty   bool               // runs matched since the bitmap was last kept
	writing bool               // a goroutine keeps the bitmap
}

// runFlight is a run being fetched and checked; err is its outcome, final when it is a
// verdict (a mismatch or a match), not a failure to fetch.
type runFlight struct {
	done  chan struct{}
	err   error
	final bool
}

// refusedError is an entry that does not match the layer's tar. It has been logged once
// (fusefs does not log it again on every read).
type refusedError struct{ err error }

func (e *refusedError) Error() string  { return e.err.Error() }
func (e *refusedError) Unwrap() error  { return e.err }
func (e *refusedError) Reported() bool { return true }

func (l *Layer) tarCheck() *tarCheck {
	tc := &l.tc
	tc.once.Do(func() {
		loc, err := format.LocationFromAnnotations(l.Desc.Annotations)
		if err != nil {
			tc.err = err
			return
		}
		// Verdicts are kept under the layer blob and its index together: the index alone
		// does not cover the header frames, and another blob could carry the same index
		// over other headers.
		tc.index = format.Digest(sha256.Sum256([]byte(l.Desc.Digest.String() + " " + loc.Digest.String())))
		tc.runs, tc.runOf, err = l.Index.HeaderRuns()
		if err != nil {
			tc.err = fmt.Errorf("layer %s: the index does not describe the layer's tar: %w", l.Desc.Digest, err)
			l.log.Error("layer index does not describe the layer's tar; no file of it is served", "layer", l.Desc.Digest, "err", err)
			return
		}
		tc.state = make([]atomic.Uint32, len(tc.runs))
		tc.flights, tc.bad, tc.links = map[int]*runFlight{}, map[int]error{}, map[int][]int{}
		for i := range l.Index.Entries {
			e := &l.Index.Entries[i]
			if !e.IsHardlink() {
				continue
			}
			if t, err := l.Index.Content(e); err == nil {
				if ti := l.entryIndex(t); ti >= 0 {
					tc.links[ti] = append(tc.links[ti], i)
				}
			}
		}
		if bits := l.store.Checked(tc.index); len(bits) == (len(tc.runs)+7)/8 {
			for r := range tc.runs {
				if bits[r/8]&(1<<(r%8)) != 0 {
					tc.state[r].Store(runMatches)
				}
			}
		}
	})
	return tc
}

// entryIndex is the position of e in the layer's index, -1 if it is not one of its entries.
func (l *Layer) entryIndex(e *format.Entry) int {
	es := l.Index.Entries
	if len(es) == 0 {
		return -1
	}
	d := uintptr(unsafe.Pointer(e)) - uintptr(unsafe.Pointer(&es[0]))
	i := int(d / unsafe.Sizeof(es[0]))
	if d%unsafe.Sizeof(es[0]) != 0 || i < 0 || i >= len(es) || &es[i] != e {
		return -1
	}
	return i
}

// runsFor returns the runs whose headers describe what serving e serves: e's own, and the
// runs of the hard links that name its content.
func (l *Layer) runsFor(e *format.Entry) ([]int, error) {
	tc := l.tarCheck()
	if tc.err != nil {
		return nil, tc.err
	}
	if err := tc.refused.Load(); err != nil {
		return nil, err
	}
	i := l.entryIndex(e)
	if i < 0 {
		return nil, fmt.Errorf("layer %s: entry %q is not in the layer's index", l.Desc.Digest, e.Name)
	}
	runs := []int{int(tc.runOf[i])}
	for _, j := range tc.links[i] {
		if r := int(tc.runOf[j]); r != runs[len(runs)-1] {
			runs = append(runs, r)
		}
	}
	return runs, nil
}

// checked says whether all runs are known to match (ok), or one is known not to (err).
func (l *Layer) checked(runs []int) (ok bool, err error) {
	tc := &l.tc
	ok = true
	for _, r := range runs {
		switch tc.state[r].Load() {
		case runMatches:
		case runMismatch:
			tc.mu.Lock()
			err = tc.bad[r]
			tc.mu.Unlock()
			return false, err
		default:
			ok = false
		}
	}
	return ok, nil
}

// Check makes sure that what the index says of e (and of the hard links to it) is what
// the layer's tar says, fetching the header frames that hold it if need be: it returns
// nil once it is, and an error (a refusedError for a mismatch) otherwise. It is the
// fusefs.Checker of the layer: a symlink's target is served only after it.
func (l *Layer) Check(ctx context.Context, e *format.Entry) error {
	runs, err := l.runsFor(e)
	if err != nil {
		return err
	}
	if ok, err := l.checked(runs); ok || err != nil {
		return err
	}
	if e.IsSymlink() {
		l.fetchLinkTarget(ctx, e, runs)
	}
	return l.checkRuns(ctx, runs)
}

func (l *Layer) checkRuns(ctx context.Context, runs []int) error {
	tc := &l.tc
	var last error
	for range checkAttempts {
		if ok, err := l.checked(runs); ok || err != nil {
			return err
		}
		if mine := l.claim(runs); len(mine) > 0 {
			// Fetched alone (the content is local), a run costs a request: the next few
			// runs come with it, for the next files a walk or a start reads.
			mine = append(mine, l.claim(l.neighbours(mine[len(mine)-1]))...)
			if err := l.fetchRuns(ctx, mine, nil, nil); err != nil {
				// The fetch did its retries: report it, unless a verdict came all the same.
				if ok, verr := l.checked(runs); ok || verr != nil {
					return verr
				}
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return fmt.Errorf("layer %s: fetch the tar headers to check the index against: %w", l.Desc.Digest, err)
			}
		}
		// Wait for the runs others fetch; one that failed to come is fetched again.
		for _, r := range runs {
			tc.mu.Lock()
			fl := tc.flights[r]
			tc.mu.Unlock()
			if fl == nil {
				continue
			}
			select {
			case <-fl.done:
			case <-ctx.Done():
				return ctx.Err()
			}
			if fl.err != nil && !fl.final {
				last = fl.err
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	if ok, err := l.checked(runs); ok || err != nil {
		return err
	}
	if last == nil {
		last = errors.New("not checked")
	}
	return fmt.Errorf("layer %s: check the index against the tar: %w", l.Desc.Digest, last)
}

// fetchLinkTarget fetches the run of symlink e with the first chunk of the file it points
// at, when that file is the one the run ends with (python3 -> python3.11, libz.so.1 ->
// libz.so.1.2.13: a link sits right before its target in most tars): one Range for both,
// where the readlink and the read that follows it would take two round trips. Errors are
// left to checkRuns and to the read.
func (l *Layer) fetchLinkTarget(ctx context.Context, e *format.Entry, runs []int) {
	run := l.tc.runs[runs[0]]
	if !run.Content {
		return
	}
	t := &l.Index.Entries[run.EndEntry-1]
	if t.Name != linkTarget(e) || t.Sparse {
		return
	}
	f, err := l.file(t)
	if err != nil || len(f.Chunks) == 0 {
		return
	}
	with := append(runs[:len(runs):len(runs)], l.neighbours(runs[len(runs)-1])...)
	_ = l.store.Prefetch(ctx, &checkingSource{l: l, runs: with}, store.Want{File: f, Off: 0, Len: f.Chunks[0].Size})
}

// neighbourRuns is how many runs after one fetched alone come with it.
const neighbourRuns = 16

func (l *Layer) neighbours(r int) []int {
	var out []int
	for n := r + 1; n < len(l.tc.runs) && n <= r+neighbourRuns; n++ {
		if l.tc.state[n].Load() == runUnknown {
			out = append(out, n)
		}
	}
	return out
}

// checkAttempts bounds how often checkRuns fetches a run that failed to come.
const checkAttempts = 3

// claim marks the runs that are neither checked nor being fetched as fetched by the
// caller, who must settle each.
func (l *Layer) claim(runs []int) (mine []int) {
	tc := &l.tc
	tc.mu.Lock()
	defer tc.mu.Unlock()
	for _, r := range runs {
		if tc.state[r].Load() != runUnknown || tc.flights[r] != nil {
			continue
		}
		tc.flights[r] = &runFlight{done: make(chan struct{})}
		mine = append(mine, r)
	}
	return mine
}

// settle ends the flight of run r with its outcome: a verdict (final) or a failure.
func (l *Layer) settle(r int, err error, final bool) {
	tc := &l.tc
	tc.mu.Lock()
	fl := tc.flights[r]
	delete(tc.flights, r)
	keep := false
	if final {
		if err == nil {
			tc.state[r].Store(runMatches)
			tc.dirty = true
			if !tc.writing {
				tc.writing, keep = true, true
			}
		} else {
			err = &refusedError{err: fmt.Errorf("layer %s: %w", l.Desc.Digest, err)}
			tc.bad[r] = err
			tc.state[r].Store(runMismatch)
		}
	}
	tc.mu.Unlock()
	if fl != nil {
		fl.err, fl.final = err, final
		close(fl.done)
	}
	if final && err != nil {
		attrs := []any{"layer", l.Desc.Digest, "err", err}
		var m *format.MismatchError
		var d *format.RunDigestError
		switch {
		case errors.As(err, &m):
			attrs = []any{"layer", l.Desc.Digest, "entry", m.Entry, "field", m.Field, "index", m.Index, "tar", m.Tar}
		case errors.As(err, &d):
			attrs = []any{"layer", l.Desc.Digest, "run", d.Run, "entry", d.Entry, "field", "run digest", "index", d.Index.String(), "got", d.Got.String()}
		}
		l.log.Error("layer index does not match the layer's tar; not serving the entry", attrs...)
	}
	if keep {
		go l.keepChecked()
	}
}

// keepChecked writes the bitmap of matching runs to the store until it is up to date.
func (l *Layer) keepChecked() {
	tc := &l.tc
	for {
		tc.mu.Lock()
		if !tc.dirty {
			tc.writing = false
			tc.mu.Unlock()
			return
		}
		tc.dirty = false
		tc.mu.Unlock()
		bits := make([]byte, (len(tc.runs)+7)/8)
		for r := range tc.runs {
			if tc.state[r].Load() == runMatches {
				bits[r/8] |= 1 << (r % 8)
			}
		}
		if err := l.store.PutChecked(tc.index, bits); err != nil {
			l.log.Debug("cannot keep which header runs were checked; a restart fetches them again", "layer", l.Desc.Digest, "err", err)
		}
	}
}

// runCollector gathers the header frames of the runs a Fetch brings, and checks each run
// as soon as its last frame arrives.
type runCollector struct {
	l      *Layer
	frames map[int64][2]int // blob offset of a header frame -> its run and frame number
	got    map[int][][]byte
	left   map[int]int // run -> frames still to come
}

// runSize is the compressed size of a run's header frames in the blob.
func (l *Layer) runSize(run format.HeaderRun) int64 {
	last := l.Index.Frames[run.EndFrame-1]
	return last.Offset + last.Size - l.Index.Frames[run.FirstFrame].Offset
}

// runName names a run's entries for a message.
func (l *Layer) runName(run format.HeaderRun) string {
	switch n := run.EndEntry - run.FirstEntry; {
	case n == 0:
		return "the end of the archive"
	case n == 1:
		return fmt.Sprintf("entry %q", l.Index.Entries[run.FirstEntry].Name)
	default:
		return fmt.Sprintf("entries %q to %q", l.Index.Entries[run.FirstEntry].Name, l.Index.Entries[run.EndEntry-1].Name)
	}
}

// maxLazyRun bounds the compressed header frames of one run fetched to check it on demand.
// A run holds the headers between two files' content (at most 1 MiB per frame, which
// compresses well); an honest layer comes near it only with hundreds of thousands of
// entries and no file content between them. A larger run is refused: lazypull verify
// checks it.
const maxLazyRun = 64 << 20

func (l *Layer) newCollector(mine []int) (*runCollector, []fetch.Range) {
	c := &runCollector{l: l, frames: map[int64][2]int{}, got: map[int][][]byte{}, left: map[int]int{}}
	var ranges []fetch.Range
	for _, r := range mine {
		run := l.tc.runs[r]
		if size := l.runSize(run); size > maxLazyRun {
			l.settle(r, fmt.Errorf("%s: header run of %d bytes, more than the %d checked on demand", l.runName(run), size, maxLazyRun), true)
			continue
		}
		c.left[r] = run.EndFrame - run.FirstFrame
		c.got[r] = make([][]byte, run.EndFrame-run.FirstFrame)
		for k := run.FirstFrame; k < run.EndFrame; k++ {
			f := l.Index.Frames[k]
			c.frames[f.Offset] = [2]int{r, k}
			ranges = append(ranges, fetch.Range{Off: f.Offset, Len: f.Size})
		}
	}
	return c, ranges
}

// take keeps a header frame if rg is one; it reports whether it was.
func (c *runCollector) take(rg fetch.Range, b []byte) bool {
	rk, ok := c.frames[rg.Off]
	if !ok || c.l.Index.Frames[rk[1]].Size != rg.Len {
		return false
	}
	r, k := rk[0], rk[1]
	run := c.l.tc.runs[r]
	if c.got[r][k-run.FirstFrame] != nil {
		return true
	}
	c.got[r][k-run.FirstFrame] = bytes.Clone(b)
	if c.left[r]--; c.left[r] == 0 {
		c.l.checkRunFrames(r, c.got[r])
		delete(c.left, r)
		delete(c.got, r)
	}
	return true
}

// checkRunFrames checks run r's compressed frames fr against the run's digest (a version 2
// index), then its entries against the headers they hold, and settles it. Bytes that are
// not the run's (RunDigestError) are a verdict, as a mismatch is: the index names them and
// the blob does not hold them.
func (l *Layer) checkRunFrames(r int, fr [][]byte) {
	run := l.tc.runs[r]
	err := l.Index.CheckRunDigest(r, run, fr)
	if err == nil {
		err = l.Index.CheckRunFrames(run, fr, nil)
	}
	// Without run digests, a frame that does not decompress, or a header that does not
	// parse, may be a bad response: not a verdict, the next read fetches it again. With
	// them, the bytes are the blob's: what fails is the index's.
	l.settle(r, err, err == nil || isVerdict(err) || l.Index.RunDigests != nil)
}

// isVerdict says whether err is a run's verdict: the index does not describe the tar
// (MismatchError), or the run's bytes are not those its digest names (RunDigestError).
func isVerdict(err error) bool {
	var m *format.MismatchError
	var d *format.RunDigestError
	return errors.As(err, &m) || errors.As(err, &d)
}

// finish settles the runs whose frames did not all come, as failures.
func (c *runCollector) finish(err error) {
	if err == nil {
		err = errors.New("the header frames did not all come")
	}
	for r := range c.left {
		c.l.settle(r, fmt.Errorf("layer %s: fetch the tar headers: %w", c.l.Desc.Digest, err), false)
	}
}

// fetchRuns fetches the header frames of the runs mine (claimed) from the layer blob and
// settles them; with chunks, in the same Fetch as those chunk frames (fn gets them).
func (l *Layer) fetchRuns(ctx context.Context, mine []int, chunks []format.Chunk, fn func(format.Chunk, []byte) error) error {
	c, hranges := l.newCollector(mine)
	ranges, byOff := orderRanges(l, mine, hranges, chunks)
	err := l.blob.Fetch(ctx, ranges, func(r fetch.Range, b []byte) error {
		if c.take(r, b) {
			return nil
		}
		ch, ok := byOff[r.Off]
		if !ok || ch.CompSize != r.Len || fn == nil {
			return fmt.Errorf("fetch answered range %s, which nothing asked for", r)
		}
		return fn(ch, b)
	})
	c.finish(err)
	return err
}

// orderRanges lists the header frames of each run right before the first chunk of the
// file the run ends with (the order a multi-range request asks for them, and the order
// they come in), the runs of no listed chunk first.
func orderRanges(l *Layer, mine []int, hranges []fetch.Range, chunks []format.Chunk) ([]fetch.Range, map[int64]format.Chunk) {
	byOff := make(map[int64]format.Chunk, len(chunks))
	before := map[int64][]fetch.Range{} // chunk offset -> header frames to put before it
	var lead []fetch.Range
	for _, c := range chunks {
		byOff[c.Offset] = c
	}
	i := 0
	for _, r := range mine {
		run := l.tc.runs[r]
		n := run.EndFrame - run.FirstFrame
		rs := hranges[i : i+n]
		i += n
		if run.Content {
			if _, ok := byOff[l.Index.Frames[run.EndFrame].Offset]; ok {
				before[l.Index.Frames[run.EndFrame].Offset] = rs
				continue
			}
		}
		lead = append(lead, rs...)
	}
	ranges := make([]fetch.Range, 0, len(hranges)+len(chunks))
	ranges = append(ranges, lead...)
	for _, c := range chunks {
		ranges = append(ranges, before[c.Offset]...)
		ranges = append(ranges, fetch.Range{Off: c.Offset, Len: c.CompSize})
	}
	return ranges, byOff
}

// checkingSource is the layer blob as a store.Source that also brings, in its first
// Fetch, the header frames of runs not yet checked: those of the files being read.
type checkingSource struct {
	l    *Layer
	runs []int
	used atomic.Bool
}

func (s *checkingSource) Fetch(ctx context.Context, chunks []format.Chunk, fn func(format.Chunk, []byte) error) error {
	var mine []int
	if !s.used.Swap(true) {
		mine = s.l.claim(s.runs)
	}
	if len(mine) == 0 {
		return blobSource{s.l.blob}.Fetch(ctx, chunks, fn)
	}
	return s.l.fetchRuns(ctx, mine, chunks, fn)
}

// prefetchRuns fetches, in one Fetch, the runs that are neither checked nor being fetched.
// Failures are left to the reads, which fetch again.
func (l *Layer) prefetchRuns(ctx context.Context, runs []int) {
	if len(runs) == 0 {
		return
	}
	if mine := l.claim(runs); len(mine) > 0 {
		_ = l.fetchRuns(ctx, mine, nil, nil)
	}
}

// profiledRuns returns, per layer, the header runs of the profile's files, and of the
// symlinks a start likely follows, whose targets are served only once checked: a profile
// records reads, not the path walks before them. Those are the symlinks that lead to a
// profiled file or to one of its directories (bin -> usr/bin, python3 -> python3.11,
// through directory symlinks), and those that sit in a profiled file's directory or the
// one above it (a library's soname links, sitecustomize.py -> /etc/...: a program stats
// or opens them, and reads another file, or none).
func (im *Image) profiledRuns(wants []profile.Want) [][]int {
	out := make([][]int, len(im.Layers))
	seen := make([]map[int]bool, len(im.Layers))
	add := func(li int, e *format.Entry) {
		rs, err := im.Layers[li].runsFor(e)
		if err != nil {
			return // its reads report it
		}
		if seen[li] == nil {
			seen[li] = map[int]bool{}
		}
		for _, r := range rs {
			if !seen[li][r] {
				seen[li][r] = true
				out[li] = append(out[li], r)
			}
		}
	}
	// The image's symlinks, the topmost layer's winning, to resolve targets through.
	links := map[string]string{}
	for _, l := range im.Layers {
		for i := range l.Index.Entries {
			if e := &l.Index.Entries[i]; e.IsSymlink() {
				links[e.Name] = e.Linkname
			}
		}
	}
	paths := map[string]bool{} // profiled files and their directories
	near := map[string]bool{}  // profiled files' directories and the ones above them
	for _, w := range wants {
		add(w.Layer, w.Entry)
		for p := w.Entry.Name; p != "." && !paths[p]; p = path.Dir(p) {
			paths[p] = true
		}
		d := path.Dir(w.Entry.Name)
		near[d], near[path.Dir(d)] = true, true
	}
	for li, l := range im.Layers {
		n := 0
		for i := range l.Index.Entries {
			e := &l.Index.Entries[i]
			if !e.IsSymlink() || n >= maxLinkRuns {
				continue
			}
			if near[path.Dir(e.Name)] || paths[resolveLinks(links, linkTarget(e))] {
				add(li, e)
				n++
			}
		}
	}
	return out
}

// maxLinkRuns bounds the symlinks per layer whose runs a prefetch brings.
const maxLinkRuns = 1024

// linkTarget is the path a symlink entry points at, cleaned and confined to the root.
func linkTarget(e *format.Entry) string {
	t := e.Linkname
	if !strings.HasPrefix(t, "/") {
		t = path.Join(path.Dir(e.Name), t)
	}
	return format.CleanName(t)
}

// resolveLinks follows the symlinks among p's directories (not p itself), at most 40 of them.
func resolveLinks(links map[string]string, p string) string {
	for range 40 {
		elems := strings.Split(p, "/")
		moved := false
		for k := 1; k < len(elems); k++ {
			dir := strings.Join(elems[:k], "/")
			t, ok := links[dir]
			if !ok {
				continue
			}
			if !strings.HasPrefix(t, "/") {
				t = path.Join(path.Dir(dir), t)
			}
			p, moved = format.CleanName(t+"/"+strings.Join(elems[k:], "/")), true
			break
		}
		if !moved {
			return p
		}
	}
	return p
}

// errIncomplete: a layer's chunks are not all in the store; its diff ID cannot be checked
// without fetching them.
var errIncomplete = errors.New("not all of the layer's chunks are in the store")

// diffIDBatch bounds the blob bytes one request of checkDiffID asks for.
const (
	diffIDBatch = 8 << 20
	diffIDGap   = 64 << 10 // header frames this close are read with what lies between
)

// checkDiffID checks, once every chunk of the layer is in the store, that the layer's tar
// stream (its header frames, fetched again, and its chunks, read from the store, in blob
// order) has the digest want, the diff ID the image's config gives it. For a version 1
// index, that is what binds the header frames the checks above fetched by range (which no
// digest in the index covers) to the image: a registry that answered a Range with other
// header bytes than the blob's is found out here. A version 2 index gives each run a
// digest, checked before the run's headers wherever its bytes come from. A layer that fails is refused whole from then on: every read
// of it fails. On the way, every header run is checked (CheckRun) too.
func (l *Layer) checkDiffID(ctx context.Context, want string) error {
	tc := l.tarCheck()
	if tc.err != nil {
		return tc.err
	}
	// Not Layer.file: that keeps every file's chunk list for the mount's life.
	for i := range l.Index.Entries {
		e := &l.Index.Entries[i]
		if e.NumFrames == 0 {
			continue
		}
		f, err := store.FileOf(l.Index, e)
		if err != nil {
			return err
		}
		if len(l.store.Missing(f)) > 0 {
			return errIncomplete
		}
	}
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for start := 0; start < len(tc.runs); {
		end, frames, err := l.fetchHeaderBatch(ctx, start)
		if err != nil {
			return err
		}
		for r := start; r < end; r++ {
			run := tc.runs[r]
			err := l.Index.CheckRunDigest(r, run, frames[r-start])
			if err != nil {
				// Not the run's bytes: its tar is not hashed either, the diff ID
				// check below fails.
				h.Write([]byte{0})
			} else {
				err = l.Index.CheckRunFrames(run, frames[r-start], h)
			}
			if err != nil && !isVerdict(err) {
				return fmt.Errorf("layer %s: %w", l.Desc.Digest, err)
			}
			if tc.state[r].Load() == runUnknown {
				if mine := l.claim([]int{r}); len(mine) == 1 {
					l.settle(r, err, true)
				}
			}
			if !run.Content {
				continue
			}
			e := &l.Index.Entries[run.EndEntry-1]
			f, err := store.FileOf(l.Index, e)
			if err != nil {
				return err
			}
			for off := int64(0); off < f.Size; {
				n, err := l.store.ReadAt(ctx, blobSource{l.blob}, f, buf, off)
				if n == 0 && err != nil {
					return fmt.Errorf("layer %s: read %q: %w", l.Desc.Digest, e.Name, err)
				}
				h.Write(buf[:n])
				off += int64(n)
			}
		}
		start = end
	}
	got := format.Digest(h.Sum(nil)).String()
	if got == want {
		return nil
	}
	err := &refusedError{err: fmt.Errorf("layer %s: its tar stream has digest %s, the image config's diff ID is %s", l.Desc.Digest, got, want)}
	tc.refused.Store(err)
	l.log.Error("layer's tar does not match the diff ID in the image config; no file of it is served", "layer", l.Desc.Digest, "tar", got, "diff_id", want)
	return err
}

// fetchHeaderBatch fetches the header frames of the runs from start on, as many as fit in
// diffIDBatch bytes of requests, and returns where the batch ends and each run's frames.
func (l *Layer) fetchHeaderBatch(ctx context.Context, start int) (end int, frames [][][]byte, err error) {
	tc := &l.tc
	var ranges []fetch.Range
	var total int64
	end = start
	for end < len(tc.runs) && (end == start || total < diffIDBatch) {
		run := tc.runs[end]
		if size := l.runSize(run); size > maxLazyRun {
			return 0, nil, fmt.Errorf("layer %s: %s: header run of %d bytes, more than the %d checked here; lazypull verify checks it", l.Desc.Digest, l.runName(run), size, maxLazyRun)
		}
		for k := run.FirstFrame; k < run.EndFrame; k++ {
			f := l.Index.Frames[k]
			if n := len(ranges); n > 0 && f.Offset-ranges[n-1].End() <= diffIDGap {
				total += f.Offset + f.Size - ranges[n-1].End()
				ranges[n-1].Len = f.Offset + f.Size - ranges[n-1].Off
				continue
			}
			ranges = append(ranges, fetch.Range{Off: f.Offset, Len: f.Size})
			total += f.Size
		}
		end++
	}
	got := make(map[int64][]byte, len(ranges))
	err = l.blob.Fetch(ctx, ranges, func(r fetch.Range, b []byte) error {
		got[r.Off] = bytes.Clone(b)
		return nil
	})
	if err != nil {
		return 0, nil, fmt.Errorf("layer %s: fetch the tar headers: %w", l.Desc.Digest, err)
	}
	frames = make([][][]byte, end-start)
	ri := 0
	for r := start; r < end; r++ {
		run := tc.runs[r]
		for k := run.FirstFrame; k < run.EndFrame; k++ {
			f := l.Index.Frames[k]
			for ri < len(ranges) && ranges[ri].End() < f.Offset+f.Size {
				ri++
			}
			if ri == len(ranges) || ranges[ri].Off > f.Offset {
				return 0, nil, fmt.Errorf("layer %s: header frame %d not fetched", l.Desc.Digest, k)
			}
			b := got[ranges[ri].Off]
			frames[r-start] = append(frames[r-start], b[f.Offset-ranges[ri].Off:f.Offset-ranges[ri].Off+f.Size])
		}
	}
	return end, frames, nil
}

// crossRef is a hard link of an upper layer whose target is a file of a lower one: a
// merged view serves the lower file under the link's name, so the link's own header run
// (in its layer) is checked before the file is served.
type crossRef struct {
	l   *Layer
	run int
}

// linkAcrossLayers finds the hard links whose targets lie in lower layers and has each
// target's layer check the link's run too (Layer.crossChecks). A target is looked up in
// the topmost lower layer that has a regular file of that name: a merged view may resolve
// it otherwise (whiteouts), and then checks more than it needs, never less.
func (im *Image) linkAcrossLayers() {
	for i, up := range im.Layers {
		tc := up.tarCheck()
		if tc.err != nil {
			continue
		}
		for k := range up.Index.Entries {
			e := &up.Index.Entries[k]
			if !e.IsHardlink() {
				continue
			}
			if _, err := up.Index.Content(e); err == nil {
				continue // in its own layer: runsFor has it
			}
			for j := i - 1; j >= 0; j-- {
				lo := im.Layers[j]
				t, ok := lo.Index.Lookup(e.Linkname)
				if !ok {
					continue
				}
				if t, err := lo.Index.Content(t); err == nil && t.IsRegular() {
					lo.mu.Lock()
					if lo.crossLinks == nil {
						lo.crossLinks = map[*format.Entry][]crossRef{}
					}
					lo.crossLinks[t] = append(lo.crossLinks[t], crossRef{up, int(tc.runOf[k])})
					lo.mu.Unlock()
				}
				break
			}
		}
	}
}

// crossChecks checks the runs of the upper layers' hard links to e (linkAcrossLayers);
// with wait false it only says whether they are all known to match.
func (l *Layer) crossChecks(ctx context.Context, e *format.Entry, wait bool) error {
	l.mu.Lock()
	refs := l.crossLinks[e]
	l.mu.Unlock()
	for _, r := range refs {
		if !wait {
			if ok, err := r.l.checked([]int{r.run}); !ok {
				if err == nil {
					err = errors.New("not checked yet")
				}
				return err
			}
			continue
		}
		if err := r.l.checkRuns(ctx, []int{r.run}); err != nil {
			return err
		}
	}
	return nil
}
