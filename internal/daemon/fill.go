package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/format"
	"lazypull/internal/fetch"
	"lazypull/internal/store"
)

// Background fill: once the profile's prefetch is over (or at once without one), the rest
// of an image's chunks are fetched in the background, at a bounded rate, so that the image
// ends up whole in the store and later reads never wait for the network.
const (
	// DefaultFillRate is the background fill's rate unless told otherwise: 10 MiB/s, an
	// eighth of a 1 Gbit/s link, most of a 100 Mbit/s one only while nothing else reads.
	DefaultFillRate = 10 << 20
	// fillBatch is the compressed bytes of one batch: one Store.Prefetch call, which fetch
	// sends as one or two large Range requests (the chunks of a batch lie next to each
	// other in the blob). It is also the rate limiter's burst.
	fillBatch = 4 << 20
	// fillIdlePoll is how often a fill that yields to on-demand reads looks again.
	fillIdlePoll = 5 * time.Millisecond
)

// FillOptions configures Image.BackgroundFetch. Its zero value is the trickle alone: the
// rest of the image at DefaultFillRate, yielding to reads.
type FillOptions struct {
	// Rate bounds the trickle in compressed bytes per second; 0 means DefaultFillRate.
	Rate int64
	// NoTrickle: no trickle; only the parallel fill, when Parallel starts it.
	NoTrickle bool
	// Parallel says when the fill goes at line rate instead (parallelfill.go); "" is
	// ParallelOff. FastRate is ParallelAuto's fast link (0: DefaultFastRate); Slots bound
	// the parallel batches in flight, shared by the node's images (nil: DefaultFillStreams
	// of the image's own).
	Parallel ParallelPolicy
	FastRate int64
	Slots    *FillSlots
	// Log receives the fill's log lines; nil: the image's (OpenOptions.Log).
	Log *slog.Logger
}

// FillStats says what an image's background fill did.
type FillStats struct {
	Image string `json:"image"`
	// Planned is the compressed bytes the fill found missing when it started; Bytes and
	// Chunks what it fetched (less, when reads fetched some first).
	Planned int64 `json:"planned_bytes"`
	Bytes   int64 `json:"bytes"`
	Chunks  int64 `json:"chunks"`
	// Requests is what the registry counted meanwhile: the fill's, and any reads' of the
	// same image.
	Requests int64 `json:"requests"`
	Rate     int64 `json:"rate"`
	// Parallel: the fill went at line rate (ParallelPolicy), Streams batches at most at
	// once on the node.
	Parallel bool    `json:"parallel,omitempty"`
	Streams  int     `json:"streams,omitempty"`
	Seconds  float64 `json:"seconds"`
	Done     bool    `json:"done"`
	Err      string  `json:"error,omitempty"`
}

// filler is an image's background fill (BackgroundFetch): what it fetches at what rate,
// and what it did.
type filler struct {
	im  *Image
	lim *limiter
	log *slog.Logger
	// trickle: fill at lim's rate first; fast closes when the fill is to go at line rate
	// (nil: never), in batches of batch bytes, at most len(slots) at once on the node.
	trickle bool
	fast    <-chan struct{}
	slots   *FillSlots
	batch   int64
	begun   bool // under mu: a trickle, or the parallel fill started

	mu     sync.Mutex
	st     FillStats
	done   chan struct{}
	ctx    context.Context // ends with the image, or with StopBackgroundFetch
	cancel context.CancelFunc
}

// fillItem is a file of a layer whose chunks the fill wants.
type fillItem struct {
	l    *Layer
	e    *format.Entry
	f    store.File
	name string
}

// BackgroundFetch fetches every chunk of the image that the store lacks, in the
// background: after the prefetch, if one runs (Prefetch before BackgroundFetch), else at
// once. Chunks go in blob order, in batches of fillBatch compressed bytes (each one or two
// large Range requests), no faster than o.Rate; a batch starts only while no read of the
// image is in progress, so that on-demand reads go first. What is local or being fetched
// is never fetched again. The fill ends with the image (Close). It logs one line when it
// starts and one when it ends.
func (im *Image) BackgroundFetch(o FillOptions) error {
	if len(im.indexed) > 0 {
		im.log.Info("no background fetch for an image served from its index artifact (not implemented yet)", "image", im.Ref)
		return nil
	}
	policy := o.Parallel
	if policy == "" {
		policy = ParallelOff
	}
	if _, err := ParseParallelPolicy(string(policy)); err != nil {
		return fmt.Errorf("background fetch of %s: %w", im.Ref, err)
	}
	if o.NoTrickle && policy == ParallelOff {
		return nil
	}
	rate := o.Rate
	if rate == 0 {
		rate = DefaultFillRate
	}
	lim, err := newLimiter(rate, fillBatch)
	if err != nil {
		return fmt.Errorf("background fetch of %s: %w", im.Ref, err)
	}
	log := o.Log
	if log == nil {
		log = im.log
	}
	slots := o.Slots
	if slots == nil {
		slots = NewFillSlots(DefaultFillStreams)
	}
	fl := &filler{im: im, lim: lim, log: log, trickle: !o.NoTrickle, slots: slots, batch: fillParallelBatch,
		begun: !o.NoTrickle, st: FillStats{Image: im.Ref, Rate: rate}, done: make(chan struct{})}
	fl.ctx, fl.cancel = context.WithCancel(im.bg)
	switch policy {
	case ParallelOn:
		fast := make(chan struct{})
		close(fast)
		fl.fast = fast
	case ParallelAuto:
		minRate := o.FastRate
		if minRate <= 0 {
			minRate = DefaultFastRate
		}
		fl.fast = fl.startWatch(minRate)
	}
	im.mu.Lock()
	im.fill = fl
	im.mu.Unlock()
	go fl.run(im.prefetch.ended())
	return nil
}

// run fills the image, after the prefetch if one runs (after closes when it has ended),
// then checks the layers' diff IDs, and logs what it did.
func (fl *filler) run(after <-chan struct{}) {
	im, log := fl.im, fl.log
	defer close(fl.done)
	defer fl.cancel()
	if after != nil {
		select {
		case <-after:
		case <-fl.ctx.Done():
			return
		}
	}
	start := time.Now()
	before := im.Registry.Stats().Requests
	err := fl.fill(fl.ctx)
	requests := im.Registry.Stats().Requests - before
	if err == nil {
		// The layers are complete: their tar streams must have the config's diff
		// IDs. Before the fill says it is done, so that what follows reads a layer
		// whose every header run is checked.
		im.checkDiffIDs(fl.ctx, log)
	}
	fl.mu.Lock()
	fl.st.Done, fl.st.Seconds = true, time.Since(start).Seconds()
	fl.st.Requests = requests // the fill's; the check's are its own
	if err != nil {
		fl.st.Err = err.Error()
	}
	st := fl.st
	fl.mu.Unlock()
	switch {
	case errors.Is(err, errNotFast):
		log.Debug("no background fetch: the image never fetched fast enough for its parallel fetch", "image", im.Ref)
	case errors.Is(err, errFillSkipped):
		log.Warn("background fetch skipped", "image", im.Ref, "why", err)
	case err != nil && fl.ctx.Err() != nil:
		log.Info("background fetch stopped: the image was closed or unmounted", "image", im.Ref, "bytes", st.Bytes, "chunks", st.Chunks,
			"requests", st.Requests, "seconds", st.Seconds)
	case err != nil:
		log.Warn("background fetch failed; reads fetch what they need as before", "image", im.Ref, "bytes", st.Bytes,
			"requests", st.Requests, "err", err)
	default:
		log.Info("background fetch done", "image", im.Ref, "bytes", st.Bytes, "chunks", st.Chunks, "requests", st.Requests,
			"seconds", st.Seconds)
	}
}

// StopBackgroundFetch stops the image's background fill, if one runs; what it fetched
// stays in the store.
func (im *Image) StopBackgroundFetch() {
	im.mu.Lock()
	fl := im.fill
	im.mu.Unlock()
	if fl != nil {
		fl.cancel()
	}
}

// FillStats returns the background fill's figures, and false if there was none, or none
// yet (a parallel fill alone, waiting for its policy to start it).
func (im *Image) FillStats() (FillStats, bool) {
	im.mu.Lock()
	fl := im.fill
	im.mu.Unlock()
	if fl == nil {
		return FillStats{}, false
	}
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return fl.st, fl.begun
}

// WaitFill waits until the background fill has ended (or ctx has); it returns at once if
// there is none.
func (im *Image) WaitFill(ctx context.Context) error {
	im.mu.Lock()
	fl := im.fill
	im.mu.Unlock()
	if fl == nil {
		return nil
	}
	select {
	case <-fl.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// errFillSkipped: the fill did not start, for a reason it names.
var errFillSkipped = errors.New("background fetch skipped")

// errNotFast: a fill with no trickle ended before the image fetched fast enough for its
// parallel fill (ParallelAuto).
var errNotFast = errors.New("never fast enough for the parallel fetch")

// errGoParallel: the trickle stopped for the parallel fill to fetch the rest.
var errGoParallel = errors.New("the link is fast: the rest in parallel")

// fill fetches the rest of the image: the trickle until the fill is to go at line rate (or
// to the end), then the parallel fill; or, with no trickle, the parallel fill once it is to
// go.
func (fl *filler) fill(ctx context.Context) error {
	if fl.trickle {
		if err := fl.fetchMissing(ctx, false); !errors.Is(err, errGoParallel) {
			return err
		}
	} else {
		select {
		case <-fl.fast:
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", errNotFast, ctx.Err())
		}
	}
	fl.mu.Lock()
	fl.begun, fl.st.Parallel, fl.st.Streams = true, true, fl.slots.Len()
	fl.mu.Unlock()
	return fl.fetchMissing(ctx, true)
}

// goParallel says whether the fill is to go at line rate now.
func (fl *filler) goParallel() bool {
	select {
	case <-fl.fast:
		return true
	default:
		return false
	}
}

// fetchMissing fetches what the store lacks of the image, in blob order, in batches: one at
// a time at the limiter's rate while no read is in progress (the trickle, until goParallel),
// or, when parallel, at line rate, as many at once as the node's fill slots allow.
func (fl *filler) fetchMissing(ctx context.Context, parallel bool) (err error) {
	im, log := fl.im, fl.log
	if len(im.Layers) == 0 {
		return nil
	}
	items, planned, plain, err := im.missing()
	if err != nil {
		return err
	}
	fl.mu.Lock()
	if !parallel || fl.st.Planned == 0 { // the trickle's plan, when it went first
		fl.st.Planned = planned
	}
	fl.mu.Unlock()
	if st := im.layerStore().Stats(); st.MaxBytes > 0 && st.Bytes+plain > st.MaxBytes {
		return fmt.Errorf("%w: the image's missing %d bytes do not fit under the store's bound of %d bytes (%d used); the fill would only evict what it fetched",
			errFillSkipped, plain, st.MaxBytes, st.Bytes)
	}
	if parallel {
		log.Info("background fetch started, in parallel at line rate", "image", im.Ref, "files", len(items), "bytes", planned,
			"streams", fl.slots.Len())
	} else {
		log.Info("background fetch started", "image", im.Ref, "files", len(items), "bytes", planned, "rate", fl.lim.rate())
	}
	if len(items) == 0 {
		return nil
	}
	maxBatch := int64(fillBatch) // the limiter's burst: every byte is paid for
	var send func(l *Layer, batch []store.Want, runs []int, bytes int64) error
	if parallel {
		maxBatch = fl.batch
		var wait func() error
		send, wait = fl.parallelSender(ctx)
		defer func() {
			if werr := wait(); werr != nil { // the first batch's error, before a send's refusal
				err = werr
			}
		}()
	} else {
		send = func(l *Layer, batch []store.Want, runs []int, bytes int64) error {
			if fl.goParallel() {
				return errGoParallel
			}
			if err := fl.waitIdle(ctx); err != nil {
				return err
			}
			if err := fl.lim.Wait(ctx, bytes); err != nil {
				return err
			}
			return fl.fetchBatch(ctx, l, batch, runs)
		}
	}
	return fl.batches(items, maxBatch, send)
}

// batches cuts the missing chunks of items, in order, into batches of at most maxBatch
// compressed bytes within one layer, each with the header runs of its files, and has send
// fetch each.
func (fl *filler) batches(items []fillItem, maxBatch int64, send func(l *Layer, batch []store.Want, runs []int, bytes int64) error) error {
	var (
		batch []store.Want
		runs  []int // the header runs of the batch's files: they come with its chunks
		bytes int64
		cur   *Layer
	)
	flush := func() error {
		if len(batch) == 0 && len(runs) == 0 {
			return nil
		}
		b, r, n := batch, runs, bytes
		batch, runs, bytes = nil, nil, 0
		return send(cur, b, r, n)
	}
	for _, it := range items {
		if it.l != cur {
			if err := flush(); err != nil {
				return err
			}
			cur = it.l
		}
		if rs, err := it.l.runsFor(it.e); err == nil {
			runs = append(runs, rs...)
		}
		// Again: reads (or an earlier batch, for a shared chunk) may have fetched some.
		// A batch stays within maxBatch (a chunk's frame is far smaller).
		for _, c := range it.l.store.Missing(it.f) {
			if bytes+c.CompSize > maxBatch {
				if err := flush(); err != nil {
					return err
				}
			}
			batch = append(batch, store.Want{File: it.f, Off: c.FileOffset, Len: c.Size})
			bytes += c.CompSize
		}
	}
	return flush()
}

// fetchBatch fetches one batch of layer l's chunks and the header runs that come with
// them, and counts what it fetched.
func (fl *filler) fetchBatch(ctx context.Context, l *Layer, batch []store.Want, runs []int) error {
	src := &countingSource{src: &checkingSource{l: l, runs: runs}}
	err := l.store.Prefetch(ctx, src, batch...)
	fl.mu.Lock()
	fl.st.Bytes += src.bytes.Load()
	fl.st.Chunks += src.chunks.Load()
	fl.mu.Unlock()
	if err != nil {
		return fmt.Errorf("layer %s: %w", l.Desc.Digest, err)
	}
	l.prefetchRuns(ctx, runs)
	return nil
}

// missing returns what the store lacks of the image now: every regular file of every
// layer with a chunk missing, in blob order, and the compressed and plain bytes of those
// chunks, each counted once.
func (im *Image) missing() (items []fillItem, planned, plain int64, err error) {
	seen := map[format.Digest]bool{}
	for _, l := range im.Layers {
		for i := range l.Index.Entries {
			e := &l.Index.Entries[i]
			if !e.IsRegular() || e.Sparse || e.Size == 0 {
				continue
			}
			// Not Layer.file: that keeps the chunk list of every file for the mount's
			// life, and the fill goes once over all of them.
			f, err := store.FileOf(l.Index, e)
			if err != nil {
				return nil, 0, 0, fmt.Errorf("layer %s: %w", l.Desc.Digest, err)
			}
			missing := l.store.Missing(f)
			if len(missing) == 0 {
				continue
			}
			items = append(items, fillItem{l: l, e: e, f: f, name: e.Name})
			for _, c := range missing {
				if !seen[c.Digest] {
					seen[c.Digest] = true
					planned += c.CompSize
					plain += c.Size
				}
			}
		}
	}
	return items, planned, plain, nil
}

// layerStore is the store the image's layers fill.
func (im *Image) layerStore() *store.Store { return im.Layers[0].store }

// waitIdle returns once no read of the image is in progress: the fill yields to them.
func (fl *filler) waitIdle(ctx context.Context) error {
	for fl.im.reading.Load() > 0 {
		if err := fetch.Sleep(ctx, fillIdlePoll); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// countingSource counts the chunks and compressed bytes a Source delivers.
type countingSource struct {
	src           store.Source
	bytes, chunks atomic.Int64
}

func (s *countingSource) Fetch(ctx context.Context, chunks []format.Chunk, fn func(format.Chunk, []byte) error) error {
	return s.src.Fetch(ctx, chunks, func(c format.Chunk, b []byte) error {
		if err := fn(c, b); err != nil {
			return err
		}
		s.bytes.Add(int64(len(b)))
		s.chunks.Add(1)
		return nil
	})
}

// checkDiffIDs checks every complete layer of the image against the diff ID the image's
// config gives it (Layer.checkDiffID), and logs what it found.
func (im *Image) checkDiffIDs(ctx context.Context, log *slog.Logger) {
	raw, _, err := im.rawConfig(ctx, im.nodeStore(), fetch.MaxReadAll)
	var cfg *v1.ConfigFile
	if err == nil {
		cfg, err = v1.ParseConfigFile(bytes.NewReader(raw))
	}
	if err != nil {
		log.Warn("cannot read the image config; the layers' diff IDs are not checked", "image", im.Ref, "err", err)
		return
	}
	ids := cfg.RootFS.DiffIDs
	for _, l := range im.Layers {
		i := slices.IndexFunc(im.Image.Manifest.Layers, func(d v1.Descriptor) bool { return d.Digest == l.Desc.Digest })
		if i < 0 || i >= len(ids) {
			log.Warn("the image config has no diff ID for the layer; not checked", "image", im.Ref, "layer", l.Desc.Digest)
			continue
		}
		switch err := l.checkDiffID(ctx, ids[i].String()); {
		case err == nil:
			log.Info("layer's tar matches its diff ID", "layer", l.Desc.Digest, "diff_id", ids[i])
		case errors.Is(err, errIncomplete), ctx.Err() != nil:
		default:
			var re *refusedError
			if !errors.As(err, &re) {
				log.Warn("cannot check the layer's diff ID", "layer", l.Desc.Digest, "err", err)
			}
		}
	}
}
