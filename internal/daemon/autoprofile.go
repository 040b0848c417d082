package daemon

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"lazypull/internal/fetch"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"lazypull/format"
	"lazypull/internal/profile"
	"lazypull/internal/store"
)

// Automatic profiles (docs/design.md, "Automatic profiles"): an image started on this node
// with no published profile has its first start's reads recorded, at the layers' Content
// (Layer.ReadAt, every read that reaches the filesystem), kept in the store as this node's
// profile of the image, and used by its next start; later starts are merged in. An image
// with no profile of its own uses that of a related image (another version from the same
// repository) that this node started.

// Defaults of AutoProfileOptions.
const (
	// DefaultAutoQuiet ends a recording once nothing new (no file, no chunk) was read for
	// this long: the workload is up, or waiting on something else than its files.
	DefaultAutoQuiet = 2 * time.Second
	// DefaultAutoMaxDuration ends a recording this long after its first read whatever
	// goes on: a workload that keeps reading new files is past its start.
	DefaultAutoMaxDuration = 60 * time.Second
	// DefaultAutoMaxFiles bounds the files of a recording, and of a merged profile.
	DefaultAutoMaxFiles = 20_000
	// DefaultAutoMaxBytes bounds the bytes of a recording, and of a merged profile.
	DefaultAutoMaxBytes = 1 << 30
	// DefaultAutoMaxStarts is how many starts are merged into an image's profile; later
	// starts are not recorded.
	DefaultAutoMaxStarts = 5
)

// Sources of an automatic profile (PrefetchStats.Source).
const (
	SourceNode    = "node"         // this node's profile of the image
	SourceRelated = "node-related" // this node's profile of another version of the image
)

// AutoProfileOptions configures automatic profiles (PrefetchOptions.Auto). Zero fields take
// the defaults.
type AutoProfileOptions struct {
	Quiet       time.Duration
	MaxDuration time.Duration
	MaxFiles    int
	MaxBytes    int64
	MaxStarts   int
	// DeltaBytes bounds the files an update added (delta.go), and those they name
	// (named.go), that the prefetch by the profile of another version of the image fetches
	// with it, in compressed bytes the store lacks: 0 is DefaultAutoDeltaBytes, negative
	// none.
	DeltaBytes int64
	// Push, when not nil, is called with each profile kept, to publish it (PushProfile):
	// in the background, its error logged.
	Push func(ctx context.Context, im *Image, p *profile.Profile, doc []byte) error
}

func (o AutoProfileOptions) withDefaults() AutoProfileOptions {
	o.Quiet = cmp0(o.Quiet, DefaultAutoQuiet)
	o.MaxDuration = cmp0(o.MaxDuration, DefaultAutoMaxDuration)
	o.MaxFiles = min(cmp0(o.MaxFiles, DefaultAutoMaxFiles), profile.MaxFiles)
	o.MaxBytes = cmp0(o.MaxBytes, DefaultAutoMaxBytes)
	o.MaxStarts = cmp0(o.MaxStarts, DefaultAutoMaxStarts)
	if o.DeltaBytes == 0 {
		o.DeltaBytes = DefaultAutoDeltaBytes
	}
	return o
}

// cmp0 is v, or def when v is not positive.
func cmp0[T int | int64 | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// autoRecorder records the reads of an image's start. Reads tell it through their layer's
// autoLayer; what it costs them is an atomic load, a compare-and-swap for the first read
// of each file, and an atomic or per chunk read.
type autoRecorder struct {
	im     *Image
	o      AutoProfileOptions
	layers []*autoLayer

	active  atomic.Bool
	first   atomic.Int64 // the first read, unix ns; 0: none yet
	lastNew atomic.Int64 // the last read that recorded something new, unix ns
	seq     atomic.Int64 // first accesses so far
	bytes   atomic.Int64 // chunk bytes recorded
	full    atomic.Bool  // a bound was reached

	once  sync.Once     // finish
	ended chan struct{} // closed as the recording ends (finish)
	done  chan struct{} // closed once the recording is kept (or dropped)
	// decided closes when the prefetch knows whether the recording is wanted: until then
	// it records, and keeps nothing.
	decided chan struct{}
	keep    bool // set before decided closes
	// whole: the image's first start on the node (no profile of it kept): files handed
	// out for passthrough are recorded whole (autoLayer.local).
	whole bool
}

// autoLayer is the recording of one layer: the files read, by their entry's first frame
// (unique to a regular file with content).
type autoLayer struct {
	r     *autoRecorder
	layer int // position in the image
	slots []atomic.Pointer[autoFile]
}

// autoFile is a file read: when first, and which of its chunks.
type autoFile struct {
	e      *format.Entry
	chunks []format.Chunk
	seq    int64
	at     time.Duration // after the first read of the image
	bits   []atomic.Uint64
}

// newAutoRecorder starts recording the reads of im's layers.
func newAutoRecorder(im *Image, o AutoProfileOptions) *autoRecorder {
	_, err := im.Layers[0].store.Profile(manifestDigest(im))
	return newAutoRecorderFor(im, o, err != nil)
}

// newAutoRecorderFor is newAutoRecorder, on the image's first start on the node or not
// (autoRecorder.whole).
func newAutoRecorderFor(im *Image, o AutoProfileOptions, whole bool) *autoRecorder {
	r := &autoRecorder{im: im, o: o.withDefaults(), ended: make(chan struct{}), done: make(chan struct{}), decided: make(chan struct{}), whole: whole}
	r.active.Store(true)
	for i, l := range im.Layers {
		a := &autoLayer{r: r, layer: i, slots: make([]atomic.Pointer[autoFile], len(l.Index.Frames))}
		r.layers = append(r.layers, a)
		l.auto.Store(a)
	}
	return r
}

// read records that n bytes at off of e (its content f) were read.
func (a *autoLayer) read(e *format.Entry, f store.File, off, n int64) {
	r := a.r
	if !r.active.Load() || n <= 0 || len(f.Chunks) == 0 || e.FirstFrame < 0 || e.FirstFrame >= len(a.slots) {
		return
	}
	if r.first.Load() == 0 && r.first.CompareAndSwap(0, time.Now().UnixNano()) {
		go r.watch()
	}
	slot := &a.slots[e.FirstFrame]
	af := slot.Load()
	if af == nil {
		if r.seq.Load() >= int64(r.o.MaxFiles) {
			r.stop()
			return
		}
		af = &autoFile{e: e, chunks: f.Chunks, seq: r.seq.Add(1), at: time.Duration(time.Now().UnixNano() - r.first.Load()),
			bits: make([]atomic.Uint64, (len(f.Chunks)+63)/64)}
		if !slot.CompareAndSwap(nil, af) {
			af = slot.Load()
		}
	}
	cs := af.chunks
	var added int64
	for k := sort.Search(len(cs), func(k int) bool { return cs[k].FileOffset+cs[k].Size > off }); k < len(cs) && cs[k].FileOffset < off+n; k++ {
		// Read first: a chunk read again (most reads) writes nothing, so CPUs reading the
		// same file do not pass its cache line to and fro.
		w, bit := &af.bits[k/64], uint64(1)<<(k%64)
		if w.Load()&bit == 0 && w.Or(bit)&bit == 0 {
			added += cs[k].Size
		}
	}
	if added > 0 {
		r.lastNew.Store(time.Now().UnixNano())
		if r.bytes.Add(added) >= r.o.MaxBytes {
			r.stop()
		}
	}
}

// local records that e (its content f), complete in the store, is handed out for FUSE
// passthrough: its reads will not reach the layer. On an image's first start on the node
// (rec.whole), the whole file is recorded: the start had it complete, and a start on
// another node would fetch it as it is read. Later starts only merge in what they read.
func (a *autoLayer) local(e *format.Entry, f store.File) {
	if a.r.whole {
		a.read(e, f, 0, f.Size)
	}
}

// stop ends the recording at a bound.
func (r *autoRecorder) stop() {
	r.full.Store(true)
	r.finish("bound reached")
}

// watch ends the recording (finish) when the start is over: nothing new read for Quiet,
// MaxDuration after the first read, a bound reached, or the image closed.
func (r *autoRecorder) watch() {
	tick := time.NewTicker(max(min(r.o.Quiet/4, time.Second), 10*time.Millisecond))
	defer tick.Stop()
	first := time.Unix(0, r.first.Load())
	for {
		select {
		case <-r.im.bg.Done():
			r.finish("image closed")
			return
		case <-r.ended:
			return
		case <-tick.C:
		}
		last := time.Unix(0, max(r.lastNew.Load(), r.first.Load()))
		switch {
		case time.Since(last) >= r.o.Quiet:
			r.finish("quiet")
			return
		case time.Since(first) >= r.o.MaxDuration:
			r.finish("time limit")
			return
		}
	}
}

// decide says whether the recording is wanted (the image had no published profile, and
// its own has room for more starts); until then nothing is kept.
func (r *autoRecorder) decide(keep bool) {
	r.keep = keep
	close(r.decided)
	if !keep {
		r.finish("not wanted")
	}
}

// finish ends the recording, and keeps it when it is wanted. It runs once.
func (r *autoRecorder) finish(why string) {
	r.once.Do(func() {
		r.active.Store(false)
		close(r.ended)
		for i, l := range r.im.Layers {
			l.auto.CompareAndSwap(r.layers[i], nil)
		}
		go func() {
			defer close(r.done)
			select {
			case <-r.decided:
			default:
				select {
				case <-r.decided:
				case <-r.im.bg.Done():
					return // closed before the look-up ended: nothing known to keep it by
				}
			}
			if r.keep {
				r.save(why)
			}
		}()
	})
}

// recorded returns the recording as a profile of the image, and each file's content digest.
func (r *autoRecorder) recorded() (*profile.Profile, []string) {
	im := r.im
	var files []*autoFile
	layerOf := map[*autoFile]int{}
	for _, a := range r.layers {
		for i := range a.slots {
			if af := a.slots[i].Load(); af != nil {
				files = append(files, af)
				layerOf[af] = a.layer
			}
		}
	}
	slices.SortFunc(files, func(x, y *autoFile) int { return int(x.seq - y.seq) })
	p := &profile.Profile{Subject: im.Image.Descriptor.Digest.String(), Created: time.Now().UTC().Truncate(time.Second)}
	for _, l := range im.Layers {
		p.Layers = append(p.Layers, l.Desc.Digest.String())
	}
	digests := make([]string, 0, len(files))
	var at int64
	for _, af := range files {
		at = max(at, af.at.Microseconds()) // first-access order; concurrent reads may cross
		p.Files = append(p.Files, profile.File{Layer: layerOf[af], Path: af.e.Name, AtUS: at, Ranges: af.ranges()})
		digests = append(digests, af.e.Digest.String())
	}
	return p, digests
}

// ranges are the chunks read of the file, as ranges, coarsened to profile.MaxRanges.
func (af *autoFile) ranges() []profile.Range {
	var rs []profile.Range
	for k, c := range af.chunks {
		if af.bits[k/64].Load()&(1<<(k%64)) == 0 {
			continue
		}
		if n := len(rs); n > 0 && rs[n-1].End() == c.FileOffset {
			rs[n-1].Len += c.Size
			continue
		}
		rs = append(rs, profile.Range{Off: c.FileOffset, Len: c.Size})
	}
	return profile.Coarsen(rs)
}

// repository is the image's repository, what its profiles are grouped by (related).
func (im *Image) repository() string {
	return im.Registry.Host() + "/" + im.Registry.Repository()
}

// save merges the recording into the image's profile in the store, and publishes it when
// configured.
func (r *autoRecorder) save(why string) {
	im := r.im
	st := im.Layers[0].store
	rec, digests := r.recorded()
	if len(rec.Files) == 0 {
		im.log.Info("automatic profile: the start read no file; nothing kept", "image", im.Ref, "why", why)
		return
	}
	old, _ := loadAuto(st, im.Image.Descriptor.Digest.String(), im.log)
	merged := profile.Merge(old, im.repository(), rec, digests, profile.AutoLimits{Files: r.o.MaxFiles, Bytes: r.o.MaxBytes})
	b, err := merged.Marshal()
	if err == nil {
		err = st.PutProfile(im.repository(), manifestDigest(im), b)
	}
	if err != nil {
		im.log.Warn("automatic profile not kept", "image", im.Ref, "err", err)
		return
	}
	im.log.Info("automatic profile kept", "image", im.Ref, "digest", im.Image.Descriptor.Digest.String(), "why", why,
		"files", len(rec.Files), "bytes", rec.Bytes(), "starts", merged.Starts, "merged_files", len(merged.Profile.Files), "truncated", r.full.Load())
	if r.o.Push == nil || old != nil && len(old.Profile.Files) == len(merged.Profile.Files) {
		return // published already, or no file the published one lacks
	}
	doc, err := merged.Profile.Marshal()
	if err == nil {
		err = r.o.Push(context.WithoutCancel(im.bg), im, merged.Profile, doc)
	}
	if err != nil {
		im.log.Warn("automatic profile not pushed", "image", im.Ref, "err", err)
		return
	}
	im.log.Info("automatic profile pushed", "image", im.Ref, "files", len(merged.Profile.Files))
}

// adopt keeps p, the published profile the image is prefetched by, as this node's profile
// of it when the node keeps none: another version of the image started on this node then
// finds it (related), as it finds what the node recorded.
func (r *autoRecorder) adopt(p *profile.Profile) {
	im := r.im
	st := im.Layers[0].store
	if _, err := st.Profile(manifestDigest(im)); err == nil {
		return
	}
	digests := make([]string, len(p.Files))
	for i, f := range p.Files {
		for _, l := range slices.Backward(im.Layers) {
			if e, ok := l.Index.Lookup(f.Path); ok && e.IsRegular() && (l.Desc.Digest.String() == p.Layers[f.Layer] || digests[i] == "") {
				digests[i] = e.Digest.String()
			}
		}
	}
	a := profile.Merge(nil, im.repository(), p, digests, profile.AutoLimits{Files: r.o.MaxFiles, Bytes: r.o.MaxBytes})
	b, err := a.Marshal()
	if err == nil {
		err = st.PutProfile(im.repository(), manifestDigest(im), b)
	}
	if err != nil {
		im.log.Warn("published profile not kept as this node's", "image", im.Ref, "err", err)
		return
	}
	im.log.Info("published profile kept as this node's profile of the image", "image", im.Ref, "files", len(a.Profile.Files))
}

// manifestDigest is the image manifest's digest as the store keys profiles by.
func manifestDigest(im *Image) format.Digest {
	d, _ := format.ParseDigest(im.Image.Descriptor.Digest.String())
	return d
}

// loadAuto reads the store's profile of the image manifest digest: nil, without a word, when
// there is none; nil, logged and removed, when it does not parse or is another image's.
func loadAuto(st *store.Store, digest string, log *slog.Logger) (*profile.Auto, error) {
	d, err := format.ParseDigest(digest)
	if err != nil {
		return nil, err
	}
	b, err := st.Profile(d)
	if err != nil {
		return nil, err
	}
	a, err := profile.ParseAuto(b)
	if err == nil && a.Profile.Subject != digest {
		err = fmt.Errorf("%w: its subject is %s", ErrProfileSubject, a.Profile.Subject)
	}
	if err != nil {
		log.Warn("automatic profile in the store is corrupt; ignored and removed", "digest", digest, "err", err)
		_ = st.RemoveProfile(d)
		return nil, err
	}
	return a, nil
}

// maxRelated bounds the profiles of related images read to find one that parses.
const maxRelated = 4

// runAuto is the prefetch of an image with no published profile (lookupErr, when the
// look-up failed): by this node's profile of it, else by its profile of a related image
// (carry, found meanwhile: startCarried), when it has one. It reports whether one was
// used. Whether this start's recording is kept is decided here: when the image's own
// profile has fewer than MaxStarts starts.
func (pf *prefetcher) runAuto(ctx context.Context, lookupErr error, carry func() carried, looked int64, log *slog.Logger) (bool, error) {
	r := pf.rec
	if r == nil {
		return false, nil
	}
	im := pf.im
	if lookupErr != nil {
		log.Warn("profile look-up failed; using this node's automatic profile, if any", "image", im.Ref, "err", lookupErr)
	}
	st := im.Layers[0].store
	own, _ := loadAuto(st, im.Image.Descriptor.Digest.String(), log)
	r.decide(own == nil || own.Starts < r.o.MaxStarts)
	var p *profile.Profile
	source, why := SourceNode, ""
	if own != nil {
		p, why = own.Profile, fmt.Sprintf("this node's profile of the image, %d starts merged", own.Starts)
	}
	c := carried{}
	if own == nil {
		c = carry()
	}
	if c.p != nil {
		p, source = c.p, SourceRelated
		why = fmt.Sprintf("this node's profile of %s, another image of the repository (%d files found under another path, %d files the image added)",
			c.p.Subject, c.moved, len(c.added))
		if c.none != "" {
			log.Info("automatic profile: no files the image added are fetched with it", "image", im.Ref, "profile_of", c.p.Subject, "why", c.none)
		}
		pf.mu.Lock()
		pf.st.Delta = len(c.added)
		pf.mu.Unlock()
	}
	if p == nil {
		log.Info("no automatic profile of the image on this node; recording its start", "image", im.Ref)
		return false, nil
	}
	pf.mu.Lock()
	pf.st.Source, pf.st.Why = source, why
	pf.mu.Unlock()
	log.Info("automatic profile chosen", "image", im.Ref, "source", source, "why", why, "files", len(p.Files))
	err := pf.fetch(ctx, p, p.Subject, looked, log)
	if err == nil && len(c.added) > 0 {
		pf.fetchNamed(ctx, c, looked, log)
	}
	return true, err
}

// carried is this node's profile of a related image mapped onto the image (related), with
// the files the image added (delta.go): what runAuto prefetches by when the image has no
// profile of its own and none is published.
type carried struct {
	p     *profile.Profile // nil: none
	moved int              // files found under another path
	added []profile.File   // files the image added, appended to p's
	left  int64            // what the delta's budget left, for the files they name
	none  string           // why none were added, when worth a log line
}

// startCarried finds the carried profile in the background, beside the profile look-up
// (it reads the store alone; the delta decodes the other version's layer indexes, a few
// milliseconds for python's that would otherwise delay the prefetch), and returns the wait
// for it. An image this node keeps a profile of needs none, and none is looked for.
func (pf *prefetcher) startCarried(log *slog.Logger) func() carried {
	done := make(chan struct{})
	var c carried
	go func() {
		defer close(done)
		im := pf.im
		st := im.Layers[0].store
		if _, err := st.Profile(manifestDigest(im)); err == nil {
			return
		}
		rel, moved := pf.related(st, log)
		if rel == nil {
			return
		}
		added, left, none := im.delta(st, rel, pf.rec.o.DeltaBytes)
		rel.Files = append(rel.Files, added...)
		c = carried{p: rel, moved: moved, added: added, left: left, none: none}
	}()
	return func() carried {
		<-done
		return c
	}
}

// related returns this node's profile of an image related to im's, mapped onto im
// (mapAuto), and how many of its files were found under another path; nil when there is
// none. Related is: kept in the same repository (registry host and path, as im's
// reference names them), of another image manifest; the most recently kept wins.
func (pf *prefetcher) related(st *store.Store, log *slog.Logger) (*profile.Profile, int) {
	im := pf.im
	subject := im.Image.Descriptor.Digest.String()
	ds, err := st.Profiles(im.repository())
	if err != nil {
		log.Warn("automatic profiles of the repository not listed", "image", im.Ref, "err", err)
		return nil, 0
	}
	tried := 0
	for _, d := range ds {
		if d.String() == subject {
			continue
		}
		if tried++; tried > maxRelated {
			break
		}
		a, err := loadAuto(st, d.String(), log)
		if err != nil || a.Repository != im.repository() {
			continue
		}
		return mapAuto(a, im)
	}
	return nil, 0
}

// fileAt is where a regular file is in an image.
type fileAt struct {
	layer int
	name  string
}

// mapAuto maps a, the profile of another version of im's image, onto im: a file whose path
// no layer of im has, but whose content (by its digest) im has under another path, is
// taken from there. The rest is profile.Plan's: a file by its path, from the layer of the
// same digest or the topmost that has it; what im does not have is skipped. It returns the
// profile mapped, and how many files were found under another path.
func mapAuto(a *profile.Auto, im *Image) (*profile.Profile, int) {
	p := *a.Profile
	p.Layers, p.Files = slices.Clone(p.Layers), slices.Clone(p.Files)
	var byDigest map[format.Digest]fileAt
	moved := 0
	for i := range p.Files {
		f := &p.Files[i]
		d, err := format.ParseDigest(a.Digests[i])
		if err != nil || im.hasFile(f.Path) {
			continue
		}
		if byDigest == nil {
			byDigest = im.filesByDigest()
		}
		w, ok := byDigest[d]
		if !ok {
			continue
		}
		ld := im.Layers[w.layer].Desc.Digest.String()
		li := slices.Index(p.Layers, ld)
		if li < 0 {
			li = len(p.Layers)
			p.Layers = append(p.Layers, ld)
		}
		f.Path, f.Layer = w.name, li
		moved++
	}
	return &p, moved
}

// hasFile reports whether a layer of im has an entry at path.
func (im *Image) hasFile(path string) bool {
	for _, l := range im.Layers {
		if _, ok := l.Index.Lookup(path); ok {
			return true
		}
	}
	return false
}

// filesByDigest finds im's regular files with content by their content's digest, the
// topmost layer's first.
func (im *Image) filesByDigest() map[format.Digest]fileAt {
	out := map[format.Digest]fileAt{}
	for i, l := range slices.Backward(im.Layers) {
		for j := range l.Index.Entries {
			e := &l.Index.Entries[j]
			if _, ok := out[e.Digest]; !ok && e.IsRegular() && e.Size > 0 && !e.Sparse {
				out[e.Digest] = fileAt{i, e.Name}
			}
		}
	}
	return out
}

// PushProfile pushes the profile p of im (its document doc) as a referrer of im's manifest
// in im's repository, with its pack unless noPack, through client (its transport and
// credentials; plainHTTP pushes over plain http to any host, as loopback and private
// addresses always are), and returns the artifact manifest's descriptor.
func PushProfile(ctx context.Context, client *fetch.Client, im *Image, p *profile.Profile, doc []byte, noPack, plainHTTP bool) (v1.Descriptor, error) {
	var nameOpts []name.Option
	if plainHTTP {
		nameOpts = append(nameOpts, name.Insecure)
	}
	repo, err := name.NewRepository(im.repository(), nameOpts...)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("image %s: %w", im.Ref, err)
	}
	var pack []byte
	// A pack holds lazypull layers' indexes and chunk frames: an image served from its
	// index artifact has none, and its prefetch reads the layers' tar streams.
	if !noPack && !im.FromIndex() {
		if pack, err = im.Pack(ctx, p); err != nil {
			return v1.Descriptor{}, fmt.Errorf("image %s: profile %w", im.Ref, err)
		}
	}
	subject := im.Image.Descriptor
	return profile.Push(im.log, repo, v1.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size}, doc, pack,
		remote.WithContext(ctx), remote.WithTransport(client.Transport()), remote.WithAuthFromKeychain(client.Keychain()), remote.WithUserAgent("lazypull"))
}

// AutoPush is AutoProfileOptions.Push through client (PushProfile, with a pack).
func AutoPush(client *fetch.Client, plainHTTP bool) func(ctx context.Context, im *Image, p *profile.Profile, doc []byte) error {
	return func(ctx context.Context, im *Image, p *profile.Profile, doc []byte) error {
		_, err := PushProfile(ctx, client, im, p, doc, false, plainHTTP)
		return err
	}
}
