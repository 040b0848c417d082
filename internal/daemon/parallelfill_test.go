package daemon

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"lazypull/internal/store"
	"lazypull/internal/testutil"
)

// gatedBlobs holds every blob Range request (the fills') until opened, counting those in
// flight and the most there were at once; a request for byte pass goes through.
type gatedBlobs struct {
	on       atomic.Bool
	pass     atomic.Int64 // the compressed offset whose request is not held (0: none)
	open     chan struct{}
	mu       sync.Mutex
	inFlight int
	most     int
}

func (g *gatedBlobs) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rg := r.Header.Get("Range")
		if !g.on.Load() || rg == "" || !strings.Contains(r.URL.Path, "/blobs/") || covers(rg, g.pass.Load()) {
			h.ServeHTTP(w, r)
			return
		}
		g.mu.Lock()
		g.inFlight++
		g.most = max(g.most, g.inFlight)
		g.mu.Unlock()
		<-g.open
		h.ServeHTTP(w, r)
		g.mu.Lock()
		g.inFlight--
		g.mu.Unlock()
	})
}

// covers says whether the Range header rg (bytes=A-B[,C-D...]) asks for byte off > 0.
func covers(rg string, off int64) bool {
	spec, ok := strings.CutPrefix(rg, "bytes=")
	if !ok || off <= 0 {
		return false
	}
	for r := range strings.SplitSeq(spec, ",") {
		var a, b int64
		if _, err := fmt.Sscanf(strings.TrimSpace(r), "%d-%d", &a, &b); err == nil && a <= off && off <= b {
			return true
		}
	}
	return false
}

func (g *gatedBlobs) held() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.inFlight
}

// TestParallelFetch: two images filling in parallel at once, sharing the node's 3 fill
// slots, have 3 batch requests in flight together, never more; with all 3 held by the
// registry, a read of a file the fills have not reached is served (reads take requests of
// their own, not the fills' slots); once let go, each image ends up whole, every chunk
// fetched once.
func TestParallelFetch(t *testing.T) {
	files := fillFiles()
	gate := &gatedBlobs{open: make(chan struct{})}
	img, ix := lazyImageOf(t, files)
	ref := testutil.NewRegistry(t, testutil.WithHandler(gate.wrap)).Push(t, "fill:v1", img)
	opened := false
	defer func() {
		if !opened {
			close(gate.open)
		}
	}()
	im1, st1 := openFresh(t, ref)
	im2, st2 := openFresh(t, ref)

	gate.on.Store(true)
	slots := NewFillSlots(3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	errs := make(chan error, 2)
	var fills []*filler
	for _, im := range []*Image{im1, im2} {
		fl := parallelFiller(im, slots)
		fills = append(fills, fl)
		go func() { errs <- fl.fill(ctx) }()
	}
	testutil.WaitFor(t, time.Minute, "3 fill batches in flight", func() bool { return gate.held() == 3 })

	// The file last in the blob, but for dup/a, whose chunks are d0/f00's (in a held batch:
	// the read would wait for it): no fill batch has it yet.
	l := im1.Layers[0]
	last := &l.Index.Entries[0]
	for i := range l.Index.Entries {
		if e := &l.Index.Entries[i]; e.IsRegular() && e.Size > 0 && e.Name != "dup/a" &&
			l.Index.Chunks(e)[0].Offset > l.Index.Chunks(last)[0].Offset {
			last = e
		}
	}
	gate.pass.Store(l.Index.Chunks(last)[0].Offset)
	b := make([]byte, last.Size)
	if n, err := l.ReadAt(ctx, last, b, 0); int64(n) != last.Size || !bytes.Equal(b, files[last.Name]) {
		t.Fatalf("read of %s while the fills hold every slot: %d bytes, %v", last.Name, n, err)
	}
	if h := gate.held(); h != 3 {
		t.Fatalf("%d fill batches held after the read; want the same 3", h)
	}

	close(gate.open)
	opened = true
	for range 2 {
		if err := testutil.Recv(t, errs, time.Minute, "a fill's end"); err != nil {
			t.Fatal(err)
		}
	}
	if gate.most != 3 {
		t.Errorf("at most %d fill batches in flight at once; want the node's 3 slots, no more", gate.most)
	}
	want := int64(distinctChunks(ix))
	for i, st := range []*store.Store{st1, st2} {
		if got := st.Stats().ChunksFetched; got != want {
			t.Errorf("image %d: %d chunks fetched; the image has %d distinct chunks: want each once", i+1, got, want)
		}
		if !fills[i].st.Parallel || fills[i].st.Streams != 3 {
			t.Errorf("image %d: fill stats %+v; want parallel, 3 streams", i+1, fills[i].st)
		}
	}
	reqs := im1.Registry.Stats().Requests
	readAll(t, im1, files)
	if got := im1.Registry.Stats().Requests; got != reqs {
		t.Errorf("reading every file after the fill made %d requests; want none", got-reqs)
	}
}

// parallelFiller is im's fill at line rate from the start (ParallelOn, no trickle), on the
// node's slots, in batches small enough that the test image makes many.
func parallelFiller(im *Image, slots *FillSlots) *filler {
	fast := make(chan struct{})
	close(fast)
	fl := &filler{im: im, log: slog.New(slog.DiscardHandler), fast: fast, slots: slots, batch: 128 << 10, done: make(chan struct{})}
	fl.ctx, fl.cancel = context.WithCancel(im.bg)
	return fl
}

// TestFastWatch: ParallelAuto goes at line rate once the image fetched at the fast rate over
// a second and a quarter of its bytes, not on a slow link however much it reads, and the
// watch ends with its context.
func TestFastWatch(t *testing.T) {
	const image, minRate = 400 << 20, 32 << 20 // 8 MiB a tick of 250 ms
	// watch feeds ticks of 250 ms, perTick bytes fetched before each, and returns the tick
	// at which the watch said fast (0: not within ticks).
	watch := func(perTick int64, ticks int) int {
		// The watch reads the count once as it begins, then once a tick: perTick more each
		// time (only the watch's goroutine calls it).
		calls := int64(0)
		bytes := func() int64 {
			calls++
			return (calls - 1) * perTick
		}
		tick, fast := make(chan time.Time), make(chan struct{})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		start := time.Unix(1e9, 0)
		go fastWatch(ctx, start, tick, bytes, image, minRate, fast)
		for i := 1; i <= ticks+1; i++ { // one more: the last one is looked at
			select {
			case tick <- start.Add(time.Duration(i) * fastTick):
			case <-fast:
				return i - 1
			}
		}
		return 0
	}
	if got := watch(16<<20, 40); got != 7 { // 64 MiB/s; 100 MiB read at the 7th tick
		t.Errorf("64 MiB/s: fast at tick %d; want 7, once a quarter of the image is in", got)
	}
	if got := watch(4<<20, 400); got != 0 { // 16 MiB/s, the image fetched 4 times over
		t.Errorf("16 MiB/s: fast at tick %d; want never", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ended := make(chan struct{})
	go func() {
		fastWatch(ctx, time.Now(), nil, func() int64 { return 0 }, image, minRate, make(chan struct{}))
		close(ended)
	}()
	cancel()
	testutil.Recv(t, ended, time.Minute, "the watch's end")
}

// TestBackgroundFetchParallelPolicy: with ParallelOn, a fill whose trickle would take for
// ever (1 KiB/s) hands over to the parallel fill and the image ends up whole; with
// ParallelAuto and no trickle, an image nobody reads is not fetched at all, and its fill
// ends quietly with the image.
func TestBackgroundFetchParallelPolicy(t *testing.T) {
	files := fillFiles()
	ref, ix := lazyImage(t, files)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	im, st := openFresh(t, ref)
	if err := im.BackgroundFetch(FillOptions{Rate: 1 << 10, Parallel: ParallelOn, Slots: NewFillSlots(2)}); err != nil {
		t.Fatal(err)
	}
	if err := im.WaitFill(ctx); err != nil {
		t.Fatal(err)
	}
	fs, _ := im.FillStats()
	if !fs.Done || fs.Err != "" || !fs.Parallel || fs.Streams != 2 || st.Stats().ChunksFetched != int64(distinctChunks(ix)) {
		t.Errorf("fill %+v, %d chunks fetched; want done in parallel on 2 streams, all %d chunks", fs, st.Stats().ChunksFetched, distinctChunks(ix))
	}

	log, logb := testutil.NewLogAt(t, slog.LevelInfo)
	im2, st2 := openFreshLog(t, ref, log)
	before := st2.Stats().ChunksFetched
	if err := im2.BackgroundFetch(FillOptions{NoTrickle: true, Parallel: ParallelAuto}); err != nil {
		t.Fatal(err)
	}
	im2.Close()
	if err := im2.WaitFill(ctx); err != nil {
		t.Fatal(err)
	}
	if fs, ok := im2.FillStats(); ok || st2.Stats().ChunksFetched != before {
		t.Errorf("auto fill of an image not read: %+v, %v; want none reported, nothing fetched", fs, ok)
	}
	if strings.Contains(logb.String(), "background fetch") {
		t.Errorf("a fill that never started logged at info:\n%s", logb)
	}
}

// TestParallelFetchYieldsToReads: while a read of the image is in progress, its parallel
// fill keeps one batch in flight, not its slots' worth; once the read ends, it takes them.
func TestParallelFetchYieldsToReads(t *testing.T) {
	gate := &gatedBlobs{open: make(chan struct{})}
	img, _ := lazyImageOf(t, fillFiles())
	ref := testutil.NewRegistry(t, testutil.WithHandler(gate.wrap)).Push(t, "fill:v1", img)
	defer close(gate.open)
	im, _ := openFresh(t, ref)
	gate.on.Store(true)
	im.reading.Add(1) // a read in progress
	fl := parallelFiller(im, NewFillSlots(3))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errs := make(chan error, 1)
	go func() { errs <- fl.fill(ctx) }()
	testutil.WaitFor(t, time.Minute, "a fill batch in flight", func() bool { return gate.held() >= 1 })
	if testutil.Eventually(200*time.Millisecond, func() bool { return gate.held() > 1 }) {
		t.Fatalf("%d fill batches in flight while a read is in progress; want 1", gate.held())
	}
	im.reading.Add(-1)
	testutil.WaitFor(t, time.Minute, "3 fill batches in flight once the read ended", func() bool { return gate.held() == 3 })
	cancel()
}
