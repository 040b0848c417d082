package store

import (
	"container/list"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"lazypull/format"
)

// DefaultDir is where a node keeps its store unless told otherwise.
const DefaultDir = "/var/lib/lazypull"

// Version is the on-disk layout version this package reads and writes. A store written by
// another version is refused, never converted in place.
const Version = 1

// Names inside the store directory. The store touches nothing else in it, so the directory
// may hold other state (the daemon's stats.json, say) once it is a store.
const (
	versionName  = "store-version" // "lazypull store <Version>\n": the mark of a store
	lockName     = "store.lock"    // flock'ed while a process has the store open
	objectsName  = "objects"       // objects/<hex[:2]>/<hex>: content whose sha256 is <hex>
	tmpName      = "tmp"           // temp files being written (tempPatterns); Open removes them
	chunkLogName = "chunks.log"    // which chunks lie where inside multi-chunk objects
)

// Temp files the store creates, as os.CreateTemp names them (the * becomes decimal digits).
// Open removes what a process that died left of these, and only these: a directory the
// store is pointed at by mistake loses nothing.
const (
	objectTemp   = "object-*"     // in tmp/: an object being written (createTemp)
	chunkLogTemp = "chunks-*.log" // in tmp/: a chunk log being compacted
)

// fresh reports whether the names of a directory without a version file let it become a
// store: nothing, or only what a store's own first Open leaves before it writes the
// version file (the lock, the version file's temp file), or lost+found (a file system
// made for the store).
func fresh(names []string) bool {
	for _, n := range names {
		if n != lockName && n != "lost+found" && !isTempOf(n, "."+versionName+"-*") {
			return false
		}
	}
	return true
}

// isTempOf reports whether name is what os.CreateTemp makes of pattern: the pattern with
// its * replaced by decimal digits.
func isTempOf(name, pattern string) bool {
	pre, suf, _ := strings.Cut(pattern, "*")
	if len(name) <= len(pre)+len(suf) || !strings.HasPrefix(name, pre) || !strings.HasSuffix(name, suf) {
		return false
	}
	for _, c := range name[len(pre) : len(name)-len(suf)] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

const versionPrefix = "lazypull store "

// Tuning constants.
const (
	// stampEvery is how stale an object's mtime may get before an access rewrites it. The
	// mtime is the LRU order a restarted store starts from: an hour is coarse enough that
	// hot reads cost no syscall, and fine enough for eviction.
	stampEvery = time.Hour
	// warnEvery bounds how often one kind of trouble (disk full, over the bound) is logged.
	warnEvery = 10 * time.Minute
	// maxProgress bounds the in-memory map of partly present files waiting for assembly.
	maxProgress = 1 << 16
	// maxOpenFiles bounds the descriptors kept open for reads; opening and closing the
	// file on each read costs as much as a 128 KiB read from the page cache.
	maxOpenFiles = 256
	// writers store fetched chunks in the background, in batches (storeChunks): two, so
	// that one writes the chunks queued while the other waits on its fsyncs.
	writers = 2
	// maxBatch bounds the chunks of one batch.
	maxBatch = 64
	// maxPending bounds the bytes of fetched chunks a bulk fetch queues for the writers.
	maxPending = 64 << 20
	// assemblers bounds the assemblies that reads start in the background; each copies and
	// hashes a whole file.
	assemblers = 2
	// scanners is how many directories Open scans at once.
	scanners = 16
)

// ErrClosed is returned by a Store's methods once Close was called.
var ErrClosed = errors.New("store is closed")

// ErrCorrupt is wrapped by every error about content that does not hash to its digest: a
// corrupt frame from a Source, or local data that went bad.
var ErrCorrupt = errors.New("content does not match its digest")

// Option configures Open.
type Option func(*options) error

type options struct {
	maxBytes int64
	log      *slog.Logger
	verify   bool
	existing bool
}

// WithMaxBytes bounds the bytes the store keeps on disk; least recently used objects that
// no Lease pins and no read is using are evicted to stay under it. 0, the default, means
// no bound.
func WithMaxBytes(n int64) Option {
	return func(o *options) error {
		if n < 0 {
			return fmt.Errorf("store: max bytes %d: must not be negative", n)
		}
		o.maxBytes = n
		return nil
	}
}

// WithLogger sets where the store logs (default: nowhere; the caller owns its logger).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) error {
		if l == nil {
			return errors.New("store: nil logger")
		}
		o.log = l
		return nil
	}
}

// WithVerifyOnOpen makes Open hash every object and every chunk location before it
// returns, discarding whatever does not match (see Verify). Off by default: the write
// protocol already guarantees that only verified content is ever named as an object.
func WithVerifyOnOpen() Option {
	return func(o *options) error {
		o.verify = true
		return nil
	}
}

// ErrNoStore is what Open answers, with WithExisting, for a directory that holds no store.
var ErrNoStore = errors.New("no lazypull store")

// WithExisting opens only a store that exists: a directory that is missing, or holds no
// store, is ErrNoStore and is left as it was (not created). Commands that read or trim the
// node's store (stats, prune) take it, so that a mistyped directory is an error, not a new
// empty store.
func WithExisting() Option {
	return func(o *options) error {
		o.existing = true
		return nil
	}
}

// Store is the node-wide content-addressed store. Its methods are safe for concurrent use.
type Store struct {
	indexes  indexes // decoded layer indexes, shared (ShareIndex)
	dir      string
	log      *slog.Logger
	maxBytes int64

	lock    *os.File // holds the flock
	clog    *chunkLog
	bgCtx   context.Context
	bgStop  context.CancelFunc
	bg      sync.WaitGroup // assemblies started by reads
	ops     sync.WaitGroup // calls in progress
	wq      writeQueue
	bufs    chunkBufs
	writers sync.WaitGroup
	asm     chan struct{} // assemblers slots

	mu         sync.Mutex
	closed     bool
	objects    map[format.Digest]*object
	metas      map[format.Digest]*object  // metadata under meta/ (meta.go)
	lru        list.List                  // of *object (metadata too), most recently used first
	bytes      int64                      // of objects and metadata: what the bound bounds
	metaBytes  int64                      // of metadata alone
	chunks     map[format.Digest]chunkLoc // chunks inside multi-chunk objects
	flights    map[format.Digest]*flight  // chunks being fetched
	assembling map[format.Digest]*flight  // files being assembled
	fills      map[format.Digest]*object  // files being filled in tmp/ (direct.go)
	progress   map[format.Digest]int      // partly present files: chunks known present
	filePins   map[format.Digest]int
	chunkPins  map[format.Digest]int
	metaPins   map[format.Digest]int // metadata a prune keeps (PruneKeeping)
	fds        list.List             // of *object with an open fd, most recently used first
	lastFull   time.Time             // last disk-full warning
	lastOver   time.Time             // last over-the-bound warning

	st      counters
	changes atomic.Uint64 // objects and metadata added or removed (Changes)
}

// object is one file under objects/.
type object struct {
	digest format.Digest
	size   int64
	elem   *list.Element
	refs   int   // reads using the object, under Store.mu; never evicted while > 0
	stamp  int64 // unix seconds of the file's mtime, as last written
	dead   bool  // removed; chunkLocs pointing here are stale
	// fd is an open descriptor of the file, kept for the next read (Store.fds), closed
	// once the object is dead and no read uses it.
	fd     *os.File
	fdElem *list.Element
	// composite: a multi-chunk file with its chunk locations indexed, never dropped as
	// the part of another file.
	composite bool
	// drop: a chunk object that an assembled file holds now, to be removed once the
	// reads using it are done.
	drop bool
	// meta: not an object but metadata (a manifest or an index) under meta/, in the same
	// LRU order and bound as the objects; never read through fd, never pinned.
	meta bool
	// fill: a multi-chunk file being filled in tmp/ (direct.go), not yet under objects/.
	fill *filling
}

// chunkLoc says where a chunk lies inside a (multi-chunk) object.
type chunkLoc struct {
	obj  *object
	off  int64
	size int64
}

// Open opens the store in dir, creating it if need be. A directory that holds something
// but no store-version file is not a store: Open refuses it, and writes or removes nothing
// in it (pointed at /var by mistake, it would otherwise have emptied /var/tmp). Open takes
// an exclusive lock on the store (a second process gets a clear error), refuses a store of
// another layout version, removes the temp files a process that died left (named as the
// store names its own, in its own directories), drops anything under objects/ that is not
// an object, and rebuilds its in-memory index from objects/, meta/ and the chunk log.
func Open(dir string, opts ...Option) (*Store, error) {
	o := options{log: slog.New(slog.DiscardHandler)}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	if dir == "" {
		return nil, errors.New("store: no directory")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", dir, err)
	}
	if o.existing {
		if _, err := os.Stat(filepath.Join(dir, versionName)); errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w at %s", ErrNoStore, dir)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store %s: %w", dir, err)
	}
	s := &Store{
		dir:        dir,
		log:        o.log,
		maxBytes:   o.maxBytes,
		objects:    make(map[format.Digest]*object),
		metas:      make(map[format.Digest]*object),
		chunks:     make(map[format.Digest]chunkLoc),
		flights:    make(map[format.Digest]*flight),
		assembling: make(map[format.Digest]*flight),
		fills:      make(map[format.Digest]*object),
		progress:   make(map[format.Digest]int),
		filePins:   make(map[format.Digest]int),
		chunkPins:  make(map[format.Digest]int),
		metaPins:   make(map[format.Digest]int),
	}
	s.bgCtx, s.bgStop = context.WithCancel(context.Background())
	s.wq.cond = sync.NewCond(&s.wq.mu)
	s.asm = make(chan struct{}, assemblers)
	isNew, err := s.checkVersion()
	if err == nil {
		err = s.takeLock()
	}
	if err != nil {
		s.bgStop()
		return nil, err
	}
	if isNew {
		err = s.writeVersion()
	}
	if err == nil {
		err = s.open(o.verify)
	}
	if err != nil {
		s.bgStop()
		if s.clog != nil {
			_ = s.clog.close()
		}
		_ = s.lock.Close()
		return nil, err
	}
	for range writers {
		s.writers.Add(1)
		go s.writer()
	}
	return s, nil
}

func (s *Store) open(verify bool) error {
	for _, d := range []string{s.path(objectsName), s.path(tmpName)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("store %s: %w", s.dir, err)
		}
	}
	if err := s.cleanTmp(); err != nil {
		return err
	}
	if err := s.scan(); err != nil {
		return err
	}
	if err := s.makeObjectDirs(); err != nil {
		return err
	}
	clog, recs, err := openChunkLog(s.path(chunkLogName), s.path(tmpName), s.log)
	if err != nil {
		return fmt.Errorf("store %s: %w", s.dir, err)
	}
	s.clog = clog
	if err := s.loadChunkLog(recs); err != nil {
		return err
	}
	if verify {
		if _, err := s.Verify(context.Background()); err != nil {
			return err
		}
	}
	s.mu.Lock()
	s.enforceLocked()
	s.mu.Unlock()
	s.log.Debug("store opened", "dir", s.dir, "objects", len(s.objects), "meta", len(s.metas), "bytes", s.bytes, "chunk_locations", len(s.chunks))
	return nil
}

func (s *Store) path(name string) string { return filepath.Join(s.dir, name) }

// objectPath is objects/<hex[:2]>/<hex>.
func (s *Store) objectPath(d format.Digest) string {
	h := hex.EncodeToString(d[:])
	return filepath.Join(s.dir, objectsName, h[:2], h)
}

// openObject opens o's file afresh (a filling's is in tmp/ until it is complete).
func (s *Store) openObject(o *object) (*os.File, error) {
	s.mu.Lock()
	p := s.pathOf(o)
	s.mu.Unlock()
	return os.Open(p)
}

// pathOf is where o lies: under objects/, or under meta/ for metadata.
func (s *Store) pathOf(o *object) string {
	if o.meta {
		return s.metaPath(o.digest)
	}
	if o.filling() {
		return o.fill.tmp
	}
	return s.objectPath(o.digest)
}

func (s *Store) takeLock() error {
	p := s.path(lockName)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("store %s: %w", s.dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		_ = f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("store %s: in use by another process (it holds the lock on %s)", s.dir, p)
		}
		return fmt.Errorf("store %s: lock %s: %w", s.dir, p, err)
	}
	s.lock = f
	return nil
}

// checkVersion reads the version file. Without one, the directory becomes a new store
// (isNew: writeVersion marks it once the lock is held) only if it holds nothing (fresh);
// anything else is refused untouched. Every store a lazypull wrote has its version file
// (the first Open writes it), so a directory with a store's layout but no version file is
// a store whose file was lost or not one at all: it is refused too, with the way to adopt
// it by hand.
func (s *Store) checkVersion() (isNew bool, err error) {
	p := s.path(versionName)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		ents, err := os.ReadDir(s.dir)
		if err != nil {
			return false, fmt.Errorf("store %s: %w", s.dir, err)
		}
		names := make([]string, len(ents))
		for i, e := range ents {
			names[i] = e.Name()
		}
		if fresh(names) {
			return true, nil
		}
		if len(names) > 4 {
			names = append(names[:4], "...")
		}
		hint := "use an empty or new directory for the store"
		if slices.Contains(names, objectsName) {
			hint += fmt.Sprintf(`; if it is a lazypull store that lost its %s file, write "%s%d" into it`, versionName, versionPrefix, Version)
		}
		return false, fmt.Errorf("store %s: not a lazypull store (no %s file) and not empty (it holds %s): refusing to use it, nothing was changed; %s",
			s.dir, versionName, strings.Join(names, ", "), hint)
	}
	if err != nil {
		return false, fmt.Errorf("store %s: %w", s.dir, err)
	}
	line := strings.TrimSpace(string(b))
	v, err := strconv.Atoi(strings.TrimPrefix(line, versionPrefix))
	if !strings.HasPrefix(line, versionPrefix) || err != nil {
		return false, fmt.Errorf("store %s: %s holds %q, want %q", s.dir, versionName, line, versionPrefix+strconv.Itoa(Version))
	}
	if v != Version {
		return false, fmt.Errorf("store %s: written by store version %d, this lazypull reads version %d: use a lazypull that reads version %d, or move the directory away", s.dir, v, Version, v)
	}
	return false, nil
}

// writeVersion marks a new store.
func (s *Store) writeVersion() error {
	content := fmt.Sprintf("%s%d\n", versionPrefix, Version)
	if err := writeFileAtomic(s.path(versionName), s.dir, []byte(content)); err != nil {
		return fmt.Errorf("store %s: write %s: %w", s.dir, versionName, err)
	}
	return nil
}

// cleanTmp removes what processes that died left: objects and chunk logs that were being
// written in tmp/, a version file's temp file: never renamed into place, so never part of
// the store. Only files named as the store names its temp files are removed; anything
// else is left where it is, and logged.
func (s *Store) cleanTmp() error {
	removed, kept, err := s.removeTemps(s.path(tmpName), objectTemp, chunkLogTemp)
	if err != nil {
		return err
	}
	r, _, err := s.removeTemps(s.dir, "."+versionName+"-*")
	if err != nil {
		return err
	}
	removed += r
	if removed > 0 {
		s.log.Info("store: removed temp files of an earlier run", "dir", s.dir, "count", removed)
	}
	if len(kept) > 0 {
		s.log.Warn("store: leaving files in its temp directory that it did not make", "dir", s.path(tmpName), "files", strings.Join(kept, ","))
	}
	return nil
}

// removeTemps removes the regular files of dir named as one of patterns makes (isTempOf),
// and returns how many, and the names of the other entries.
func (s *Store) removeTemps(dir string, patterns ...string) (removed int, others []string, err error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, nil, nil
		}
		return 0, nil, fmt.Errorf("store %s: %w", s.dir, err)
	}
	for _, e := range ents {
		ours := e.Type().IsRegular() && slices.ContainsFunc(patterns, func(p string) bool { return isTempOf(e.Name(), p) })
		if !ours {
			others = append(others, e.Name())
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return removed, others, fmt.Errorf("store %s: remove temp file: %w", s.dir, err)
		}
		removed++
	}
	return removed, others, nil
}

// scan indexes objects/ and removes what does not belong there. Objects are named only
// by a rename after they were written, synced and verified, so each one found is complete
// (see doc.go); what is not named like an object is garbage.
func (s *Store) scan() error {
	root := s.path(objectsName)
	subs, err := os.ReadDir(root)
	if err != nil {
		return fmt.Errorf("store %s: %w", s.dir, err)
	}
	var removed atomic.Int64
	garbage := func(p string, why string) error {
		s.log.Warn("store: removing what is not an object", "path", p, "why", why)
		removed.Add(1)
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("store %s: remove %s: %w", s.dir, p, err)
		}
		return nil
	}
	var dirs []string
	for _, sub := range subs {
		if !sub.IsDir() || len(sub.Name()) != 2 || !isLowerHex(sub.Name()) {
			if err := garbage(filepath.Join(root, sub.Name()), "not a two-hex-digit directory"); err != nil {
				return err
			}
			continue
		}
		dirs = append(dirs, sub.Name())
	}
	// One stat per object is most of what Open costs: the directories are scanned in
	// parallel (the stats wait on the disk more than on the CPU).
	found := make([][]scanned, len(dirs))
	errs := make([]error, len(dirs))
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for range min(scanners, len(dirs)) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(dirs); i = int(next.Add(1) - 1) {
				found[i], errs[i] = s.scanDir(root, dirs[i], garbage)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	metas, err := s.scanMeta()
	if err != nil {
		return err
	}
	objs := slices.Concat(append(found, metas)...)
	// Least recently used last: the mtime is the coarse access time (stampEvery).
	slices.SortFunc(objs, func(a, b scanned) int { return int(b.mtime - a.mtime) })
	for _, f := range objs {
		o := &object{digest: f.d, size: f.size, stamp: f.mtime, meta: f.meta}
		o.elem = s.lru.PushBack(o)
		s.bytes += f.size
		if f.meta {
			s.metas[f.d] = o
			s.metaBytes += f.size
		} else {
			s.objects[f.d] = o
		}
	}
	if n := removed.Load(); n > 0 {
		s.log.Warn("store: removed entries that were not objects", "dir", s.dir, "count", n)
	}
	return nil
}

type scanned struct {
	d     format.Digest
	size  int64
	mtime int64
	meta  bool
}

// scanDir lists the objects of one two-hex directory, removing what is not one.
func (s *Store) scanDir(root, sub string, garbage func(p, why string) error) ([]scanned, error) {
	sp := filepath.Join(root, sub)
	dir, err := os.Open(sp)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", s.dir, err)
	}
	defer dir.Close()
	ents, err := dir.ReadDir(-1)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", s.dir, err)
	}
	out := make([]scanned, 0, len(ents))
	for _, e := range ents {
		p := filepath.Join(sp, e.Name())
		d, ok := parseHexDigest(e.Name())
		if !ok || e.Name()[:2] != sub || !e.Type().IsRegular() {
			if err := garbage(p, "not named <sha256 hex> in its <hex[:2]> directory"); err != nil {
				return nil, err
			}
			continue
		}
		// fstatat from the directory: no walk of the whole path per object.
		var st unix.Stat_t
		if err := unix.Fstatat(int(dir.Fd()), e.Name(), &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return nil, fmt.Errorf("store %s: stat %s: %w", s.dir, p, err)
		}
		if st.Size == 0 && d != emptyDigest {
			if err := garbage(p, "empty, but not the empty object"); err != nil {
				return nil, err
			}
			continue
		}
		out = append(out, scanned{d: d, size: st.Size, mtime: st.Mtim.Sec})
	}
	return out, nil
}

// loadChunkLog indexes the chunks of the multi-chunk objects that exist, and drops the
// standalone chunk objects such an object already holds (left by a crash between an
// assembly and the removal of its parts).
func (s *Store) loadChunkLog(recs []chunkRecord) error {
	var live []chunkRecord
	for _, r := range recs {
		o := s.objects[r.object]
		if o == nil {
			continue // evicted, or never renamed into place
		}
		var total int64
		for _, c := range r.chunks {
			total += c.size
		}
		if total != o.size {
			s.log.Warn("store: chunk log record does not match its object; ignoring it", "object", r.object, "record_bytes", total, "object_bytes", o.size)
			continue
		}
		live = append(live, r)
		o.composite = true
		var off int64
		for _, c := range r.chunks {
			s.chunks[c.digest] = chunkLoc{obj: o, off: off, size: c.size}
			off += c.size
		}
	}
	dropped := 0
	for _, r := range live {
		for _, c := range r.chunks {
			if p := s.objects[c.digest]; p != nil && !p.composite {
				if err := s.removeLocked(p); err != nil {
					return err
				}
				dropped++
			}
		}
	}
	if dropped > 0 {
		s.log.Info("store: dropped chunk objects that assembled files already hold", "dir", s.dir, "count", dropped)
	}
	if len(recs) > 2*len(live)+1024 {
		if err := s.clog.compact(s.liveRecords(live)); err != nil {
			s.log.Warn("store: cannot compact the chunk log", "err", err)
		}
	}
	return nil
}

func (s *Store) liveRecords(recs []chunkRecord) []chunkRecord {
	seen := make(map[format.Digest]bool)
	var out []chunkRecord
	for _, r := range recs {
		if s.objects[r.object] != nil && !seen[r.object] {
			seen[r.object] = true
			out = append(out, r)
		}
	}
	return out
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

// Close waits for calls in progress and for background assemblies, and releases the lock.
// The store's methods return ErrClosed afterwards.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.ops.Wait()
	// Store what was fetched, then stop the assemblies the writers may have started.
	s.wq.mu.Lock()
	s.wq.stopping = true
	s.wq.cond.Broadcast()
	s.wq.mu.Unlock()
	s.writers.Wait()
	s.bgStop()
	s.bg.Wait()
	s.mu.Lock()
	for _, o := range s.fills { // partly filled files: lost, as a crash would lose them
		if err := s.removeLocked(o); err != nil {
			s.log.Warn("store: cannot remove a partly filled file", "err", err)
		}
	}
	for s.fds.Len() > 0 {
		s.closeFileLocked(s.fds.Front().Value.(*object))
	}
	s.mu.Unlock()
	err := s.clog.close()
	if cerr := s.lock.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("store %s: close: %w", s.dir, err)
	}
	return nil
}

// enter registers a call in progress; false once the store is closed.
func (s *Store) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.ops.Add(1)
	return true
}

func (s *Store) exit() { s.ops.Done() }

// addLocked registers a new object as the most recently used.
func (s *Store) addLocked(d format.Digest, size int64) *object {
	o := &object{digest: d, size: size, stamp: time.Now().Unix()}
	o.elem = s.lru.PushFront(o)
	s.objects[d] = o
	s.bytes += size
	s.changes.Add(1)
	return o
}

// removeLocked unlinks an object and forgets it. An open descriptor of the file (a
// passthrough mount's) still reads it: Linux frees the data on the last close.
func (s *Store) removeLocked(o *object) error {
	if o.dead {
		return nil
	}
	if err := os.Remove(s.pathOf(o)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("store %s: remove object %s: %w", s.dir, o.digest, err)
	}
	s.forgetLocked(o)
	return nil
}

// forgetLocked drops an object from the index (its file is gone or going).
func (s *Store) forgetLocked(o *object) {
	if o.dead {
		return
	}
	o.dead = true
	s.changes.Add(1)
	s.lru.Remove(o.elem)
	s.bytes -= o.size
	if o.meta {
		delete(s.metas, o.digest)
		s.metaBytes -= o.size
		return
	}
	if o.filling() {
		if s.fills[o.digest] == o {
			delete(s.fills, o.digest)
		}
		if o.refs == 0 {
			s.closeFileLocked(o)
		}
		return
	}
	delete(s.objects, o.digest)
	if o.refs == 0 {
		s.closeFileLocked(o)
	}
}

// acquire looks an object up and holds it against eviction until release; nil if absent.
func (s *Store) acquire(d format.Digest) *object {
	s.mu.Lock()
	o := s.objects[d]
	stamp := false
	if o != nil {
		o.refs++
		stamp = s.touchLocked(o)
	}
	s.mu.Unlock()
	if stamp {
		s.stamp(o)
	}
	return o
}

func (s *Store) release(o *object) {
	s.mu.Lock()
	o.refs--
	if o.refs == 0 && o.drop && !o.dead {
		if err := s.removeLocked(o); err != nil {
			s.log.Warn("store: cannot drop a chunk object after assembly", "err", err)
		} else {
			s.st.dropped.Add(1)
		}
	}
	if o.refs == 0 && o.dead {
		s.closeFileLocked(o)
	}
	s.mu.Unlock()
}

// file returns an open descriptor of the object, for reading; the caller holds a ref, so
// the descriptor stays open until it releases the object.
func (s *Store) file(o *object) (*os.File, error) {
	s.mu.Lock()
	if fd := o.fd; fd != nil {
		s.fds.MoveToFront(o.fdElem)
		s.mu.Unlock()
		return fd, nil
	}
	p := s.pathOf(o)
	s.mu.Unlock()
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if o.fd != nil { // opened meanwhile
		_ = f.Close()
		return o.fd, nil
	}
	o.fd, o.fdElem = f, s.fds.PushFront(o)
	for e := s.fds.Back(); e != nil && s.fds.Len() > maxOpenFiles; {
		v := e.Value.(*object)
		e = e.Prev()
		if v.refs == 0 && !v.filling() { // a filling's name changes: keep its descriptor
			s.closeFileLocked(v)
		}
	}
	return f, nil
}

func (s *Store) closeFileLocked(o *object) {
	if o.dead && o.fill != nil && o.fill.w != nil {
		_ = o.fill.w.Close() // unused: whoever writes it holds a ref
		o.fill.w = nil
	}
	if o.fd == nil {
		return
	}
	_ = o.fd.Close()
	s.fds.Remove(o.fdElem)
	o.fd, o.fdElem = nil, nil
}

// touchLocked marks an object as just used; true when its mtime should be rewritten.
func (s *Store) touchLocked(o *object) bool {
	s.lru.MoveToFront(o.elem)
	now := time.Now().Unix()
	if now-o.stamp < int64(stampEvery/time.Second) {
		return false
	}
	o.stamp = now
	return true
}

// stamp persists an object's access time as its mtime, the order a restart begins from.
func (s *Store) stamp(o *object) {
	now := time.Now()
	if err := os.Chtimes(s.pathOf(o), now, now); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Debug("store: cannot stamp access time", "object", o.digest, "err", err)
	}
}

// writeTemp writes a new file in tmp/ with fill, then makes it read-only and syncs it.
// On error nothing is left behind.
func (s *Store) writeTemp(fill func(f *os.File) error) (string, error) {
	f, err := s.createTemp(fill)
	if err != nil {
		return "", err
	}
	return syncTemp(f)
}

// createTemp creates a file in tmp/, fills it with fill and makes it read-only, leaving it
// open and unsynced for syncTemp. On error nothing is left behind.
func (s *Store) createTemp(fill func(f *os.File) error) (*os.File, error) {
	f, err := os.CreateTemp(s.path(tmpName), objectTemp)
	if err != nil {
		return nil, err
	}
	err = fill(f)
	if err == nil {
		err = f.Chmod(0o444)
	}
	if err != nil {
		f.Close()
		_ = os.Remove(f.Name())
		return nil, err
	}
	return f, nil
}

// syncTemp syncs and closes a new temp file and returns its name. On error nothing is
// left behind.
func syncTemp(f *os.File) (string, error) {
	name := f.Name()
	err := f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(name)
		return "", err
	}
	return name, nil
}

// commit renames a synced, verified temp file into place as object d, registers it (with
// the chunk locations inside it, for a multi-chunk object) and enforces the bound. The
// rename happens under the lock, so the directory and the index never disagree about an
// object while the store runs. When d is already present the temp file is dropped.
func (s *Store) commit(d format.Digest, tmp string, size int64, fl *flight, chunks []format.Chunk) (*object, error) {
	return s.commitOnce(d, tmp, size, fl, chunks, false)
}

// commitOnce is commit; remade says its directory was made again already.
func (s *Store) commitOnce(d format.Digest, tmp string, size int64, fl *flight, chunks []format.Chunk, remade bool) (*object, error) {
	p := s.objectPath(d)
	s.mu.Lock()
	if fl != nil && s.flights[d] == fl {
		delete(s.flights, d)
	}
	if o := s.objects[d]; o != nil {
		s.mu.Unlock()
		_ = os.Remove(tmp)
		return o, nil
	}
	if err := os.Rename(tmp, p); err != nil {
		s.mu.Unlock()
		if errors.Is(err, fs.ErrNotExist) && !remade {
			// Its two-hex directory was removed by hand (Open makes them all).
			if err = s.remakeDir(p); err == nil {
				return s.commitOnce(d, tmp, size, fl, chunks, true)
			}
		}
		_ = os.Remove(tmp)
		return nil, err
	}
	o := s.addLocked(d, size)
	if len(chunks) > 1 {
		o.composite = true
		for _, c := range chunks {
			s.chunks[c.Digest] = chunkLoc{obj: o, off: c.FileOffset, size: c.Size}
		}
	}
	s.enforceLocked()
	s.mu.Unlock()
	// The directory is not fsynced: a rename that a power loss undoes leaves the synced
	// temp file, which Open deletes, and costs a fetch; an fsync per object cost a
	// journal commit per chunk.
	return o, nil
}

// writeFailed counts a failure to store something and logs it; a full disk is logged
// once per warnEvery, since every fetch would otherwise repeat it.
func (s *Store) writeFailed(what string, err error) {
	s.st.writeErrors.Add(1)
	if isFull(err) {
		s.mu.Lock()
		warn := time.Since(s.lastFull) >= warnEvery
		if warn {
			s.lastFull = time.Now()
		}
		s.mu.Unlock()
		if warn {
			s.log.Warn("store: disk full: serving fetched data from memory without storing it; free space or lower the store's max bytes", "dir", s.dir, "what", what, "err", err)
		}
		return
	}
	s.log.Warn("store: cannot store object", "dir", s.dir, "what", what, "err", err)
}

func isFull(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// writeFileAtomic writes a small file with temp ("."+name+"-*") + fsync + rename + fsync
// of dir.
func writeFileAtomic(p, dir string, b []byte) error {
	name, err := writeSynced(dir, "."+filepath.Base(p)+"-*", b)
	if err != nil {
		return err
	}
	if err := os.Rename(name, p); err != nil {
		_ = os.Remove(name)
		return err
	}
	return syncDir(dir)
}

// writeSynced writes b to a new temp file in dir, named after pattern, fsyncs it and
// returns its name. On error nothing is left behind.
func writeSynced(dir, pattern string, b []byte) (string, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	if _, err := f.Write(b); err != nil {
		_ = f.Close()
		_ = os.Remove(f.Name())
		return "", err
	}
	return syncTemp(f)
}

// makeObjectDirs makes the two-hex directories of objects/ that are missing, and syncs
// objects/ once if it made any. A commit then renames into a directory that is there: it
// never makes one, and fsyncs objects/ (a journal commit, ~20 ms), while it holds the
// store's lock, which every read takes. A fresh store made up to 256 of them that way, on
// the cold start's path.
func (s *Store) makeObjectDirs() error {
	root := s.path(objectsName)
	made := false
	for i := range 256 {
		err := os.Mkdir(filepath.Join(root, fmt.Sprintf("%02x", i)), 0o700)
		switch {
		case err == nil:
			made = true
		case !errors.Is(err, fs.ErrExist):
			return fmt.Errorf("store %s: %w", s.dir, err)
		}
	}
	if made {
		if err := syncDir(root); err != nil {
			return fmt.Errorf("store %s: %w", s.dir, err)
		}
	}
	return nil
}

// remakeDir makes the directory of object path p again (removed by hand while the store
// ran), outside the store's lock.
func (s *Store) remakeDir(p string) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	if err := syncDir(s.path(objectsName)); err != nil {
		s.log.Warn("store: cannot sync objects directory", "err", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

var emptyDigest = format.Digest(sha256Sum(nil))

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func parseHexDigest(name string) (format.Digest, bool) {
	var d format.Digest
	if len(name) != 64 || !isLowerHex(name) {
		return d, false
	}
	if _, err := hex.Decode(d[:], []byte(name)); err != nil {
		return d, false
	}
	return d, true
}
