package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/format"
	"lazypull/internal/fetch"
	"lazypull/internal/fusefs"
	"lazypull/internal/store"
)

// Layer is one lazypull layer of an image, served from the store and filled from its blob
// in the registry. It is the fusefs.Content of that layer.
type Layer struct {
	Desc  v1.Descriptor
	Index *format.Index

	blob  *fetch.Blob
	store *store.Store
	lease *store.Lease
	log   *slog.Logger // the image's

	mu      sync.Mutex
	files   map[*format.Entry]store.File // chunk lists, built on first use of each file
	streams map[*format.Entry]*stream    // sequential readers of large files
	// profiled holds, for the files a prefetch profile names, where its last range ends:
	// no read-ahead runs before a reader passes it (profiled).
	profiled map[*format.Entry]int64

	bg     context.Context // background read-ahead; ends with the image
	raSlot chan struct{}   // bounds read-aheads in flight
	raRuns atomic.Int64    // read-aheads started, for tests to count

	// Neighbour fetches (speculate.go): the entries whose first read was seen, a bound
	// on the fetches in flight, and how many ran, for tests to count.
	speculated    map[*format.Entry]bool
	whole         map[*format.Entry]bool // files fetchWhole ran for
	nbSlot        chan struct{}
	nbRuns        atomic.Int64
	noSpeculation bool
	// dirMissed counts the misses of first reads in each directory; dirs lists each
	// directory's entries (dirFiles).
	dirMissed map[string]int
	dirs      map[string][]int

	// im is the image the layer belongs to: the walk of programs' libraries (elfspec.go)
	// looks across its layers. elfRuns counts the walk's fetches of this layer's files.
	im      *Image
	elfRuns atomic.Int64

	reading *atomic.Int64 // the image's reads in progress (Image.reading)

	auto atomic.Pointer[autoLayer] // the recording of the image's start, if any (autoprofile.go)

	usage usageCache // what the store holds of the layer, last counted (held)

	tc tarCheck // the index checked against the tar (tarcheck.go)
	// crossLinks holds, for a file of this layer, the upper layers' hard links to it
	// (linkAcrossLayers): their runs are checked before it is served.
	crossLinks map[*format.Entry][]crossRef
}

// Read-ahead of files read sequentially. The kernel asks FUSE for at most 1 MiB at a
// time, each a round trip when it misses, and a registry serves a 1 MiB Range request far
// slower per byte than a large one (docker-registry: ~7-11 ms of CPU per request), so a
// cold sequential read keeps a window, doubling from readaheadMin up to readaheadMax,
// fetched ahead of the reader. Files from readaheadFrom up are followed: a program or a
// library of a few MiB read in a row at start (python3.11, libc) would otherwise wait a
// round trip for each of the kernel's requests, one after another.
const (
	readaheadFrom  = 1 << 20
	readaheadMin   = 1 << 20
	readaheadMax   = 64 << 20
	readaheadSlots = 2
	// wholeMax is the largest file fetched whole after its first read (fetchWhole).
	wholeMax = 8 << 20
)

// stream is the read-ahead state of one file read sequentially.
type stream struct {
	next   int64 // where the next sequential read starts: the end of the furthest read
	ahead  int64 // end of what read-ahead has asked for
	window int64
}

// follows says whether a read of n bytes at off goes on with the stream: it lies within a
// window of its front (the end of the furthest read, or of what read-ahead asked for).
// The kernel reads ahead too, and its reads of one file reach the mount's goroutines out
// of order: when only a read at exactly the front counted, a sequential reader's stream
// started again at a 1 MiB window every few MiB, and its reads fetched the chunks in
// between themselves, a small request each.
func (s *stream) follows(off, n int64) bool {
	w := max(s.window, readaheadMin)
	return off <= max(s.next, s.ahead)+w && off+n >= s.next-w
}

var (
	_ fusefs.Content    = (*Layer)(nil)
	_ fusefs.LocalFiler = (*Layer)(nil)
	_ fusefs.Checker    = (*Layer)(nil)
	_ store.Source      = blobSource{}
)

// openLayer reads a layer's index from the store, the profile's pack (pk, if not nil) or
// the registry (one request), checked against the digest in the layer's annotations (the
// manifest's word). wait, when not nil, returns once the index read is stored (keepMeta).
func openLayer(ctx context.Context, im *Image, st *store.Store, desc v1.Descriptor, pk *pack) (l *Layer, wait func(), err error) {
	if !format.IsLayer(desc.Annotations) {
		return nil, nil, fmt.Errorf("layer %s (%s): not a lazypull layer (no %s annotation); convert the image with `lazypull convert`", desc.Digest, desc.MediaType, format.AnnotationIndexDigest)
	}
	loc, err := format.LocationFromAnnotations(desc.Annotations)
	if err != nil {
		return nil, nil, fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	blob := im.Registry.Layer(desc)
	ix, wait, err := readIndex(ctx, st, blob, desc, loc, pk, im.log)
	if err != nil {
		return nil, nil, fmt.Errorf("layer %s: read index: %w", desc.Digest, err)
	}
	ix = st.ShareIndex(loc.Digest, ix)
	return &Layer{Desc: desc, Index: ix, blob: blob, store: st, lease: im.lease, log: im.log, files: map[*format.Entry]store.File{},
		streams: map[*format.Entry]*stream{}, bg: im.bg, raSlot: make(chan struct{}, readaheadSlots), reading: &im.reading,
		nbSlot: make(chan struct{}, neighbourSlots), noSpeculation: im.noSpeculation, im: im}, wait, nil
}

// readIndex reads the layer's index from the store's metadata, or else from the pack or
// the registry (then keeping it in the store, in the background: wait). Either way
// format checks it against loc. From the registry it is one Range request read as a stream
// (fetch.Blob.OpenRange, format.ReadIndexFrom): loc.Size is the manifest's word, at most
// format.MaxIndexSize, and what is held grows with the bytes that arrive, so a manifest
// that claims large indexes the registry does not hold costs what the registry sends.
func readIndex(ctx context.Context, st *store.Store, blob *fetch.Blob, desc v1.Descriptor, loc format.IndexLocation, pk *pack, log *slog.Logger) (ix *format.Index, wait func(), err error) {
	if err := loc.Check(desc.Size); err != nil {
		return nil, nil, err
	}
	if b, err := st.Meta(loc.Digest); err == nil && int64(len(b)) == loc.Size {
		if ix, err := format.ReadIndexBytes(b, desc.Size, loc); err == nil {
			return ix, nil, nil
		}
	}
	if pk != nil {
		if b, ok := pk.index(loc.Digest); ok {
			ix, err := format.ReadIndexBytes(b, desc.Size, loc)
			if err == nil {
				return ix, keepMeta(st, log, b, "cannot keep the layer index in the store; the layer will need its registry to be mounted again", "layer", desc.Digest), nil
			}
			log.Warn("profile pack holds a bad index; reading it from the layer", "layer", desc.Digest, "pack", pk.blob.Digest(), "err", err)
		}
	}
	ix, b, err := fetchIndex(ctx, blob, desc, loc)
	if err != nil {
		return nil, nil, err
	}
	return ix, keepMeta(st, log, b, "cannot keep the layer index in the store; the layer will need its registry to be mounted again", "layer", desc.Digest), nil
}

// fetchIndex reads the layer's index payload from the registry in one Range request and
// decodes it; it returns the payload too.
func fetchIndex(ctx context.Context, blob *fetch.Blob, desc v1.Descriptor, loc format.IndexLocation) (*format.Index, []byte, error) {
	if err := loc.Check(desc.Size); err != nil {
		return nil, nil, err
	}
	rc, err := blob.OpenRange(ctx, loc.Offset, loc.Size)
	if err != nil {
		return nil, nil, err
	}
	defer rc.Close()
	return format.ReadIndexFrom(rc, desc.Size, loc)
}

// file returns the store's description of a regular file's content. It does not pin the
// file: the store keeps what a read is using, an open passthrough file stays readable after
// eviction, and pinning all a mount ever read would make the store's bound meaningless.
func (l *Layer) file(e *format.Entry) (store.File, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if f, ok := l.files[e]; ok {
		return f, nil
	}
	f, err := store.FileOf(l.Index, e)
	if err != nil {
		return store.File{}, fmt.Errorf("layer %s: %w", l.Desc.Digest, err)
	}
	l.files[e] = f
	return f, nil
}

// ReadAt serves verified bytes of a regular file, fetching the chunks it lacks. Nothing
// is served before the entry (and the hard links to it) is found to match the layer's tar
// (tarcheck.go): the header frames that say so come in the same Fetch as the chunks.
func (l *Layer) ReadAt(ctx context.Context, e *format.Entry, p []byte, off int64) (int, error) {
	if l.reading != nil {
		l.reading.Add(1)
		defer l.reading.Add(-1)
	}
	runs, err := l.runsFor(e)
	if err != nil {
		return 0, err
	}
	ok, err := l.checked(runs)
	if err != nil {
		return 0, err
	}
	if err := l.crossChecks(ctx, e, true); err != nil {
		return 0, err
	}
	if e.Sparse {
		if err := l.checkRuns(ctx, runs); err != nil {
			return 0, err
		}
		return l.readSparse(ctx, e, p, off)
	}
	f, err := l.file(e)
	if err != nil {
		return 0, err
	}
	if a := l.auto.Load(); a != nil {
		a.read(e, f, off, int64(len(p)))
	}
	l.readahead(e, f, off, int64(len(p)))
	l.speculate(e, f)
	if ok {
		n, err := l.store.ReadAt(ctx, blobSource{l.blob}, f, p, off)
		if (err == nil || errors.Is(err, io.EOF)) && off == 0 {
			l.speculateELF(e, f, p[:n])
		}
		return n, err
	}
	n, err := l.store.ReadAt(ctx, &checkingSource{l: l, runs: runs}, f, p, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, err // the fetch failed: its retries are spent
	}
	if cerr := l.checkRuns(ctx, runs); cerr != nil {
		return 0, cerr
	}
	if off == 0 {
		l.speculateELF(e, f, p[:n])
	}
	return n, err
}

// readahead starts fetching the next window of a large file read sequentially. What it
// fetches goes to the store; a read that reaches a chunk in flight waits for that fetch
// (the store fetches each chunk once), it never starts another.
func (l *Layer) readahead(e *format.Entry, f store.File, off, n int64) {
	if f.Size <= readaheadFrom {
		return // the kernel's own read-ahead covers small files
	}
	l.mu.Lock()
	s := l.streams[e]
	if s == nil || !s.follows(off, n) {
		l.streams[e] = &stream{next: off + n, ahead: off + n}
		l.mu.Unlock()
		return
	}
	s.next = max(s.next, off+n)
	if s.next >= f.Size {
		delete(l.streams, e)
		l.mu.Unlock()
		return
	}
	if s.next <= l.profiled[e] {
		// The prefetch brings what the workload reads of the file at start; a window
		// reaching past the profile's end would be a request the start did not need.
		// Once the reader is past it, read-ahead goes on from there.
		l.mu.Unlock()
		return
	}
	if s.ahead-s.next > s.window/2 {
		l.mu.Unlock()
		return
	}
	select {
	case l.raSlot <- struct{}{}:
	default:
		// Enough in flight: the window moves on when one ends, at a later read (a
		// window passed over here was left to the reader's own small fetches).
		l.mu.Unlock()
		return
	}
	s.window = min(max(2*s.window, readaheadMin), readaheadMax)
	start := max(s.ahead, s.next)
	end := min(start+s.window, f.Size)
	s.ahead = end
	l.mu.Unlock()
	if end <= start {
		<-l.raSlot
		return
	}
	l.raRuns.Add(1)
	go func() {
		defer func() { <-l.raSlot }()
		// Errors are the reader's to meet and report, when it gets there.
		_ = l.store.ReadAhead(l.bg, streamSource{l.blob}, f, start, end-start)
	}()
}

// profile notes where the prefetch profile's ranges of e end (readahead).
func (l *Layer) profile(e *format.Entry, end int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.profiled == nil {
		l.profiled = map[*format.Entry]int64{}
	}
	l.profiled[e] = max(l.profiled[e], end)
}

// readSparse serves a sparse file, which is not laid out in chunks, by decoding its tar
// record each time, by range: memory stays at one frame whatever the file's size.
// Images hardly ever hold one.
func (l *Layer) readSparse(ctx context.Context, e *format.Entry, p []byte, off int64) (int, error) {
	fl, err := format.NewLayer(l.blob.ReaderAt(ctx), l.Desc.Size, l.Index)
	if err != nil {
		return 0, err
	}
	n, err := fl.ReadSparseAt(e, p, off)
	if err != nil {
		return 0, fmt.Errorf("layer %s: %w", l.Desc.Digest, err)
	}
	return n, nil
}

// LocalFile hands out the store's complete copy of a file, for FUSE passthrough: only once
// the entry is known to match the layer's tar (a read through ReadAt finds out).
func (l *Layer) LocalFile(e *format.Entry) (*os.File, bool) {
	if e.Sparse {
		return nil, false
	}
	if runs, err := l.runsFor(e); err != nil {
		return nil, false
	} else if ok, _ := l.checked(runs); !ok || l.crossChecks(context.Background(), e, false) != nil {
		return nil, false
	}
	f, err := l.file(e)
	if err != nil {
		return nil, false
	}
	fd, err := l.store.OpenLocal(f)
	if err != nil || fd == nil {
		return nil, false
	}
	if a := l.auto.Load(); a != nil {
		a.local(e, f)
	}
	return fd, true
}

// blobSource is a layer blob in the registry as the store's Source: chunks are fetched as
// byte ranges of the blob, which fetch coalesces into few requests.
type blobSource struct{ blob *fetch.Blob }

func (s blobSource) Fetch(ctx context.Context, chunks []format.Chunk, fn func(format.Chunk, []byte) error) error {
	ranges := make([]fetch.Range, len(chunks))
	byOff := make(map[int64]format.Chunk, len(chunks))
	for i, c := range chunks {
		ranges[i] = fetch.Range{Off: c.Offset, Len: c.CompSize}
		byOff[c.Offset] = c
	}
	return s.blob.Fetch(ctx, ranges, func(r fetch.Range, b []byte) error {
		c, ok := byOff[r.Off]
		if !ok || c.CompSize != r.Len {
			return fmt.Errorf("fetch answered range %s, which no chunk asked for", r)
		}
		return fn(c, b)
	})
}

// streamGap is the most blob bytes between two chunks that a streamSource reads through
// and drops rather than start another request.
const streamGap = 1 << 20

// streamSource fetches a sequential reader's read-ahead window: each run of chunks lying
// close together in the blob in one Range request read as a stream (fetch.Blob.OpenRange),
// frame by frame into one buffer, each chunk handed on as soon as its frame is in. Memory
// is one frame whatever the window's size, where blobSource (fetch.Blob.Fetch, for ranges
// several callers may share) reads a request's whole answer into a buffer of its own: so
// the window is not bounded by memory, and a sequential read makes few, large requests.
type streamSource struct{ blob *fetch.Blob }

func (s streamSource) Fetch(ctx context.Context, chunks []format.Chunk, fn func(format.Chunk, []byte) error) error {
	cs := slices.SortedFunc(slices.Values(chunks), func(a, b format.Chunk) int { return cmp.Compare(a.Offset, b.Offset) })
	var buf []byte
	for i := 0; i < len(cs); {
		end := cs[i].Offset + cs[i].CompSize
		j := i + 1
		for ; j < len(cs) && cs[j].Offset >= end && cs[j].Offset-end <= streamGap; j++ {
			end = cs[j].Offset + cs[j].CompSize
		}
		if err := s.run(ctx, cs[i:j], end, &buf, fn); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// run reads chunks cs, in blob order and not overlapping, with one request up to end.
func (s streamSource) run(ctx context.Context, cs []format.Chunk, end int64, buf *[]byte, fn func(format.Chunk, []byte) error) error {
	pos := cs[0].Offset
	rc, err := s.blob.OpenRange(ctx, pos, end-pos)
	if err != nil {
		return err
	}
	defer rc.Close()
	for _, c := range cs {
		if _, err := io.CopyN(io.Discard, rc, c.Offset-pos); err != nil {
			return fmt.Errorf("layer %s at %d: %w", s.blob.Digest(), pos, err)
		}
		if int64(cap(*buf)) < c.CompSize {
			*buf = make([]byte, c.CompSize)
		}
		frame := (*buf)[:c.CompSize]
		if _, err := io.ReadFull(rc, frame); err != nil {
			return fmt.Errorf("layer %s, chunk %s at %d: %w", s.blob.Digest(), c.Digest, c.Offset, err)
		}
		pos = c.Offset + c.CompSize
		if err := fn(c, frame); err != nil {
			return err
		}
	}
	return nil
}
