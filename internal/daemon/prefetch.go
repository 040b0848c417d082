package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"lazypull/format"
	"lazypull/internal/profile"
	"lazypull/internal/store"
)

// PrefetchStats says what a mount's prefetch did.
type PrefetchStats struct {
	Image   string `json:"image"`
	Profile string `json:"profile,omitempty"` // digest of the profile's manifest; "" if none
	Pack    bool   `json:"pack,omitempty"`    // the layer indexes and chunks came in the profile's pack
	Files   int    `json:"files"`             // profiled files found in the image
	Stale   int    `json:"stale"`             // profiled files no longer in it, skipped
	Bytes   int64  `json:"bytes"`             // bytes the profile's ranges cover
	// Delta is how many of Files are files the image added to the version its profile was
	// recorded on (SourceRelated), fetched with that profile's (delta.go).
	Delta int `json:"delta,omitempty"`
	// Named is how many of Files are files the added ones name, fetched after them
	// (named.go).
	Named int `json:"named,omitempty"`
	// Command is how many files the image's command names were handed to the walk of
	// programs' needs, without a profile (command.go).
	Command int `json:"command,omitempty"`
	// Policy is the profile policy the image was opened under; Source where its profile
	// came from (SourcePin, SourceReferrers; "" for none); Candidates how many profiles
	// the referrers listed; Why how it was chosen, or why there is none.
	Policy     ProfilePolicy `json:"policy,omitempty"`
	Source     string        `json:"source,omitempty"`
	Candidates int           `json:"candidates,omitempty"`
	Why        string        `json:"why,omitempty"`
	// LookupRequests went to finding and reading the profile, Requests to fetching its
	// chunks (as the registry counted them: only this image read meanwhile, or they
	// include the workload's).
	LookupRequests int64   `json:"lookup_requests"`
	Requests       int64   `json:"requests"`
	Seconds        float64 `json:"seconds"`
	Done           bool    `json:"done"`
	Err            string  `json:"error,omitempty"`
}

// PrefetchOptions configures Image.Prefetch.
type PrefetchOptions struct {
	// Wait is how long Prefetch waits for the profiled chunks before returning; 0 returns
	// at once (the fetch goes on in the background). A prefetch that outlasts Wait goes
	// on in the background all the same.
	Wait time.Duration
	// Log receives the prefetch's log lines; nil: the image's (OpenOptions.Log).
	Log *slog.Logger
	// Metrics, when not nil, counts the look-ups' outcomes.
	Metrics *ProfileMetrics
	// Auto, when not nil, records the start of an image with no published profile, and
	// uses what this node recorded before (autoprofile.go). Only under PolicyReferrers,
	// for an image no profile is pinned for.
	Auto *AutoProfileOptions
}

// prefetcher is an image's prefetch: the profile look-up its opening started, the
// profile's pack, and the prefetch itself once Prefetch starts it. An Image holds one
// from its opening on.
type prefetcher struct {
	im *Image
	// choice is what the image's profile is chosen by.
	choice ProfileChoice
	// lookup is the profile look-up openImage started, if any; else the prefetch starts
	// one.
	lookup *profileLookup
	// pack is the profile's pack, when it has one: the layer indexes and the prefetch
	// come from it.
	pack *pack
	// rec records the image's start (PrefetchOptions.Auto); nil: not recorded.
	rec *autoRecorder

	mu   sync.Mutex
	st   PrefetchStats
	done chan struct{} // nil until Prefetch; closed when the prefetch has ended
}

// Prefetch looks up the image's profile and fetches the chunks of its ranges first, all
// layers at once, each layer's chunks in one store.Prefetch (one coalesced Fetch: a few
// large parallel requests). Reads that need a chunk meanwhile wait for its fetch. A
// missing, corrupt or oversized profile is logged and the image works without it. The
// prefetch ends with the image (Close). An image served from its index artifact
// prefetches its profiled small files whole (fetchIndexed).
func (im *Image) Prefetch(ctx context.Context, o PrefetchOptions) {
	im.prefetch.start(ctx, o)
}

// WaitPrefetch waits up to d for the prefetch Prefetch started to end; it returns at once
// if there is none or d is not positive. A wait that ends first is logged to log (nil: the
// image's).
func (im *Image) WaitPrefetch(ctx context.Context, d time.Duration, log *slog.Logger) {
	im.prefetch.wait(ctx, d, log)
}

// PrefetchStats returns the prefetch's figures, and false if there was none.
func (im *Image) PrefetchStats() (PrefetchStats, bool) {
	return im.prefetch.stats()
}

// start starts the prefetch (Image.Prefetch) and waits up to o.Wait for it.
func (pf *prefetcher) start(ctx context.Context, o PrefetchOptions) {
	im := pf.im
	log := o.Log
	if log == nil {
		log = im.log
	}
	done := make(chan struct{})
	pf.mu.Lock()
	pf.st, pf.done = PrefetchStats{Image: im.Ref, Policy: pf.choice.policy()}, done
	pf.mu.Unlock()
	if _, pinned := pf.choice.pinFor(im.Image.Descriptor.Digest); o.Auto != nil && !pinned && pf.choice.policy() == PolicyReferrers && len(im.Layers) > 0 {
		pf.rec = newAutoRecorder(im, *o.Auto) // before the first read
	}
	go func() {
		defer close(done)
		start := time.Now()
		err := pf.run(im.bg, log, o.Metrics)
		pf.mu.Lock()
		pf.st.Done, pf.st.Seconds = true, time.Since(start).Seconds()
		if err != nil {
			pf.st.Err = err.Error()
		}
		st := pf.st
		pf.mu.Unlock()
		switch {
		case err != nil && im.bg.Err() == nil:
			log.Warn("prefetch failed; the image is served without it", "image", im.Ref, "policy", st.Policy, "profile", st.Profile, "err", err)
		case st.Profile != "":
			log.Info("prefetched the profile", "image", im.Ref, "profile", st.Profile, "files", st.Files, "stale", st.Stale,
				"bytes", st.Bytes, "requests", st.Requests, "seconds", st.Seconds)
		}
	}()
	pf.wait(ctx, o.Wait, log)
}

// ended returns what closes when the prefetch ends; nil if none started.
func (pf *prefetcher) ended() <-chan struct{} {
	pf.mu.Lock()
	defer pf.mu.Unlock()
	return pf.done
}

func (pf *prefetcher) wait(ctx context.Context, d time.Duration, log *slog.Logger) {
	done := pf.ended()
	if done == nil || d <= 0 {
		return
	}
	if log == nil {
		log = pf.im.log
	}
	if !within(ctx, done, d) && ctx.Err() == nil {
		log.Info("prefetch still running after the wait; going on in the background", "image", pf.im.Ref, "wait", d)
	}
}

func (pf *prefetcher) stats() (PrefetchStats, bool) {
	pf.mu.Lock()
	defer pf.mu.Unlock()
	if pf.done == nil {
		return PrefetchStats{}, false
	}
	return pf.st, true
}

// run waits for the profile look-up, then fetches what the profile names.
func (pf *prefetcher) run(ctx context.Context, log *slog.Logger, metrics *ProfileMetrics) error {
	im := pf.im
	l := pf.lookup
	if l == nil {
		l = lookupProfile(ctx, im.Registry, im.Image.Descriptor.Digest, pf.choice)
	}
	carry := func() carried { return carried{} }
	if pf.rec != nil {
		carry = pf.startCarried(log) // beside the look-up; used if it finds no profile
	}
	select {
	case <-l.done:
	case <-ctx.Done():
		return nil // the image was closed
	}
	pf.reportChoice(l, log, metrics)
	looked := im.Registry.Stats().Requests
	if pf.pack != nil {
		looked = l.after // the pack's GET went out as the image opened
	} else if l.err == nil && l.Pack != nil && len(im.indexed) == 0 {
		// The image opened without waiting for the look-up (its indexes were kept, or the
		// look-up was slow): the pack still brings the chunks, in one request.
		pf.pack = newPack(im.bg, im.Registry, *l.Pack, nil, log) // for its chunks alone
	}
	pf.mu.Lock()
	pf.st.LookupRequests = l.requests
	pf.st.Source, pf.st.Candidates, pf.st.Why = l.Source, l.Candidates, l.Why
	if l.err == nil && l.Profile != nil {
		pf.st.Profile = l.Desc.Digest.String()
	}
	pf.mu.Unlock()
	if l.err != nil || l.Profile == nil {
		if used, err := pf.runAuto(ctx, l.err, carry, looked, log); used || err != nil {
			return err
		}
		pf.walkCommand(ctx, log)
		return l.err
	}
	if pf.rec != nil {
		pf.rec.decide(false) // the published profile is used
		go pf.rec.adopt(l.Profile)
	}
	return pf.fetch(ctx, l.Profile, l.Desc.Digest.String(), looked, log)
}

// walkCommand hands what the image's command names to the walk of programs' needs
// (Image.walkCommand), for an image with no profile.
func (pf *prefetcher) walkCommand(ctx context.Context, log *slog.Logger) {
	n := pf.im.logWalkCommand(ctx, log)
	pf.mu.Lock()
	pf.st.Command = n
	pf.mu.Unlock()
}

// fetch fetches the ranges of the profile p (its manifest's digest desc) first: from the
// pack when there is one, else from the layer blobs. Its requests are the registry's
// since looked.
func (pf *prefetcher) fetch(ctx context.Context, p *profile.Profile, desc string, looked int64, log *slog.Logger) error {
	im := pf.im
	if len(im.indexed) > 0 {
		return pf.fetchIndexed(ctx, p, desc, looked, log)
	}
	per, wants, stale, bytes, err := im.plan(p)
	if err != nil {
		return err
	}
	if len(stale) > 0 {
		// A published profile that names missing files is worth a warning; this node's own
		// profile of another version of the image (SourceRelated) is expected to.
		pf.mu.Lock()
		level := slog.LevelWarn
		if src := pf.st.Source; src == SourceNode || src == SourceRelated {
			level = slog.LevelInfo
		}
		pf.mu.Unlock()
		ex := stale[:min(len(stale), 5)]
		log.Log(ctx, level, "profile names files the image no longer has; skipping them", "image", im.Ref, "profile", desc,
			"stale", len(stale), "of", len(p.Files), "first", strings.Join(ex, ", "))
	}
	for _, ws := range per {
		for _, w := range ws {
			im.lease.Pin(w.File) // what the workload reads at start stays while the image is mounted
		}
	}
	for _, w := range wants {
		im.Layers[w.Layer].profile(w.Entry, w.Ranges[len(w.Ranges)-1].End())
	}
	pf.mu.Lock()
	pf.st.Profile, pf.st.Files, pf.st.Stale, pf.st.Bytes = desc, len(wants), len(stale), bytes
	pf.st.Pack = pf.pack != nil
	pf.mu.Unlock()
	runs := im.profiledRuns(wants)
	requests := func() {
		pf.mu.Lock()
		pf.st.Requests = im.Registry.Stats().Requests - looked
		pf.mu.Unlock()
	}
	if pf.pack != nil {
		err := pf.prefetchPacked(ctx, per, wants, runs)
		requests()
		return err
	}
	err = im.fetchPlanned(ctx, per, runs)
	requests()
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil // the image was closed
	}
	return err
}

// fetchPlanned fetches what im.plan planned (per[i] for im.Layers[i]) from the layer
// blobs, each layer's in one store.Prefetch with the header runs runs[i] of its files.
func (im *Image) fetchPlanned(ctx context.Context, per [][]store.Want, runs [][]int) error {
	g, gctx := errgroup.WithContext(ctx)
	for i, ws := range per {
		if len(ws) == 0 {
			continue
		}
		l := im.Layers[i]
		g.Go(func() error {
			// The header runs of the profiled files come in the same Fetch, each before
			// its file's first chunk; what that Fetch did not bring (the chunks were
			// local) comes after it.
			if err := l.store.Prefetch(gctx, &checkingSource{l: l, runs: runs[i]}, ws...); err != nil {
				return fmt.Errorf("layer %s: %w", l.Desc.Digest, err)
			}
			l.prefetchRuns(gctx, runs[i])
			return nil
		})
	}
	return g.Wait()
}

// reportChoice logs, once per image, which profile the look-up l chose, or why there is
// none (a refused one is in Prefetch's warning, with its error), and counts the outcome.
func (pf *prefetcher) reportChoice(l *profileLookup, log *slog.Logger, metrics *ProfileMetrics) {
	im := pf.im
	policy := pf.choice.policy()
	outcome := outcomeOf(l.Found, l.err)
	metrics.observe(policy, outcome)
	attrs := []any{"image", im.Ref, "digest", im.Image.Descriptor.Digest.String(), "policy", policy, "outcome", outcome,
		"candidates", l.Candidates, "why", l.Why, "lookup_requests", l.requests}
	switch {
	case l.err != nil:
		// Prefetch warns of it, with the error, once.
	case l.Profile == nil:
		log.Info("no prefetch profile", attrs...)
	default:
		log.Info("profile chosen", append(attrs, "profile", l.Desc.Digest.String(), "source", l.Source)...)
	}
}

// awaitPack waits (up to packWait) for the profile look-up, and returns the profile's pack
// if it has one, its GET not yet sent. The layers' indexes then come in the pack, with the
// prefetch, instead of one request per layer beside the look-up: one round trip later, but
// a single request for all.
func (pf *prefetcher) awaitPack(ctx context.Context, st *store.Store) *pack {
	im := pf.im
	l := pf.lookup
	if !within(ctx, l.done, packWait) {
		if ctx.Err() == nil {
			im.log.Info("profile look-up still running; reading the layer indexes without waiting for it", "image", im.Ref, "wait", packWait)
		}
		return nil
	}
	if l.err != nil || l.Pack == nil {
		return nil // the prefetch reports the error
	}
	pk := newPack(im.bg, im.Registry, *l.Pack, indexDigests(im.Image.Manifest.Layers), im.log)
	if from, end, ok := packIndexSpan(st, im.Image.Manifest.Layers); ok && end < pk.blob.Size() {
		// The node ran an image sharing a layer: the indexes it lacks alone, the rest by
		// range once they tell which records it lacks (prefetchPacked).
		pk.from, pk.prefix = from, end
	}
	return pk
}

// plan finds the profile's files in the image (profile.Plan): per layer, the ranges of
// their content to fetch first, in the profile's order; the files found, the paths of
// those that were not, and the bytes the ranges cover.
func (im *Image) plan(p *profile.Profile) (per [][]store.Want, wants []profile.Want, stale []string, bytes int64, err error) {
	layers := make([]profile.Layer, len(im.Layers))
	for i, l := range im.Layers {
		layers[i] = profile.Layer{Digest: l.Desc.Digest.String(), Index: l.Index}
	}
	wants, stale = p.Plan(layers)
	per = make([][]store.Want, len(im.Layers))
	for _, w := range wants {
		f, err := im.Layers[w.Layer].file(w.Entry)
		if err != nil {
			return nil, nil, nil, 0, err
		}
		for _, r := range w.Ranges {
			per[w.Layer] = append(per[w.Layer], store.Want{File: f, Off: r.Off, Len: r.Len})
			bytes += r.Len
		}
	}
	return per, wants, stale, bytes, nil
}

// prefetchPacked fetches the wants of every layer (per[i] for im.Layers[i], planned as
// wants) in one store.Prefetch from the pack: streamed, or only the records the node lacks
// (pack.useLayout).
func (pf *prefetcher) prefetchPacked(ctx context.Context, per [][]store.Want, wants []profile.Want, runs [][]int) error {
	im := pf.im
	if lay, ok := im.packLayout(per, wants, pf.pack.blob.Size()); ok {
		missing := lay.missingChunkBytes(im.Layers[0].store, per)
		if pf.pack.useLayout(lay, missing) {
			im.log.Debug("profile pack: reading the records this node lacks, by range", "image", im.Ref,
				"pack", pf.pack.blob.Digest(), "missing", missing, "of", lay.chunkBytes)
		}
	} else if pf.pack.streamRest() {
		im.log.Info("profile pack: its records are not where this reader puts them; reading them all",
			"image", im.Ref, "pack", pf.pack.blob.Digest())
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	pf.packedRuns(ctx, &wg, runs)
	owner := map[chunkKey]*Layer{}
	var all []store.Want
	for i, ws := range per {
		l := im.Layers[i]
		for _, w := range ws {
			for _, c := range w.File.Chunks {
				if k := (chunkKey{d: c.Digest, off: c.Offset, len: c.CompSize}); owner[k] == nil {
					owner[k] = l
				}
			}
		}
		all = append(all, ws...)
	}
	if len(all) == 0 {
		return nil
	}
	err := im.Layers[0].store.Prefetch(ctx, packSource{pack: pf.pack, owner: owner}, all...)
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil
	}
	return err
}

// runRef is a header run of a layer.
type runRef struct {
	l *Layer
	r int
}

// packedRuns brings the header runs runs[i] of each layer im.Layers[i]. Those of a layer
// whose index gives runs a digest (version 2) are taken from the pack's header run
// records, read before its chunks: each is hashed and used only if it is the run's; what
// the pack lacks or gets wrong comes from the layer blob. Those of a version 1 index, which
// a pack cannot carry (nothing to check a record against), come from the layer blobs, one
// request per layer, sent beside the pack's. Requests go out on wg.
func (pf *prefetcher) packedRuns(ctx context.Context, wg *sync.WaitGroup, runs [][]int) {
	im := pf.im
	byDigest := map[format.Digest][]runRef{}
	claimed := make([][]int, len(im.Layers))
	for i, l := range im.Layers {
		if len(runs[i]) == 0 {
			continue
		}
		if l.Index.RunDigests == nil {
			wg.Go(func() { l.prefetchRuns(ctx, runs[i]) })
			continue
		}
		// Claimed: the reads of these runs wait for the pack, not fetch them again.
		claimed[i] = l.claim(runs[i])
		for _, r := range claimed[i] {
			d := l.Index.RunDigests[r]
			byDigest[d] = append(byDigest[d], runRef{l, r})
		}
	}
	if len(byDigest) == 0 {
		return
	}
	taken := map[runRef]bool{}
	take := func(d format.Digest, frames []byte) {
		for _, ref := range byDigest[d] {
			if !taken[ref] && ref.l.takePackedRun(ref.r, frames) {
				taken[ref] = true
			}
		}
	}
	rest := func() {
		for i, l := range im.Layers {
			var left []int
			for _, r := range claimed[i] {
				if !taken[runRef{l, r}] {
					left = append(left, r)
				}
			}
			if len(left) > 0 {
				wg.Go(func() { _ = l.fetchRuns(ctx, left, nil, nil) })
			}
		}
	}
	if lay, ok := pf.pack.layout(); ok {
		// Read by range: beside the chunks' request, not before it.
		var recs []packRec
		for d := range byDigest {
			if r, ok := lay.runs[d]; ok {
				recs = append(recs, r)
			}
		}
		wg.Go(func() {
			pf.pack.fetchRecords(ctx, recs, func(r packRec, b []byte) { take(r.d, b) })
			rest()
		})
		return
	}
	pf.pack.runs(take)
	rest()
}
