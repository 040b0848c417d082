package daemon

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sync/errgroup"

	"lazypull/format"
	"lazypull/internal/fetch"
	"lazypull/internal/profile"
	"lazypull/internal/store"
)

// packWait bounds how long opening an image waits for its profile look-up to learn
// whether a pack brings the layer indexes: the look-up is one round trip; one that takes
// longer is not worth holding the mount for, and the indexes are then read from the layers.
const packWait = 2 * time.Second

// pack is a profile's pack (profile.PackWriter) being read from the registry, in one GET,
// by the image's opening (the layer indexes, which come first) and then by its prefetch
// (the chunk frames). Nothing in it is trusted: indexes are checked by format.ReadIndex
// against the layers' annotations, frames by the store against their chunks' digests,
// and what it lacks or gets wrong is fetched from the layer blobs.
type pack struct {
	blob *fetch.Blob
	ctx  context.Context // the image's background: the GET ends with the image
	log  *slog.Logger

	mu      sync.Mutex
	rc      io.ReadCloser
	pr      *profile.PackReader
	opened  bool
	want    map[format.Digest]int    // index records still to keep, by digest: one per layer
	indexes map[format.Digest][]byte // index records read, not yet taken
	next    *packRecord              // the first record after the indexes, read while looking for them
	over    bool                     // no more records: the end, or an error (err)
	err     error
	// prefix, when not 0, is where the index records end: the GET asks for those from
	// from on alone, the indexes the node lacks (it holds some of the rest, read by range
	// once the indexes tell where).
	from, prefix int64
	// lay, once set (useLayout), is where the records after the indexes lie: they are
	// read by range (fetchRecords), those the node lacks, not streamed.
	lay *packLayout
}

type packRecord struct {
	k profile.RecordKind
	d format.Digest
	b []byte
}

// newPack reads the pack desc names. Of its index records, only those want counts are
// kept, until taken: as many records of a digest as want says (the image's layers with that
// index, indexDigests). A record is at most format.MaxIndexSize bytes, read as they arrive
// (profile.PackReader), so what the pack's indexes hold is at most that per layer of the
// image, however many records the pack carries.
func newPack(ctx context.Context, reg *fetch.Registry, desc v1.Descriptor, want map[format.Digest]int, log *slog.Logger) *pack {
	return &pack{blob: reg.Blob(desc.Digest, desc.Size), ctx: ctx, log: log, want: want, indexes: map[format.Digest][]byte{}}
}

// indexDigests counts the lazypull layers among layers by their index digest.
func indexDigests(layers []v1.Descriptor) map[format.Digest]int {
	want := map[format.Digest]int{}
	for _, d := range layers {
		if loc, err := format.LocationFromAnnotations(d.Annotations); err == nil {
			want[loc.Digest]++
		}
	}
	return want
}

// openLocked sends the GET, once.
func (p *pack) openLocked() {
	if p.opened {
		return
	}
	p.opened = true
	rc, err := p.openStream()
	if err != nil {
		p.failLocked(err)
		return
	}
	p.rc = rc
	context.AfterFunc(p.ctx, func() { p.close() })
}

// openStream sends the GET: of the whole pack, or of the index records from p.from to
// p.prefix.
func (p *pack) openStream() (io.ReadCloser, error) {
	if p.prefix == 0 {
		rc, err := p.blob.Open(p.ctx)
		if err != nil {
			return nil, err
		}
		if p.pr, err = profile.NewPackReader(rc, p.blob.Size()); err != nil {
			rc.Close()
			return nil, err
		}
		return rc, nil
	}
	n := p.prefix - p.from
	rc, err := p.blob.OpenRange(p.ctx, p.from, n)
	if err != nil {
		return nil, err
	}
	// Of these records, index records alone are kept: a version 2 reader takes any kind a
	// pack holds.
	if p.pr, err = profile.NewPackReaderAt(rc, p.from, n, profile.PackVersion2); err != nil {
		rc.Close()
		return nil, err
	}
	return rc, nil
}

// failLocked ends the reading; a reason other than the image closing is logged, once.
func (p *pack) failLocked(err error) {
	if p.over {
		return
	}
	p.over = true
	if err == io.EOF {
		return
	}
	p.err = err
	if p.ctx.Err() == nil {
		p.log.Warn("profile pack unreadable; reading from the layers instead", "pack", p.blob.Digest(), "err", err)
	}
}

// nextLocked reads the next record; false at the end or after an error.
func (p *pack) nextLocked() (profile.RecordKind, format.Digest, []byte, bool) {
	if p.over {
		return 0, format.Digest{}, nil, false
	}
	k, d, b, err := p.pr.Next()
	if err == io.EOF {
		// Every record is checked on its own; the pack's digest is too, for the log's
		// sake: the stream checks it at its end, which the records leave unread.
		if _, rerr := p.rc.Read(make([]byte, 1)); rerr != io.EOF {
			err = fmt.Errorf("pack %s at its end: %w", p.blob.Digest(), rerr)
		}
	}
	if err != nil {
		p.failLocked(err)
		if p.rc != nil {
			p.rc.Close()
		}
		return 0, d, nil, false
	}
	return k, d, b, true
}

// index returns the bytes of the index with digest d, when the pack holds them; it reads
// the pack up to them (or to its first chunk: every index comes before).
func (p *pack) index(d format.Digest) ([]byte, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.openLocked()
	for {
		if b, ok := p.indexes[d]; ok {
			delete(p.indexes, d)
			return b, true
		}
		if p.next != nil {
			return nil, false
		}
		k, rd, b, ok := p.nextLocked()
		if !ok {
			return nil, false
		}
		switch k {
		case profile.RecordIndex:
			if p.want[rd] > 0 {
				p.want[rd]--
				p.indexes[rd] = append([]byte(nil), b...)
			}
		default:
			p.next = &packRecord{k, rd, append([]byte(nil), b...)}
		}
	}
}

// runs hands fn every header run record that follows the indexes (a version 2 pack puts
// them before the chunks), as it arrives; it stops at the first chunk record, which it
// keeps for chunks.
func (p *pack) runs(fn func(d format.Digest, frames []byte)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.openLocked()
	for {
		if r := p.next; r != nil {
			if r.k != profile.RecordRun {
				return
			}
			p.next = nil
			fn(r.d, r.b)
			continue
		}
		k, d, b, ok := p.nextLocked()
		if !ok {
			return
		}
		switch k {
		case profile.RecordRun:
			fn(d, b)
		case profile.RecordChunk:
			p.next = &packRecord{k, d, append([]byte(nil), b...)}
			return
		}
	}
}

// chunks hands fn every chunk record left in the pack, as it arrives; fn's error ends
// the reading. It returns the pack's error, if it ended with one.
func (p *pack) chunks(fn func(d format.Digest, frame []byte) error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.openLocked()
	p.indexes = nil // the layers are open: no one asks for an index any more
	if r := p.next; r != nil {
		p.next = nil
		if r.k == profile.RecordChunk {
			if err := fn(r.d, r.b); err != nil {
				return err
			}
		}
	}
	for {
		k, d, b, ok := p.nextLocked()
		if !ok {
			return p.err
		}
		if k != profile.RecordChunk {
			continue
		}
		if err := fn(d, b); err != nil {
			return err
		}
	}
}

// close ends the GET (the image closed).
func (p *pack) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closeLocked()
}

func (p *pack) closeLocked() {
	p.failLocked(io.EOF)
	if p.rc != nil {
		p.rc.Close()
	}
}

// useLayout decides how the records after the indexes are read, lay being where they lie
// and missing what of its chunk records the node lacks: by range (then true; the GET, if
// any, ends) when the GET asked for the indexes alone, or when it has not gone out and the
// node holds some of the chunks; else streamed, as a cold node reads them, in one request.
func (p *pack) useLayout(lay packLayout, missing int64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.prefix == 0 && (p.opened || missing >= lay.chunkBytes) {
		return false
	}
	p.lay = &lay
	p.opened = true
	p.closeLocked()
	return true
}

// streamRest makes the records after the indexes come streamed, in one Range request, as a
// cold node reads them, when the GET asked for the indexes the node lacks alone and the
// layout that would have said where the rest lies is not the pack's (written in an order
// this reader does not know). It says whether it did.
func (p *pack) streamRest() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.prefix == 0 || p.lay != nil {
		return false
	}
	p.closeLocked()
	p.from, p.prefix = p.prefix, p.blob.Size()
	p.opened, p.over, p.err, p.next, p.pr, p.rc = false, false, nil, nil, nil, nil
	return true
}

// layout is where the records lie, when they are read by range (useLayout).
func (p *pack) layout() (packLayout, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lay == nil {
		return packLayout{}, false
	}
	return *p.lay, true
}

// chunkKey names a chunk where a layer blob holds its frame.
type chunkKey struct {
	d        format.Digest
	off, len int64
}

// packSource serves a prefetch's chunks from the pack, and what the pack does not bring
// from the blobs of the layers that hold them.
type packSource struct {
	pack  *pack
	owner map[chunkKey]*Layer
}

func (s packSource) Fetch(ctx context.Context, chunks []format.Chunk, fn func(format.Chunk, []byte) error) error {
	want := make(map[format.Digest]format.Chunk, len(chunks))
	for _, c := range chunks {
		want[c.Digest] = c
	}
	got := make(map[format.Digest]bool, len(chunks))
	if lay, ok := s.pack.layout(); ok {
		var recs []packRec
		for d := range want {
			if r, ok := lay.chunks[d]; ok {
				recs = append(recs, r)
			}
		}
		s.pack.fetchRecords(ctx, recs, func(r packRec, frame []byte) {
			if c := want[r.d]; !got[r.d] && fn(c, frame) == nil {
				got[r.d] = true
			}
		})
	} else {
		err := s.pack.chunks(func(d format.Digest, frame []byte) error {
			if c, ok := want[d]; ok && !got[d] && fn(c, frame) == nil {
				got[d] = true // a frame fn refused (ErrCorrupt) is fetched from its layer below
			}
			return ctx.Err()
		})
		if err != nil && ctx.Err() != nil {
			return ctx.Err()
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	rest := map[*Layer][]format.Chunk{}
	for _, c := range chunks {
		if got[c.Digest] {
			continue
		}
		l := s.owner[chunkKey{d: c.Digest, off: c.Offset, len: c.CompSize}]
		if l == nil {
			return fmt.Errorf("prefetch: chunk %s at %d is in none of the image's layers", c.Digest, c.Offset)
		}
		rest[l] = append(rest[l], c)
	}
	g, gctx := errgroup.WithContext(ctx)
	for l, cs := range rest {
		g.Go(func() error {
			if err := (blobSource{l.blob}).Fetch(gctx, cs, fn); err != nil {
				return fmt.Errorf("layer %s: %w", l.Desc.Digest, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// takePackedRun checks a pack's header run record against run r's digest and, if it is the
// run's bytes, checks the run with them and settles it. A record that is not (the pack is
// trusted for nothing) is refused with a warning and the run is left to its layer blob.
func (l *Layer) takePackedRun(r int, b []byte) bool {
	run := l.tc.runs[r]
	fr, err := l.Index.SplitRun(run, b)
	if err == nil {
		err = l.Index.CheckRunDigest(r, run, fr)
	}
	if err != nil {
		l.log.Warn("profile pack: header run record is not the run's; fetching it from the layer", "layer", l.Desc.Digest, "run", r, "err", err)
		return false
	}
	l.checkRunFrames(r, fr)
	return true
}

// Pack builds the pack of profile p for the image (profile.PackWriter): every layer's
// index, then the frame of every chunk the profile's ranges need, each once, in the
// profile's order. The frames are fetched from the layer blobs as they are, and checked
// against their chunks' digests, so a pack built from a bad registry fails here rather
// than at every mount.
func (im *Image) Pack(ctx context.Context, p *profile.Profile) ([]byte, error) {
	var buf bytes.Buffer
	// A version 2 pack when an index gives header runs digests: the runs the prefetch
	// checks come in it. Otherwise version 1, which any reader reads.
	version := uint16(profile.PackVersion1)
	for _, l := range im.Layers {
		if l.Index.RunDigests != nil {
			version = profile.PackVersion2
		}
	}
	pw := profile.NewPackWriterVersion(&buf, version)
	if err := im.packIndexes(ctx, pw); err != nil {
		return nil, err
	}
	per, wants, _, _, err := im.plan(p)
	if err != nil {
		return nil, fmt.Errorf("pack: %w", err)
	}
	runItems, runRanges := im.packRuns(wants)
	order, ranges := packChunks(per, len(im.Layers))
	for i := range ranges {
		ranges[i] = append(runRanges[i], ranges[i]...)
	}
	frames, err := im.fetchFrames(ctx, ranges)
	if err != nil {
		return nil, err
	}
	for _, it := range runItems {
		i := slices.Index(im.Layers, it.l)
		run := it.l.tc.runs[it.r]
		b := frames[i][it.l.Index.Frames[run.FirstFrame].Offset]
		fr, err := it.l.Index.SplitRun(run, b)
		if err == nil {
			err = it.l.Index.CheckRunDigest(it.r, run, fr)
		}
		if err != nil {
			return nil, fmt.Errorf("pack: layer %s: %w", it.l.Desc.Digest, err)
		}
		if err := pw.Run(it.l.Index.RunDigests[it.r], b); err != nil {
			return nil, err
		}
	}
	for _, it := range order {
		frame := frames[it.layer][it.c.Offset]
		if _, err := it.c.Decode(nil, frame); err != nil {
			return nil, fmt.Errorf("pack: layer %s: %w", im.Layers[it.layer].Desc.Digest, err)
		}
		if err := pw.Chunk(it.c.Digest, frame); err != nil {
			return nil, err
		}
		delete(frames[it.layer], it.c.Offset)
	}
	return buf.Bytes(), nil
}

// packIndexes writes the index of every layer to pw: from the store, or the registry.
func (im *Image) packIndexes(ctx context.Context, pw *profile.PackWriter) error {
	for _, l := range im.Layers {
		loc, err := format.LocationFromAnnotations(l.Desc.Annotations)
		if err != nil {
			return fmt.Errorf("pack: layer %s: %w", l.Desc.Digest, err)
		}
		b, err := l.store.Meta(loc.Digest)
		if err != nil || int64(len(b)) != loc.Size {
			if _, b, err = fetchIndex(ctx, l.blob, l.Desc, loc); err != nil {
				return fmt.Errorf("pack: layer %s: index: %w", l.Desc.Digest, err)
			}
		}
		if err := pw.Index(loc.Digest, b); err != nil {
			return err
		}
	}
	return nil
}

// packRuns returns the header runs the prefetch checks (profiledRuns) of the profiled
// files wants, of the layers with run digests, each digest once, and per layer where
// they lie in its blob: fetched with the layer's chunks, written before them.
func (im *Image) packRuns(wants []profile.Want) (items []runRef, ranges [][]fetch.Range) {
	ranges = make([][]fetch.Range, len(im.Layers))
	seen := map[format.Digest]bool{}
	for i, rs := range im.profiledRuns(wants) {
		l := im.Layers[i]
		if l.Index.RunDigests == nil {
			continue
		}
		for _, r := range rs {
			run := l.tc.runs[r]
			d := l.Index.RunDigests[r]
			if seen[d] || run.CompSize(l.Index) > profile.MaxRunRecord {
				continue
			}
			seen[d] = true
			items = append(items, runRef{l, r})
			ranges[i] = append(ranges[i], fetch.Range{Off: l.Index.Frames[run.FirstFrame].Offset, Len: run.CompSize(l.Index)})
		}
	}
	return items, ranges
}

// packItem is a chunk of layer layer for the pack.
type packItem struct {
	layer int
	c     format.Chunk
}

// packChunks returns the chunks of the wants per[i] of each of the n layers in the order
// the profile reads them, each once, and per layer the frames to fetch.
func packChunks(per [][]store.Want, n int) (order []packItem, ranges [][]fetch.Range) {
	seen := map[format.Digest]bool{}
	ranges = make([][]fetch.Range, n)
	for i, ws := range per {
		for _, w := range ws {
			for _, c := range w.Chunks() {
				if !seen[c.Digest] {
					seen[c.Digest] = true
					order = append(order, packItem{i, c})
					ranges[i] = append(ranges[i], fetch.Range{Off: c.Offset, Len: c.CompSize})
				}
			}
		}
	}
	return order, ranges
}

// fetchFrames fetches ranges[i] of each layer im.Layers[i], the layers in parallel; it
// returns each layer's frames by offset.
func (im *Image) fetchFrames(ctx context.Context, ranges [][]fetch.Range) ([]map[int64][]byte, error) {
	frames := make([]map[int64][]byte, len(im.Layers))
	g, gctx := errgroup.WithContext(ctx)
	for i, rs := range ranges {
		if len(rs) == 0 {
			continue
		}
		l, got := im.Layers[i], map[int64][]byte{}
		frames[i] = got
		g.Go(func() error {
			// fn runs on this goroutine only (fetch.Blob.Fetch): got needs no lock.
			err := l.blob.Fetch(gctx, rs, func(r fetch.Range, b []byte) error {
				got[r.Off] = bytes.Clone(b)
				return nil
			})
			if err != nil {
				return fmt.Errorf("pack: layer %s: %w", l.Desc.Digest, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return frames, nil
}
