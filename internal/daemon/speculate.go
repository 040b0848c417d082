package daemon

import (
	"context"
	"path"
	"strings"
	"time"

	"lazypull/format"
	"lazypull/internal/store"
)

// Neighbours: a start without a profile reads many small files one after another (an
// interpreter's modules, a program's data files), each a miss that waits a round trip.
// Files read together often share a small directory (a package's modules: json/, re/, an
// app's files). So the first read of a small file that misses the store also fetches, in
// a request of its own beside the read's, the other small files of its directory, when
// all of them together are at most neighbourBudget compressed bytes: about half the
// bandwidth-delay product of the links the bench measures (100 Mbit/s x 20 ms = 250 KB,
// 1 Gbit/s x 2 ms = 250 KB, 20 Mbit/s x 50 ms = 125 KB), so a useless guess costs less
// than the round trip a good one saves. A larger directory (a library directory, a
// package of hundreds of modules) gets nothing: there, measured on python, the files
// near the one read were seldom the next ones read, and fetching them slowed the reads
// they shared the link with (docs/benchmarks.md, "Fewer round trips without a profile").
// What comes is verified and stored like any fetch (store.Prefetch); nothing is pinned.
const (
	neighbourBudget = 128 << 10
	// neighbourMax is the largest file of a directory fetched whole: a directory that
	// holds a larger one is not.
	neighbourMax = 64 << 10
	// neighbourScan bounds the index entries looked at on each side of the read file.
	neighbourScan = 512
	// neighbourSlots bounds the neighbour fetches in flight per layer; when they are all
	// busy, a miss fetches no neighbours.
	neighbourSlots = 2
)

// Directories read file after file. A directory too large for the rule above (a C
// library's headers, an interpreter's standard library) is still read a file at a time,
// each a round trip: gcc's hello world reads 22 headers from four directories, one after
// another. The second miss in the same directory is taken as that pattern: the other
// small files of the directory that the store lacks come in one request, if they are at
// most dirBudget compressed bytes together (about four bandwidth-delay products of the
// links measured: four round trips of link time, against the dozen a compiler's or an
// interpreter's directory saves), else none.
const (
	dirMisses = 2
	dirBudget = 1 << 20
)

// DefaultSpeculateMinRTT is the round trip to the registry below which a read that misses
// fetches only what it asks for (OpenOptions.SpeculateMinRTT): a registry on loopback
// answers in a fraction of a millisecond, one across a region's network in a few.
const DefaultSpeculateMinRTT = time.Millisecond

// speculates says whether a read that misses may fetch more than it asks for: not when
// speculation is off, nor while the registry's measured round trip is below the image's
// SpeculateMinRTT. A guess costs its bytes on any link and saves round trips: on a link
// where a round trip costs next to nothing it saves nothing (python3 -c 'print(1)' from a
// registry on loopback fetched 1.32x the bytes the kernel read with speculation, against
// 1.09x without it).
//
// Nor when a profile prefetches the image: it names what the start reads, and a read that
// finds its file missing is most often one the profile's fetch has not delivered yet, of
// which the guesses would fetch the neighbours the profile left out on purpose (gcc's and
// node's starts each made one such request, their fifth, 1.6 s in).
func (l *Layer) speculates() bool {
	if l.noSpeculation {
		return false
	}
	return l.im == nil || l.im.speculating()
}

// speculating is Layer.speculates for any layer of im.
func (im *Image) speculating() bool {
	if im.noSpeculation {
		return false
	}
	if st, ok := im.PrefetchStats(); ok && st.Profile != "" {
		return false
	}
	if im.minRTT <= 0 {
		return true
	}
	rtt, ok := im.roundTrip()
	return !ok || rtt >= im.minRTT
}

// speculate fetches, in the background, the neighbours of e (dirNeighbours) when the first
// read of e (its content f) misses the store.
func (l *Layer) speculate(e *format.Entry, f store.File) {
	if !l.speculates() {
		return
	}
	l.mu.Lock()
	if l.speculated == nil {
		l.speculated = map[*format.Entry]bool{}
	}
	if l.speculated[e] {
		l.mu.Unlock()
		return
	}
	l.speculated[e] = true
	l.mu.Unlock()
	if len(l.store.Missing(f)) == 0 {
		return
	}
	dir := path.Dir(e.Name)
	l.mu.Lock()
	if l.dirMissed == nil {
		l.dirMissed = map[string]int{}
	}
	l.dirMissed[dir]++
	again := l.dirMissed[dir] == dirMisses
	l.mu.Unlock()
	select {
	case l.nbSlot <- struct{}{}:
	default:
		return
	}
	go func() {
		defer func() { <-l.nbSlot }()
		wants, runs := l.dirNeighbours(e)
		if len(wants) == 0 && again {
			wants, runs = l.dirMissing(dir, dirBudget)
		}
		if len(wants) == 0 {
			return
		}
		l.nbRuns.Add(1)
		(&wholeFiles{wants: wants, runs: runs}).fetch(l.bg, l)
	}()
}

// dirNeighbours returns the other regular files of e's directory that the store lacks,
// if all the directory's files are small and its files that the store lacks are at most
// neighbourBudget compressed bytes, else none; and the header runs that must be checked
// before any of them is served. The directory's files are found next to e in the layer's
// index (tar order), looking past its subdirectories' entries.
func (l *Layer) dirNeighbours(e *format.Entry) ([]store.Want, []int) {
	i := l.entryIndex(e)
	if i < 0 {
		return nil, nil
	}
	dir := path.Dir(e.Name)
	es := l.Index.Entries
	var (
		whole  wholeFiles
		budget = int64(neighbourBudget)
		over   bool
	)
	// take adds es[j] if it is a neighbour that fits; it says whether to go on that way.
	take := func(j int) bool {
		if j < 0 || j >= len(es) {
			return false
		}
		n := &es[j]
		if !strings.HasPrefix(n.Name, dir+"/") && dir != "." {
			return false // left the directory
		}
		if path.Dir(n.Name) != dir || !n.IsRegular() || n.Sparse || n.Size == 0 {
			return true // a subdirectory's entry, or not a small file: look past it
		}
		if n.Size > neighbourMax {
			over = true
			return false
		}
		f, err := l.file(n)
		if err != nil || len(l.store.Missing(f)) == 0 {
			return true
		}
		var comp int64
		for _, c := range f.Chunks {
			comp += c.CompSize
		}
		if comp > budget {
			over = true
			return false
		}
		if whole.add(l, n, f) {
			budget -= comp
		}
		return true
	}
	after, before := true, true
	for k := 1; k <= neighbourScan && (after || before) && !over; k++ {
		if after {
			after = take(i + k)
		}
		if before && !over {
			before = take(i - k)
		}
	}
	if over || after || before {
		return nil, nil
	}
	return whole.wants, whole.runs
}

// fetchWhole fetches the rest of a mid-sized program or library in the background, when
// the walk of programs' needs (elfspec.go) cannot read it or has reached its bounds.
// Programs and libraries are read whole at start, but through page faults on their
// mappings, in pieces of the kernel's read-around (up to 1 MiB each, out of order):
// without this each piece waits a round trip of its own (python3.11 of 6.6 MB took 9).
// Other files are not: an archive or a data file is read where its reader seeks (ld read
// 0.2 MB of gcc's 3 MB libgcc.a), and read-ahead follows one read in a row.
func (l *Layer) fetchWhole(e *format.Entry, f store.File) {
	if f.Size <= readaheadFrom || f.Size > wholeMax || !l.speculates() {
		return
	}
	l.mu.Lock()
	if l.whole == nil {
		l.whole = map[*format.Entry]bool{}
	}
	first := !l.whole[e]
	l.whole[e] = true
	l.mu.Unlock()
	if !first {
		return
	}
	select {
	case l.raSlot <- struct{}{}:
	default:
		return
	}
	l.raRuns.Add(1)
	go func() {
		defer func() { <-l.raSlot }()
		_ = l.store.ReadAhead(l.bg, blobSource{l.blob}, f, 0, f.Size)
	}()
}

// dirMissing returns the regular files directly in dir of at most neighbourMax bytes that
// the store lacks, if they are at most budget compressed bytes together, else none; and
// the header runs to check before any of them is served.
func (l *Layer) dirMissing(dir string, budget int64) ([]store.Want, []int) {
	var whole wholeFiles
	for _, i := range l.dirFiles(dir) {
		n := &l.Index.Entries[i]
		if !n.IsRegular() || n.Sparse || n.Size == 0 || n.Size > neighbourMax {
			continue
		}
		f, err := l.file(n)
		if err != nil || len(l.store.Missing(f)) == 0 {
			continue
		}
		for _, c := range f.Chunks {
			budget -= c.CompSize
		}
		if budget < 0 {
			return nil, nil
		}
		whole.add(l, n, f)
	}
	return whole.wants, whole.runs
}

// wholeFiles are files of a layer to fetch whole, and the header runs to check before
// any of them is served, each once.
type wholeFiles struct {
	wants []store.Want
	runs  []int
	seen  map[int]bool
}

// add adds the file e (content f); false when its header runs cannot be found (its reads
// report why).
func (w *wholeFiles) add(l *Layer, e *format.Entry, f store.File) bool {
	rs, err := l.runsFor(e)
	if err != nil {
		return false
	}
	w.wants = append(w.wants, store.Want{File: f, Len: f.Size})
	w.addRuns(rs)
	return true
}

// addRuns adds header runs to check (a symbolic link's, with no content to fetch).
func (w *wholeFiles) addRuns(rs []int) {
	if w.seen == nil {
		w.seen = map[int]bool{}
	}
	for _, r := range rs {
		if !w.seen[r] {
			w.seen[r] = true
			w.runs = append(w.runs, r)
		}
	}
}

// fetch fetches the files with their header runs (one store.Prefetch), then the runs no
// file's fetch brought. Errors are the readers' to meet, if they ever read these files.
func (w *wholeFiles) fetch(ctx context.Context, l *Layer) {
	if len(w.wants) > 0 {
		if err := l.store.Prefetch(ctx, &checkingSource{l: l, runs: w.runs}, w.wants...); err != nil {
			return
		}
	}
	l.prefetchRuns(ctx, w.runs)
}

// dirFiles returns the indexes of the entries directly in dir, from a map of the layer's
// directories built on first use.
func (l *Layer) dirFiles(dir string) []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dirs == nil {
		l.dirs = map[string][]int{}
		for i := range l.Index.Entries {
			d := path.Dir(l.Index.Entries[i].Name)
			l.dirs[d] = append(l.dirs[d], i)
		}
	}
	return l.dirs[dir]
}
