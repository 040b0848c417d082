package daemon

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"lazypull/internal/fetch"
	"lazypull/internal/store"
)

// The parallel fill: when the link is fast and the workload reads much of an image (an AI
// or data image reading gigabytes at start), fetching the rest of it at the trickle's rate
// would leave it lazy for minutes where a plain pull has it whole. The fill then goes at
// line rate instead: the rest of every layer, in batches of fillParallelBatch, several at
// once, never more than the node's FillSlots together (all images filling share them), and
// one at a time while the image's files are being read. It does not stop for reads, as the
// trickle does (a sequential reader of a big file would stop it for good); reads take
// places among the node's requests of their own (the fetch client's bound is larger than
// the slots), so they never queue behind the fill.

// ParallelPolicy says when an image's fill goes at line rate (FillOptions.Parallel).
type ParallelPolicy string

const (
	// ParallelOff: never; the fill, if on, is the trickle alone.
	ParallelOff ParallelPolicy = "off"
	// ParallelAuto: once the image has been fetching at FastRate or more and has fetched a
	// quarter of its bytes (the link is fast and the workload reads much of it), and
	// after its prefetch.
	ParallelAuto ParallelPolicy = "auto"
	// ParallelOn: always, after the prefetch (the profile's bytes are in first).
	ParallelOn ParallelPolicy = "on"
)

// ParseParallelPolicy reads a policy's name.
func ParseParallelPolicy(s string) (ParallelPolicy, error) {
	switch p := ParallelPolicy(s); p {
	case ParallelOff, ParallelAuto, ParallelOn:
		return p, nil
	}
	return "", fmt.Errorf("parallel fetch policy %q: want %q, %q or %q", s, ParallelOff, ParallelAuto, ParallelOn)
}

const (
	// DefaultFillStreams is the node's parallel fill batches in flight at once: a quarter
	// of the fetch client's bound on requests (fetch.DefaultConcurrency), the rest left to
	// reads and speculation.
	DefaultFillStreams = 4
	// DefaultFastRate is what ParallelAuto takes for a fast link: 32 MiB/s (about 270
	// Mbit/s) fetched for the image over fastWindow.
	DefaultFastRate = 32 << 20
	// fillParallelBatch is one parallel batch's compressed bytes: fetch's largest request.
	fillParallelBatch = 16 << 20
	// fastWindow is the stretch over which ParallelAuto measures the image's fetch rate;
	// fastTick how often it looks.
	fastWindow = time.Second
	fastTick   = 250 * time.Millisecond
	// readMostDivisor: ParallelAuto wants the image to have fetched 1/readMostDivisor of
	// its bytes.
	readMostDivisor = 4
)

// FillSlots bound the parallel fills' batches in flight on a node, across images: give
// every image's FillOptions the same FillSlots.
type FillSlots struct{ c chan struct{} }

// NewFillSlots returns n slots; n < 1 is taken as DefaultFillStreams.
func NewFillSlots(n int) *FillSlots {
	if n < 1 {
		n = DefaultFillStreams
	}
	return &FillSlots{c: make(chan struct{}, n)}
}

// Len is the number of slots.
func (s *FillSlots) Len() int { return cap(s.c) }

func (s *FillSlots) acquire(ctx context.Context) error {
	select {
	case s.c <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *FillSlots) release() { <-s.c }

// fastWatch closes fast once the image's fetches say the link is fast and the workload
// reads much of the image (ParallelAuto): over the last fastWindow, at least minRate bytes a
// second, and since the watch began, a quarter of the image's compressed bytes. It looks at
// every tick until then or until ctx ends. bytes reads the image's registry's byte count;
// the watch begins at start.
func fastWatch(ctx context.Context, start time.Time, tick <-chan time.Time, bytes func() int64, imageBytes, minRate int64, fast chan<- struct{}) {
	type sample struct {
		at time.Time
		n  int64
	}
	n0 := bytes()
	window := []sample{{start, n0}}
	for {
		var now time.Time
		select {
		case now = <-tick:
		case <-ctx.Done():
			return
		}
		n := bytes()
		window = append(window, sample{now, n})
		for len(window) > 2 && now.Sub(window[1].at) >= fastWindow {
			window = window[1:]
		}
		first := window[0]
		span := now.Sub(first.at)
		if span < fastWindow || n-n0 < imageBytes/readMostDivisor {
			continue
		}
		if float64(n-first.n)/span.Seconds() >= float64(minRate) {
			close(fast)
			return
		}
	}
}

// compressedBytes is the image's layers' total size in the registry.
func (im *Image) compressedBytes() int64 {
	var n int64
	for _, l := range im.Layers {
		n += l.Desc.Size
	}
	return n
}

// startWatch starts ParallelAuto's watch of the image's fetch rate, and returns what it
// closes when the fill should go at line rate. What the fill fetched itself (a trickle's)
// does not count: only the workload's reads and the prefetch say the link is fast.
func (fl *filler) startWatch(minRate int64) <-chan struct{} {
	fast := make(chan struct{})
	t := time.NewTicker(fastTick)
	reg := fl.im.Registry
	bytes := func() int64 {
		fl.mu.Lock()
		own := fl.st.Bytes
		fl.mu.Unlock()
		return reg.Stats().Bytes - own
	}
	go func() {
		defer t.Stop()
		fastWatch(fl.ctx, time.Now(), t.C, bytes, fl.im.compressedBytes(), minRate, fast)
	}()
	return fast
}

// parallelSender returns a send for filler.batches that fetches each batch in a goroutine
// of its own once it holds one of the node's fill slots (so that planning stays at most the
// slots ahead of the fetches), one at a time while a read of the image is in progress, and
// a wait that returns once every batch sent has ended,
// with the first error. After an error, send refuses more.
func (fl *filler) parallelSender(ctx context.Context) (send func(l *Layer, batch []store.Want, runs []int, bytes int64) error, wait func() error) {
	g, gctx := errgroup.WithContext(ctx)
	var mine atomic.Int64 // this image's batches in flight
	send = func(l *Layer, batch []store.Want, runs []int, _ int64) error {
		// While the image's files are being read, one batch at a time: the reads get the
		// link and the CPU first.
		for fl.im.reading.Load() > 0 && mine.Load() > 0 {
			if err := fetch.Sleep(gctx, fillIdlePoll); err != nil {
				return err
			}
		}
		if err := fl.slots.acquire(gctx); err != nil {
			return err
		}
		mine.Add(1)
		g.Go(func() error {
			defer fl.slots.release()
			defer mine.Add(-1)
			return fl.fetchBatch(gctx, l, batch, runs)
		})
		return nil
	}
	return send, g.Wait
}
