package daemon

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/format"
	"lazypull/internal/fetch"
	"lazypull/internal/store"
	"lazypull/internal/testutil"
	"lazypull/internal/testutil/layertest"
)

// fakeClock drives a limiter without waiting: sleeping advances the clock.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }
func (c *fakeClock) sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.t = c.t.Add(d)
	return nil
}

func fakeLimiter(t *testing.T, rate, burst int64) (*limiter, *fakeClock) {
	t.Helper()
	l, err := newLimiter(rate, burst)
	if err != nil {
		t.Fatal(err)
	}
	c := &fakeClock{t: time.Unix(1_000_000, 0)}
	l.now, l.sleep = c.now, c.sleep
	return l, c
}

// TestLimiterBound: over any run, a limiter grants at most burst + rate * elapsed, and
// no less than that minus one request (it does not throttle more than asked).
func TestLimiterBound(t *testing.T) {
	const rate, burst = 1 << 20, 256 << 10
	for _, size := range []int64{1, 4096, 100_000, burst, 3 * burst} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			l, c := fakeLimiter(t, rate, burst)
			start := c.t
			var granted int64
			for range 500 {
				if err := l.Wait(context.Background(), size); err != nil {
					t.Fatal(err)
				}
				granted += min(size, burst)
				el := c.t.Sub(start).Seconds()
				if bound := float64(burst) + rate*el; float64(granted) > bound+1 {
					t.Fatalf("granted %d bytes in %.3f s: more than burst + rate*t = %.0f", granted, el, bound)
				}
			}
			// Waits shorter than the limiter's 1 ms grain are rounded up: no lower bound for
			// requests that small.
			el := c.t.Sub(start).Seconds()
			if low := float64(burst) + rate*el - float64(min(size, burst)); size*1000 >= rate && float64(granted) < low {
				t.Errorf("granted %d bytes in %.3f s: throttled below the rate (%.0f)", granted, el, low)
			}
		})
	}
	l, _ := fakeLimiter(t, rate, burst)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.Wait(ctx, burst); err != nil {
		t.Errorf("a full bucket made a cancelled Wait fail: %v", err)
	}
	if err := l.Wait(ctx, burst); err != context.Canceled {
		t.Errorf("Wait on an empty bucket with a cancelled context: %v", err)
	}
	if _, err := newLimiter(0, burst); err == nil {
		t.Error("a rate of 0 accepted")
	}
}

// lazyImage pushes a one-layer lazypull image to a fresh in-process registry and returns
// its reference and the layer's index.
func lazyImage(t *testing.T, files map[string][]byte) (string, *format.Index) {
	t.Helper()
	img, ix := lazyImageOf(t, files)
	return testutil.NewRegistry(t).Push(t, "fill:v1", img), ix
}

// lazyImageOf makes a one-layer lazypull image of the files, and returns it with the
// layer's index.
func lazyImageOf(t *testing.T, files map[string][]byte) (v1.Image, *format.Index) {
	t.Helper()
	return lazyImageWith(t, files, nil)
}

// lazyImageWith is lazyImageOf with the layer's index changed by edit (nil: none) and
// written back into the blob and its annotations.
func lazyImageWith(t *testing.T, files map[string][]byte, edit func(ix *format.Index)) (v1.Image, *format.Index) {
	t.Helper()
	var entries []testutil.Entry
	for _, n := range slices.Sorted(maps.Keys(files)) {
		entries = append(entries, testutil.File(n, files[n]))
	}
	return lazyTarOn(t, empty.Image, testutil.Tar(t, entries...), edit)
}

// lazyTarOn is img with a lazypull layer of the tar tr on top (its index changed by
// edit, nil: none), and the layer's index.
func lazyTarOn(t *testing.T, img v1.Image, tr []byte, edit func(ix *format.Index)) (v1.Image, *format.Index) {
	t.Helper()
	blob, ann, res := layertest.FromTar(t, tr, edit)
	l, err := format.Open(bytes.NewReader(blob), int64(len(blob)), ann)
	if err != nil {
		t.Fatal(err)
	}
	diffID, err := v1.NewHash(res.DiffID)
	if err != nil {
		t.Fatal(err)
	}
	return withLayer(t, img, diffIDLayer{static.NewLayer(blob, types.MediaType(format.MediaTypeLayer)), diffID}, ann), l.Index
}

// withLayer is img with the lazypull layer l (annotations ann) on top, as an OCI image.
func withLayer(t *testing.T, img v1.Image, l v1.Layer, ann map[string]string) v1.Image {
	t.Helper()
	img, err := mutate.Append(img, mutate.Addendum{Layer: l, Annotations: ann, MediaType: types.MediaType(format.MediaTypeLayer)})
	if err != nil {
		t.Fatal(err)
	}
	return mutate.MediaType(img, types.OCIManifestSchema1)
}

// diffIDLayer is a layer with the diff ID of its tar (a static layer says its digest).
type diffIDLayer struct {
	v1.Layer
	diffID v1.Hash
}

func (l diffIDLayer) DiffID() (v1.Hash, error) { return l.diffID, nil }

func fillFiles() map[string][]byte {
	rng := rand.New(rand.NewPCG(1, 2))
	files := map[string][]byte{}
	for i := range 40 {
		n := 100 + rng.IntN(40_000)
		if i%10 == 0 {
			n = 1<<20 + rng.IntN(1<<20) // several chunks
		}
		files[fmt.Sprintf("d%d/f%02d", i%3, i)] = testutil.RandBytes(uint64(i), n)
	}
	files["dup/a"] = files["d0/f00"] // same content: its chunks once
	return files
}

// distinctChunks counts the different chunks of the layer's files.
func distinctChunks(ix *format.Index) int {
	seen := map[format.Digest]bool{}
	for i := range ix.Entries {
		for _, c := range ix.Chunks(&ix.Entries[i]) {
			seen[c.Digest] = true
		}
	}
	return len(seen)
}

// openFresh opens the image ref on a store of its own; both close when the test ends.
func openFresh(t *testing.T, ref string) (*Image, *store.Store) {
	t.Helper()
	return openFreshWith(t, ref, OpenOptions{})
}

// openIn opens the store at dir and ref's image on it; the caller closes both.
func openIn(t *testing.T, dir, ref string) (*store.Store, *Image) {
	t.Helper()
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := OpenImage(context.Background(), st, ref, OpenOptions{Client: testClient(t)})
	if err != nil {
		t.Fatal(err)
	}
	return st, im
}

// openFreshLog is openFresh with the image logging to log.
func openFreshLog(t *testing.T, ref string, log *slog.Logger) (*Image, *store.Store) {
	t.Helper()
	return openFreshWith(t, ref, OpenOptions{Log: log})
}

// openFreshWith is openFresh with the options o (its Client is the test's).
func openFreshWith(t *testing.T, ref string, o OpenOptions) (*Image, *store.Store) {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	o.Client = testClient(t)
	im, err := OpenImage(context.Background(), st, ref, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(im.Close)
	return im, st
}

// readAll reads every regular file of the image through its layers, as the mount does,
// and checks the bytes.
func readAll(t *testing.T, im *Image, files map[string][]byte) {
	t.Helper()
	for _, l := range im.Layers {
		for i := range l.Index.Entries {
			e := &l.Index.Entries[i]
			if !e.IsRegular() {
				continue
			}
			b := make([]byte, e.Size)
			if n, err := l.ReadAt(context.Background(), e, b, 0); err != nil && err != io.EOF || int64(n) != e.Size {
				t.Fatalf("read %s: %d bytes, %v", e.Name, n, err)
			}
			if !bytes.Equal(b, files[e.Name]) {
				t.Fatalf("read %s: wrong bytes", e.Name)
			}
		}
	}
}

// TestBackgroundFetch: after a read fetched part of the image on demand, the background
// fill fetches the rest, every chunk once (nothing fetched twice, shared content once),
// and reading every file afterwards fetches nothing: no chunk, no request.
func TestBackgroundFetch(t *testing.T) {
	files := fillFiles()
	ref, ix := lazyImage(t, files)
	// No neighbour fetch: the fill's ranges are the whole layer but for what the read took.
	im, st := openFreshWith(t, ref, OpenOptions{NoSpeculation: true})
	l := im.Layers[0]
	e, _ := l.Index.Lookup("d1/f10") // a multi-chunk file, read in part
	if _, err := l.ReadAt(context.Background(), e, make([]byte, 1000), 300_000); err != nil {
		t.Fatal(err)
	}
	onDemand := st.Stats().ChunksFetched
	if onDemand == 0 {
		t.Fatal("the read fetched nothing")
	}

	log, logb := testutil.NewLogAt(t, slog.LevelInfo)
	if err := im.BackgroundFetch(FillOptions{Rate: 1 << 30, Log: log}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := im.WaitFill(ctx); err != nil {
		t.Fatal(err)
	}
	fs, ok := im.FillStats()
	if !ok || !fs.Done || fs.Err != "" {
		t.Fatalf("fill stats %+v\n%s", fs, logb)
	}
	after := st.Stats()
	if want := int64(distinctChunks(ix)); after.ChunksFetched != want {
		t.Errorf("%d chunks fetched in all (%d on demand, %d by the fill); the image has %d distinct chunks: want each once",
			after.ChunksFetched, onDemand, fs.Chunks, want)
	}
	if fs.Chunks != after.ChunksFetched-onDemand {
		t.Errorf("fill counted %d chunks, the store %d", fs.Chunks, after.ChunksFetched-onDemand)
	}
	// The fill's chunks lie next to each other in the blob: a few large requests.
	if fs.Requests > 4 {
		t.Errorf("the fill of %d bytes took %d requests; want a few", fs.Bytes, fs.Requests)
	}
	for _, want := range []string{"background fetch started", "background fetch done"} {
		if !strings.Contains(logb.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logb)
		}
	}

	reqs := im.Registry.Stats().Requests
	readAll(t, im, files)
	if got := st.Stats().ChunksFetched; got != after.ChunksFetched {
		t.Errorf("reading every file after the fill fetched %d chunks; want none", got-after.ChunksFetched)
	}
	if got := im.Registry.Stats().Requests; got != reqs {
		t.Errorf("reading every file after the fill made %d requests; want none", got-reqs)
	}
}

// TestBackgroundFetchRate: the fill takes what it fetches from its limiter, so the time
// it needs on the limiter's clock is at least (bytes - burst) / rate.
func TestBackgroundFetchRate(t *testing.T) {
	files := fillFiles()
	ref, _ := lazyImage(t, files)
	im, _ := openFresh(t, ref)
	const rate = 512 << 10
	lim, c := fakeLimiter(t, rate, fillBatch)
	start := c.t
	fl := &filler{im: im, lim: lim, log: slog.New(slog.DiscardHandler), done: make(chan struct{})}
	if err := fl.fetchMissing(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	el := c.t.Sub(start).Seconds()
	if fl.st.Bytes < fillBatch+fillBatch/2 {
		t.Fatalf("fill fetched %d bytes: too few to test the bound", fl.st.Bytes)
	}
	if min := float64(fl.st.Bytes-fillBatch) / rate; el < min {
		t.Errorf("fill fetched %d bytes in %.2f s of the limiter's clock; at %d bytes/s it needs %.2f s", fl.st.Bytes, el, rate, min)
	}
}

// TestBackgroundFetchStops: a fill ends when its image is closed, or when told to stop
// (the snapshotter, once the image's last layer is unmounted), without error.
func TestBackgroundFetchStops(t *testing.T) {
	ref, _ := lazyImage(t, fillFiles())
	for _, how := range []string{"close", "stop"} {
		t.Run(how, func(t *testing.T) {
			im, _ := openFresh(t, ref)
			im.reading.Add(1) // a read that never ends: the fill waits for it
			if err := im.BackgroundFetch(FillOptions{Log: slog.New(slog.DiscardHandler)}); err != nil {
				t.Fatal(err)
			}
			if how == "close" {
				im.Close()
			} else {
				im.StopBackgroundFetch()
			}
			if err := im.WaitFill(context.Background()); err != nil {
				t.Fatal(err)
			}
			if fs, _ := im.FillStats(); fs.Chunks != 0 || !fs.Done || fs.Err == "" {
				t.Errorf("a fill behind a read in progress, then stopped: %+v; want done, stopped, nothing fetched", fs)
			}
		})
	}
}

// testClient is a registry client for a test, plain HTTP, with opts.
func testClient(t testing.TB, opts ...fetch.Option) *fetch.Client {
	t.Helper()
	c, err := fetch.NewClient(append([]fetch.Option{fetch.WithPlainHTTP()}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}
