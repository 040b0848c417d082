package daemon

import (
	"context"
	"debug/elf"
	"io"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"lazypull/format"
	"lazypull/internal/elfdeps"
	"lazypull/internal/store"
)

// Programs and their libraries. Without a profile, the start of a program is a chain of
// round trips: the kernel reads the executable's header, the loader opens each library
// it needs, reads its header, maps it and faults its pages in, in pieces of the kernel's
// read-around (up to 1 MiB), each a miss; then the libraries those need, one after the
// other. node's start waits on about 60 of them, gcc's on more (cc1, as, ld and theirs).
// Yet what a program needs is written in it: PT_INTERP and the DT_NEEDED entries of its
// dynamic segment, found where the loader finds them (DT_RUNPATH with $ORIGIN, then the
// system's library directories). So the first read of an ELF program or library (the
// read at offset 0 that shows the ELF magic) starts, in the background, a walk of what
// it needs, file by file (up to elfJobs at once): a file's program headers are read
// (small reads, verified like any), its loadable segments fetched at once (one store
// Prefetch, two for a large file: the loader's part first), its dynamic segment read
// meanwhile in a request of its own, and the libraries it names walked in turn.
//
// What is fetched of a file is what the loader maps and touches: its executable and
// writable segments whole, read-only ones up to elfDataMax each (relocations, symbol
// tables, rodata); a larger read-only segment is data the program pages in as it uses
// it (ICU's 30 MiB table, of which node reads 2.6 MiB) and is left to its faults. The
// walk is bounded: elfMaxFiles files and elfBudget bytes per image, elfDepth levels.
// Like every speculation it fetches verified chunks into the store and pins nothing.
const (
	elfMaxFiles = 96
	elfBudget   = 512 << 20
	elfDepth    = 6
	elfJobs     = 8
	// A file's needed libraries and run path directories looked up, at most: each look-up
	// walks a path through the image's layers (real files: 5-30 and 0-2).
	elfMaxNeeded  = 64
	elfMaxRunPath = 8
	// elfWholeFrom: a file of at most this many compressed bytes is fetched whole, at once.
	elfWholeFrom = 512 << 10
	// elfSplitFrom: a file with more to fetch has its writable segments fetched first.
	elfSplitFrom = 4 << 20
	elfDataMax   = 16 << 20
	// elfSegmentMax bounds what is fetched of one executable or writable segment.
	elfSegmentMax = 128 << 20
)

// elfWalk is an image's walk of programs and libraries (Image.elf).
type elfWalk struct {
	mu     sync.Mutex
	seen   map[string]bool // paths of files taken (the image's view: the top layer's)
	budget int64
	files  int
	slots  chan struct{} // bounds the files read at once
	// pending counts the walk's goroutines (reads and fetches), for tests to wait on.
	pending atomic.Int64
	// path is where a script's "#!/usr/bin/env prog" finds prog: the image's PATH
	// (walkCommand), nil before it is known (defaultPATH).
	path []string
}

// setPath sets the directories where a script's env finds its interpreter.
func (w *elfWalk) setPath(dirs []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.path = dirs
}

// interpreter finds the interpreter of the script r (of size bytes) names on its #! line
// (shebang): its path, or for "/usr/bin/env prog", prog on the image's PATH.
func (w *elfWalk) interpreter(im *Image, r io.ReaderAt, size int64) (elfTarget, bool) {
	head := make([]byte, min(size, shebangMax))
	if n, err := r.ReadAt(head, 0); n < len(head) && err != nil {
		return elfTarget{}, false
	}
	interp, arg, ok := shebang(head)
	if !ok {
		return elfTarget{}, false
	}
	if path.Base(interp) != "env" {
		return im.findFile(interp)
	}
	var prog string
	for _, f := range strings.Fields(arg) {
		if !strings.HasPrefix(f, "-") && !strings.Contains(f, "=") {
			prog = f
			break
		}
	}
	if prog == "" {
		return elfTarget{}, false
	}
	w.mu.Lock()
	dirs := w.path
	w.mu.Unlock()
	if dirs == nil {
		dirs = strings.Split(defaultPATH, ":")
	}
	return im.findProgram(prog, dirs, "/")
}

// elfTarget is a file of the image found for the walk, and how deep.
type elfTarget struct {
	l     elfLayer
	e     *format.Entry // regular, content entry
	depth int
	// helpers: the programs the file names as its helpers are walked too (helpers.go);
	// for the programs of the image's command.
	helpers bool
	// links are the symbolic links findFile followed to the file: a program's start
	// follows them too, and each is served only once its header run is checked
	// (tarcheck.go), a round trip of its own when it is not (checkLinks).
	links []layerEntry
}

// layerEntry is an entry of one of the image's layers: a symbolic link the walk followed,
// or a file it fetches.
type layerEntry struct {
	l elfLayer
	e *format.Entry
}

// elfLayer is a layer whose files the walk reads and fetches: a converted layer (Layer)
// or an unconverted one served from its index artifact (indexedLayer).
type elfLayer interface {
	// elfIndex is the layer's index (its tree, for the walk's look-ups).
	elfIndex() *format.Index
	// elfOpen returns a reader of e for the walk's own reads (verified, through the
	// store, fetching what is missing; not a read of the workload's) and starts what
	// comes of e before its headers are read: the whole file when it is small, in which
	// case whole is true and its segments need no fetch of their own.
	elfOpen(ctx context.Context, w *elfWalk, e *format.Entry) (r io.ReaderAt, size int64, whole bool, err error)
	// elfSegments starts the fetch of what the loader maps of e (read as ef).
	elfSegments(ctx context.Context, w *elfWalk, e *format.Entry, ef *elfdeps.File)
	// elfUnread takes a file the walk cannot read or take.
	elfUnread(e *format.Entry)
	// elfFetch fetches the small files es whole, in one request (the data files glibc
	// reads at a program's start: command.go).
	elfFetch(ctx context.Context, es []*format.Entry)
	// elfCheckLinks makes ready to serve the symbolic links es: their header runs are
	// fetched and checked, in one request, for a layer that checks them (Layer.Check).
	elfCheckLinks(ctx context.Context, es []*format.Entry)
	// elfName names the layer in logs.
	elfName() string
}

// speculateELF notes a read of e (content f) at offset 0 whose bytes head show an ELF
// program or library: it and what it needs are walked (elfWalk), unless already, or
// unless the image is prefetched by a profile (which brings what the start reads, and
// no more). Whether the read missed the store is not asked: the kernel's read-ahead of
// an executable often reaches the mount before its read at 0 and fetches the same chunk,
// and a walk over local files fetches nothing. One the walk cannot take (its bounds) is
// fetched whole if small enough (fetchWhole).
func (l *Layer) speculateELF(e *format.Entry, f store.File, head []byte) {
	if !elfdeps.IsProgram(head) || !l.speculates() {
		return
	}
	if l.im == nil || !l.im.elf.add(l.im, []elfTarget{{l: l, e: e}}) {
		l.fetchWhole(e, f)
	}
}

func (l *Layer) elfIndex() *format.Index { return l.Index }
func (l *Layer) elfName() string         { return l.Desc.Digest.String() }

// elfOpen: a file of at most elfWholeFrom compressed bytes comes whole in one request
// first, and is read where it is: its header's round trip and its segments' are one (a
// library's header is not local when the walk finds it).
func (l *Layer) elfOpen(ctx context.Context, w *elfWalk, e *format.Entry) (io.ReaderAt, int64, bool, error) {
	f, err := l.file(e)
	if err != nil {
		return nil, 0, false, err
	}
	var comp int64
	for _, c := range f.Chunks {
		comp += c.CompSize
	}
	whole := comp <= elfWholeFrom && w.take(f.Size)
	if whole {
		l.prefetchELF(ctx, e, []store.Want{{File: f, Len: f.Size}})
	}
	return &layerFileReader{ctx: ctx, l: l, e: e, f: f}, f.Size, whole, nil
}

func (l *Layer) elfFetch(ctx context.Context, es []*format.Entry) {
	var whole wholeFiles
	for _, e := range es {
		if f, err := l.file(e); err == nil {
			whole.add(l, e, f)
		}
	}
	whole.fetch(ctx, l)
}

func (l *Layer) elfCheckLinks(ctx context.Context, es []*format.Entry) {
	var whole wholeFiles
	for _, e := range es {
		if rs, err := l.runsFor(e); err == nil { // else its reads report it
			whole.addRuns(rs)
		}
	}
	whole.fetch(ctx, l)
}

// checkLinks makes ready, in the background, the symbolic links followed to ts (one
// request per layer for those whose runs are not checked yet).
func (w *elfWalk) checkLinks(im *Image, ts []elfTarget) {
	var links []layerEntry
	for _, t := range ts {
		links = append(links, t.links...)
	}
	w.perLayer(links, func(l elfLayer, es []*format.Entry) { l.elfCheckLinks(im.bg, es) })
}

// perLayer runs do in the background (counted in pending), once for each layer with
// the entries of es in it.
func (w *elfWalk) perLayer(es []layerEntry, do func(l elfLayer, es []*format.Entry)) {
	byLayer := map[elfLayer][]*format.Entry{}
	var layers []elfLayer
	for _, k := range es {
		if byLayer[k.l] == nil {
			layers = append(layers, k.l)
		}
		byLayer[k.l] = append(byLayer[k.l], k.e)
	}
	for _, l := range layers {
		w.pending.Add(1)
		go func() {
			defer w.pending.Add(-1)
			do(l, byLayer[l])
		}()
	}
}

func (l *Layer) elfUnread(e *format.Entry) {
	if f, err := l.file(e); err == nil {
		l.fetchWhole(e, f)
	}
}

// add starts the walk of each target not seen yet, within the walk's bounds. It says
// whether the first target is the walk's (now or before).
func (w *elfWalk) add(im *Image, ts []elfTarget) (taken bool) {
	w.checkLinks(im, ts)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.seen == nil {
		w.seen, w.budget, w.slots = map[string]bool{}, elfBudget, make(chan struct{}, elfJobs)
	}
	for i, t := range ts {
		if w.seen[t.e.Name] {
			taken = taken || i == 0
			continue
		}
		if w.files >= elfMaxFiles || t.depth > elfDepth {
			continue
		}
		taken = taken || i == 0
		w.seen[t.e.Name] = true
		w.files++
		w.pending.Add(1)
		go func() {
			defer w.pending.Add(-1)
			w.walk(im, t)
		}()
	}
	return taken
}

// walk reads t's program headers, starts the fetch of its segments, reads its dynamic
// segment meanwhile (in a request of its own, so it does not wait behind the segments)
// and walks the libraries it needs. A small file comes whole first and is read where it
// is (elfLayer.elfOpen).
func (w *elfWalk) walk(im *Image, t elfTarget) {
	ctx := im.bg
	select {
	case w.slots <- struct{}{}:
		defer func() { <-w.slots }()
	case <-ctx.Done():
		return
	}
	r, size, whole, err := t.l.elfOpen(ctx, w, t.e)
	if err != nil {
		return
	}
	ef, err := elfdeps.ReadProgram(r, size)
	if err != nil {
		t.l.elfUnread(t.e)
		if nt, ok := w.interpreter(im, r, size); ok {
			nt.depth = t.depth + 1
			w.add(im, []elfTarget{nt})
			return
		}
		im.log.Debug("program's needs not read", "layer", t.l.elfName(), "path", t.e.Name, "err", err)
		return
	}
	if !whole {
		t.l.elfSegments(ctx, w, t.e, ef)
	}
	if t.helpers {
		w.pending.Add(1)
		go func() {
			defer w.pending.Add(-1)
			w.mu.Lock()
			dirs := w.path
			w.mu.Unlock()
			w.add(im, im.helpers(r, ef, t.depth, dirs))
		}()
	}
	if err := ef.ReadDynamic(r); err != nil {
		im.log.Debug("program's needs not read", "layer", t.l.elfName(), "path", t.e.Name, "err", err)
		return
	}
	var next []elfTarget
	for _, name := range ef.Needed[:min(len(ef.Needed), elfMaxNeeded)] {
		if nt, ok := im.findLibrary(name, path.Dir(t.e.Name), ef); ok {
			nt.depth = t.depth + 1
			next = append(next, nt)
		}
	}
	if ef.Interp != "" {
		if nt, ok := im.findFile(ef.Interp); ok {
			nt.depth = t.depth + 1
			next = append(next, nt)
		}
	}
	w.add(im, next)
}

// elfSegments starts the fetch of the segments of e (read as ef) but for its dynamic
// segment. What the loader reads before the program runs comes first, in a
// request of its own, for a large file: the first segment when it is not code (headers,
// symbol and string tables, relocations) and the writable ones (at the end of the file,
// after megabytes of code); then the code and the read-only data, in file order. A
// smaller file comes in one request (a node's requests in flight are bounded:
// fetch.DefaultConcurrency).
func (l *Layer) elfSegments(ctx context.Context, w *elfWalk, e *format.Entry, ef *elfdeps.File) {
	f, err := l.file(e)
	if err != nil {
		return
	}
	dyn := []elfdeps.Load{ef.Dynamic}
	var first, rest []store.Want
	var total int64
	for _, wnt := range without(elfWants(f, ef), dyn) {
		if w.take(wnt.Len) {
			rest = append(rest, wnt)
			total += wnt.Len
		}
	}
	if total > elfSplitFrom {
		var code []store.Want
		for _, wnt := range rest {
			if loaderFirst(ef, wnt.Off) {
				first = append(first, wnt)
			} else {
				code = append(code, wnt)
			}
		}
		rest = without(code, asLoads(first))
	}
	for _, ws := range [][]store.Want{first, rest} {
		w.pending.Add(1)
		go func() {
			defer w.pending.Add(-1)
			l.prefetchELF(ctx, e, ws)
		}()
	}
}

// take draws n bytes from the walk's budget; false when they do not fit.
func (w *elfWalk) take(n int64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if n > w.budget {
		return false
	}
	w.budget -= n
	return true
}

// prefetchELF fetches the ranges wants of e, checking its header runs as any fetch.
func (l *Layer) prefetchELF(ctx context.Context, e *format.Entry, wants []store.Want) {
	runs, err := l.runsFor(e)
	if err != nil || len(wants) == 0 {
		return
	}
	l.elfRuns.Add(1)
	// Errors are the readers' to meet, if they ever read these bytes.
	if err := l.store.Prefetch(ctx, &checkingSource{l: l, runs: runs}, wants...); err == nil {
		l.prefetchRuns(ctx, runs)
	}
}

// loaderFirst says whether the byte at off of ef is in a segment the loader reads before
// the program runs: a writable one, or the first one when it is not code.
func loaderFirst(ef *elfdeps.File, off int64) bool {
	for i, ld := range ef.Loads {
		if off >= ld.Off && off < ld.Off+ld.Size && (ld.Write || (i == 0 && !ld.Exec)) {
			return true
		}
	}
	return false
}

// asLoads is the ranges of wants.
func asLoads(wants []store.Want) []elfdeps.Load {
	out := make([]elfdeps.Load, len(wants))
	for i, w := range wants {
		out[i] = elfdeps.Load{Off: w.Off, Size: w.Len}
	}
	return out
}

// without returns wants with the chunks that hold any of the ranges cut left out, so
// that a fetch of those ranges is not a wait behind them (nor they behind it).
func without(wants []store.Want, cut []elfdeps.Load) []store.Want {
	for _, c := range cut {
		if c.Size <= 0 {
			continue
		}
		var out []store.Want
		for _, w := range wants {
			lo, hi := c.Off, c.Off+c.Size
			for _, ch := range w.File.Chunks {
				if ch.FileOffset < c.Off+c.Size && c.Off < ch.FileOffset+ch.Size {
					lo, hi = min(lo, ch.FileOffset), max(hi, ch.FileOffset+ch.Size)
				}
			}
			end := w.Off + w.Len
			if hi <= w.Off || lo >= end {
				out = append(out, w)
				continue
			}
			if lo > w.Off {
				out = append(out, store.Want{File: w.File, Off: w.Off, Len: lo - w.Off})
			}
			if hi < end {
				out = append(out, store.Want{File: w.File, Off: hi, Len: end - hi})
			}
		}
		wants = out
	}
	return wants
}

// elfWants are the ranges of f fetched for a program or library ef: the first page (the
// headers the loader reads), executable and writable segments (up to elfSegmentMax) and
// read-only ones up to elfDataMax, the local chunks left out by the store.
func elfWants(f store.File, ef *elfdeps.File) []store.Want {
	wants := []store.Want{{File: f, Len: min(f.Size, 64<<10)}}
	for _, ld := range ef.Loads {
		n := ld.Size
		switch {
		case ld.Exec || ld.Write:
			n = min(n, elfSegmentMax)
		case n > elfDataMax:
			continue
		}
		if n > 0 {
			wants = append(wants, store.Want{File: f, Off: ld.Off, Len: n})
		}
	}
	return wants
}

// multiarch is the Debian library directory of machine m, "" if none.
func multiarch(m elf.Machine) string {
	switch m {
	case elf.EM_X86_64:
		return "x86_64-linux-gnu"
	case elf.EM_AARCH64:
		return "aarch64-linux-gnu"
	case elf.EM_386:
		return "i386-linux-gnu"
	case elf.EM_ARM:
		return "arm-linux-gnueabihf"
	case elf.EM_PPC64:
		return "powerpc64le-linux-gnu"
	case elf.EM_S390:
		return "s390x-linux-gnu"
	case elf.EM_RISCV:
		return "riscv64-linux-gnu"
	}
	return ""
}

// findLibrary finds the library name that a file in dir, read as ef, needs, where the
// loader looks: ef's run path ($ORIGIN is dir), then the system's directories.
func (im *Image) findLibrary(name, dir string, ef *elfdeps.File) (elfTarget, bool) {
	if strings.Contains(name, "/") {
		return im.findFile(name)
	}
	var dirs []string
	for _, d := range ef.RunPath[:min(len(ef.RunPath), elfMaxRunPath)] {
		d = strings.ReplaceAll(strings.ReplaceAll(d, "${ORIGIN}", "$ORIGIN"), "$ORIGIN", "/"+dir)
		if strings.HasPrefix(d, "/") {
			dirs = append(dirs, d)
		}
	}
	if ma := multiarch(ef.Machine); ma != "" {
		dirs = append(dirs, "/usr/lib/"+ma, "/lib/"+ma)
	}
	dirs = append(dirs, "/usr/lib64", "/lib64", "/usr/lib", "/lib")
	for _, d := range dirs {
		if t, ok := im.findFile(path.Join(d, name)); ok {
			return t, true
		}
	}
	return elfTarget{}, false
}

// findFile finds the regular file at p in the image as a container sees it: each
// element of the path in the top layer that has it, symbolic links followed (at most 16,
// also in the directories of the path: /lib64 -> usr/lib64), hard links too.
func (im *Image) findFile(p string) (elfTarget, bool) {
	parts := strings.Split(format.CleanName(p), "/")
	cur, links := "", 0
	var hops []layerEntry
	for i := 0; i < len(parts); i++ {
		next := path.Join(cur, parts[i])
		l, e := im.lookup(next)
		switch {
		case e == nil && i < len(parts)-1:
			cur = next // a directory a tar may leave implicit
			continue
		case e == nil:
			return elfTarget{}, false
		case e.IsSymlink():
			links++
			if links > 16 {
				return elfTarget{}, false
			}
			hops = append(hops, layerEntry{l: l, e: e})
			base := cur
			if strings.HasPrefix(e.Linkname, "/") {
				base = ""
			}
			parts = append(strings.Split(format.CleanName(path.Join(base, e.Linkname)), "/"), parts[i+1:]...)
			if len(parts) > 256 {
				return elfTarget{}, false
			}
			cur, i = "", -1
			continue
		case i < len(parts)-1:
			cur = next
			continue
		}
		ce, err := l.elfIndex().Content(e)
		if err != nil || !ce.IsRegular() || ce.Sparse {
			return elfTarget{}, false
		}
		return elfTarget{l: l, e: ce, links: hops}, true
	}
	return elfTarget{}, false
}

// lookup finds the entry at p in the top layer that has one: of its lazypull layers, or
// of the layers served from its index artifact.
func (im *Image) lookup(p string) (elfLayer, *format.Entry) {
	for _, l := range slices.Backward(im.Layers) {
		if e, ok := l.Index.Lookup(p); ok {
			return l, e
		}
	}
	for _, l := range slices.Backward(im.indexed) {
		if e, ok := l.Index.Lookup(p); ok {
			return l, e
		}
	}
	return nil, nil
}

// layerFileReader reads a file of a layer through the store (verified, fetched when
// missing), for the walk's own reads: they are no reads of the workload's, so neither
// recorded nor followed by read-ahead.
type layerFileReader struct {
	ctx context.Context
	l   *Layer
	e   *format.Entry
	f   store.File
}

func (r *layerFileReader) ReadAt(p []byte, off int64) (int, error) {
	runs, err := r.l.runsFor(r.e)
	if err != nil {
		return 0, err
	}
	n, err := r.l.store.ReadAt(r.ctx, &checkingSource{l: r.l, runs: runs}, r.f, p, off)
	if err != nil {
		return n, err
	}
	if err := r.l.checkRuns(r.ctx, runs); err != nil {
		return 0, err
	}
	return n, nil
}
