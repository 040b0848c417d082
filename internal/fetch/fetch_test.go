package fetch

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"lazypull/internal/testutil"
)

func TestReadAtIsOneRangeRequest(t *testing.T) {
	f := newFake("lib/app")
	blob := testutil.RandBytes(1, 1<<20)
	d := f.addBlob(blob)
	_, host := serve(t, f)
	reg, _ := newReg(t, host, "lib/app")
	b := reg.Blob(d, int64(len(blob)))

	p := make([]byte, 4096)
	n, err := b.ReadAt(p, 12345)
	if err != nil || n != len(p) {
		t.Fatalf("ReadAt: %d, %v", n, err)
	}
	if !bytes.Equal(p, blob[12345:12345+4096]) {
		t.Fatal("wrong bytes")
	}
	if g, h, o := f.blobGets.Load(), f.heads.Load(), f.others.Load(); g != 1 || h != 0 || o != 0 {
		t.Fatalf("requests: %d blob GETs, %d HEADs, %d others; want exactly one GET", g, h, o)
	}
	if got := f.rangeLog(); len(got) != 1 || got[0] != "bytes=12345-16440" {
		t.Fatalf("Range headers %q", got)
	}
	if s := reg.Stats(); s.Requests != 1 || s.Bytes != 4096 || s.Delivered != 4096 || s.Errors != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestReadAtSemantics(t *testing.T) {
	f, blob, d, reg, _ := blobRegistry(t, 2, 1000)
	b := reg.Blob(d, int64(len(blob)))

	p := make([]byte, 100)
	n, err := b.ReadAt(p, 950)
	if n != 50 || err != io.EOF || !bytes.Equal(p[:n], blob[950:]) {
		t.Fatalf("ReadAt across the end: %d, %v", n, err)
	}
	if n, err := b.ReadAt(p, 1000); n != 0 || err != io.EOF {
		t.Fatalf("ReadAt at the end: %d, %v", n, err)
	}
	if n, err := b.ReadAt(p, 5000); n != 0 || err != io.EOF {
		t.Fatalf("ReadAt past the end: %d, %v", n, err)
	}
	if _, err := b.ReadAt(p, -1); err == nil {
		t.Fatal("ReadAt at -1: no error")
	}
	if n, err := b.ReadAt(nil, 10); n != 0 || err != nil {
		t.Fatalf("empty ReadAt: %d, %v", n, err)
	}
	if got := f.blobGets.Load(); got != 1 {
		t.Fatalf("%d requests; only the first read needs one", got)
	}
	all, err := b.ReadAll(t.Context())
	if err != nil || !bytes.Equal(all, blob) {
		t.Fatalf("ReadAll: %v", err)
	}
	// A blob whose bytes do not match its digest.
	bad := reg.Blob(sha([]byte("something else")), int64(len(blob)))
	f.mu.Lock()
	f.blobs[bad.Digest().String()] = blob
	f.mu.Unlock()
	if _, err := bad.ReadAll(t.Context()); err == nil || !strings.Contains(err.Error(), "digest") {
		t.Fatalf("ReadAll of a wrong blob: %v", err)
	}
}

// spread returns n ranges of random sizes between lo and hi bytes with holes of up to gap
// bytes between them, like the chunk frames of files with their header frames between.
func spread(seed uint64, n int, lo, hi, gap int64) ([]Range, int64) {
	rnd := rand.New(rand.NewPCG(seed, 7))
	var out []Range
	var off int64
	for range n {
		off += rnd.Int64N(gap + 1)
		l := lo + rnd.Int64N(hi-lo+1)
		out = append(out, Range{off, l})
		off += l
	}
	return out, off
}

func TestFetchMultiRange(t *testing.T) {
	f := newFake("r")
	ranges, end := spread(3, 300, 2<<10, 64<<10, 200<<10)
	blob := testutil.RandBytes(3, int(end))
	d := f.addBlob(blob)
	_, host := serve(t, f)
	reg, _ := newReg(t, host, "r")

	// Shuffled, as callers may ask.
	asked := append([]Range(nil), ranges...)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(asked), func(i, j int) { asked[i], asked[j] = asked[j], asked[i] })
	_, needed := collectChecked(t, reg.Blob(d, end), blob, asked, ranges)
	s := reg.Stats()
	// 300 ranges, at most 64 to a request and 16 MiB.
	if s.Requests > 8 || s.Requests < 5 {
		t.Errorf("%d requests for 300 ranges", s.Requests)
	}
	if float64(s.Bytes) > 1.2*float64(needed) {
		t.Errorf("fetched %d bytes for %d needed (%.2fx)", s.Bytes, needed, float64(s.Bytes)/float64(needed))
	}
	for _, h := range f.rangeLog() {
		if !strings.Contains(h, ",") {
			t.Errorf("single-range request %q; the server takes several", h)
		}
	}
	t.Logf("%d requests, %d bytes fetched for %d needed (%.3fx)", s.Requests, s.Bytes, needed, float64(s.Bytes)/float64(needed))
}

// The bytes fetched stay within 1.2 times those needed for chunk layouts like a layer's:
// small files (a chunk each) and big ones (many chunks), header frames between files, and
// a reader wanting some files whole and skipping others, with and without multi-range.
func TestFetchBytesBar(t *testing.T) {
	for _, multi := range []bool{true, false} {
		name := "multi-range"
		if !multi {
			name = "single-range"
		}
		t.Run(name, func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(4, 4))
			var off int64
			var wanted []Range
			for range 1000 {
				off += 150 + rnd.Int64N(900) // tar header frame
				nchunks := 1
				if rnd.IntN(10) == 0 {
					nchunks = 1 + rnd.IntN(8)
				}
				want := rnd.IntN(3) == 0
				for range nchunks {
					l := 64 + rnd.Int64N(40<<10)
					if nchunks > 1 {
						l = 16<<10 + rnd.Int64N(100<<10)
					}
					c := Range{off, l}
					if want {
						wanted = append(wanted, c)
					}
					off += l
				}
			}
			f := newFake("r")
			blob := testutil.RandBytes(5, int(off))
			d := f.addBlob(blob)
			if !multi {
				f.hook = func(_ int, w http.ResponseWriter, r *http.Request) bool {
					if strings.Contains(r.Header.Get("Range"), ",") {
						w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
						return true
					}
					return false
				}
			}
			_, host := serve(t, f)
			reg, _ := newReg(t, host, "r")
			if !multi {
				// Learn the refusal first, so it costs nothing below.
				if _, err := collect(t, reg.Blob(d, off), []Range{{0, 1}, {1 << 20, 1}}); err != nil {
					t.Fatal(err)
				}
			}
			before := reg.Stats()
			_, needed := collectChecked(t, reg.Blob(d, off), blob, wanted, wanted)
			s := reg.Stats()
			fetched, reqs := s.Bytes-before.Bytes, s.Requests-before.Requests
			ratio := float64(fetched) / float64(needed)
			t.Logf("%d ranges, %d requests, %d bytes fetched for %d needed (%.3fx)", len(wanted), reqs, fetched, needed, ratio)
			if ratio > 1.2 {
				t.Errorf("fetched %.3fx the bytes needed", ratio)
			}
			if reqs >= int64(len(wanted)) {
				t.Errorf("%d requests for %d ranges: nothing coalesced", reqs, len(wanted))
			}
		})
	}
}

func TestFetchMergesTouchingRanges(t *testing.T) {
	f, blob, d, reg, _ := blobRegistry(t, 6, 1<<20)
	ranges := []Range{{1000, 100}, {1100, 200}, {1300, 50}, {1400, 100}, {1000, 90}, {1050, 100}, {500000, 10}}
	collectChecked(t, reg.Blob(d, int64(len(blob))), blob, ranges, ranges)
	// Touching and overlapping ranges merge, a 50-byte hole is read through, the far
	// range stays apart; duplicates are asked for once.
	if h := f.rangeLog(); len(h) != 1 || h[0] != "bytes=1000-1499,500000-500009" {
		t.Fatalf("Range headers %q", h)
	}
}

func TestFetchCallsFnPerRange(t *testing.T) {
	f, blob, d, reg, _ := blobRegistry(t, 7, 10000)
	b := reg.Blob(d, int64(len(blob)))

	calls := map[Range]int{}
	err := b.Fetch(t.Context(), []Range{{10, 10}, {10, 10}, {0, 0}, {9990, 10}}, func(r Range, data []byte) error {
		calls[r]++
		if !bytes.Equal(data, blob[r.Off:r.End()]) {
			t.Errorf("range %v: wrong bytes", r)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if calls[Range{10, 10}] != 2 || calls[Range{0, 0}] != 1 || calls[Range{9990, 10}] != 1 {
		t.Fatalf("calls %v", calls)
	}

	// fn's error stops Fetch.
	stop := errors.New("stop")
	err = b.Fetch(t.Context(), []Range{{0, 10}, {5000, 10}}, func(Range, []byte) error { return stop })
	if !errors.Is(err, stop) {
		t.Fatalf("fn error: %v", err)
	}
	// Ranges outside the blob are refused before anything is sent.
	n := f.blobGets.Load()
	for _, r := range []Range{{-1, 5}, {9999, 2}, {0, -1}, {1 << 62, 1 << 62}} {
		if err := b.Fetch(t.Context(), []Range{r}, func(Range, []byte) error { return nil }); err == nil {
			t.Errorf("range %v: no error", r)
		}
	}
	if f.blobGets.Load() != n {
		t.Fatal("a bad range was sent")
	}
}

// N callers asking for the same ranges at once cause one request.
func TestSingleflight(t *testing.T) {
	f, blob, d, reg, _ := blobRegistry(t, 8, 1<<20)
	gate := make(chan struct{})
	f.hook = func(int, http.ResponseWriter, *http.Request) bool { <-gate; return false }

	ranges := []Range{{100, 5000}, {200000, 3000}, {900000, 100000}}
	const n = 20
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			// Each caller has a Blob of its own: sharing is by digest.
			got, err := collect(t, reg.Blob(d, int64(len(blob))), ranges)
			errs[i] = err
			checkRanges(t, blob, ranges, got)
		})
	}
	// Wait until every caller waits on the flights, then let the one request through
	// (joining a flight signals nothing: the registry's count is polled).
	testutil.WaitFor(t, 10*time.Second, "every caller to wait on the flights", func() bool {
		reg.mu.Lock()
		defer reg.mu.Unlock()
		for _, fl := range reg.flights {
			if fl.refs != n {
				return false
			}
		}
		return len(reg.flights) == len(ranges)
	})
	close(gate)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := f.blobGets.Load(); got != 1 {
		t.Fatalf("%d requests for %d identical concurrent Fetch calls", got, n)
	}
	if s := reg.Stats(); s.Delivered != 5000+3000+100000 {
		t.Fatalf("delivered %d", s.Delivered)
	}
	if len(reg.flights) != 0 {
		t.Fatalf("%d flights left", len(reg.flights))
	}
}

// The caller that started a request going away does not fail the others waiting on it.
func TestSingleflightLeaderLeaves(t *testing.T) {
	f, blob, d, reg, _ := blobRegistry(t, 9, 100000)
	gate := make(chan struct{})
	f.hook = func(int, http.ResponseWriter, *http.Request) bool { <-gate; return false }
	b := reg.Blob(d, int64(len(blob)))
	rg := []Range{{10, 1000}}

	lctx, cancel := context.WithCancel(t.Context())
	leader := make(chan error)
	go func() {
		leader <- b.Fetch(lctx, rg, func(Range, []byte) error { return nil })
	}()
	testutil.Recv(t, f.blobReqs, 10*time.Second, "the blob request")
	waiter := make(chan error)
	go func() {
		got, err := collect(t, b, rg)
		checkRanges(t, blob, rg, got)
		waiter <- err
	}()
	testutil.WaitFor(t, 10*time.Second, "the waiter to join the flight", func() bool {
		reg.mu.Lock()
		defer reg.mu.Unlock()
		for _, fl := range reg.flights {
			return fl.refs == 2
		}
		return false
	})
	cancel()
	if err := <-leader; !errors.Is(err, context.Canceled) {
		t.Fatalf("leader: %v", err)
	}
	close(gate)
	if err := <-waiter; err != nil {
		t.Fatalf("waiter: %v", err)
	}
	if got := f.blobGets.Load(); got != 1 {
		t.Fatalf("%d requests", got)
	}
}

// When every caller has gone, the request is cancelled and a later call starts afresh.
func TestAbandonedRequestIsCancelled(t *testing.T) {
	f, blob, d, reg, _ := blobRegistry(t, 10, 100000)
	cancelled := make(chan struct{}, 1)
	f.hook = func(n int, w http.ResponseWriter, r *http.Request) bool {
		if n == 1 {
			<-r.Context().Done()
			cancelled <- struct{}{}
			return true
		}
		return false
	}
	b := reg.Blob(d, int64(len(blob)))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error)
	go func() {
		_, err := b.ReadAtContext(ctx, make([]byte, 10), 0)
		done <- err
	}()
	testutil.Recv(t, f.blobReqs, 10*time.Second, "the blob request")
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("ReadAt: %v", err)
	}
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the abandoned request went on")
	}
	p := make([]byte, 10)
	if _, err := b.ReadAt(p, 0); err != nil || !bytes.Equal(p, blob[:10]) {
		t.Fatalf("ReadAt after: %v", err)
	}
}

// TestConcurrencyBound runs in a synctest bubble, the registry in process: its delay is
// fake time, so requests overlap without the test waiting on a clock.
func TestConcurrencyBound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake("r")
		blob := testutil.RandBytes(11, 1<<20)
		d := f.addBlob(blob)
		f.delay = 20 * time.Millisecond
		reg, _ := newReg(t, "registry.example", "r", WithTransport(inProcess(f)), WithMaxConcurrency(3), WithCoalescing(0, 1<<20))
		// Single ranges only, so one Fetch makes many requests.
		f.hook = func(_ int, w http.ResponseWriter, r *http.Request) bool {
			if strings.Contains(r.Header.Get("Range"), ",") {
				w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
				return true
			}
			return false
		}
		var ranges []Range
		for i := range 30 {
			ranges = append(ranges, Range{int64(i) * 30000, 1000})
		}
		var wg sync.WaitGroup
		for i := range 4 {
			wg.Go(func() {
				got, err := collect(t, reg.Blob(d, int64(len(blob))), ranges[i*7:i*7+9])
				if err != nil {
					t.Error(err)
				}
				checkRanges(t, blob, ranges[i*7:i*7+9], got)
			})
		}
		wg.Wait()
		if m := f.maxFlight.Load(); m > 3 || m < 2 {
			t.Fatalf("at most %d requests in flight at once; want 2 or 3 (bound 3)", m)
		}
	})
}

// TestFetchAsksInCallersOrder: one multi-range request whose Range header lists the spans
// in the order the caller asked for them (a prefetch profile's access order), not by
// offset; every range still gets its own bytes, and close ranges still merge into a span.
func TestFetchAsksInCallersOrder(t *testing.T) {
	f, blob, d, reg, _ := blobRegistry(t, 3, 1<<20)
	b := reg.Blob(d, int64(len(blob)))
	ranges := []Range{{900000, 1000}, {500000, 1000}, {100, 100}, {500000 + 1000, 500}, {700000, 10}}
	got := map[Range][]byte{}
	if err := b.Fetch(context.Background(), ranges, func(r Range, p []byte) error {
		got[r] = bytes.Clone(p)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, r := range ranges {
		if !bytes.Equal(got[r], blob[r.Off:r.End()]) {
			t.Errorf("range %v: wrong bytes", r)
		}
	}
	want := "bytes=900000-900999,500000-501499,100-199,700000-700009"
	if h := f.rangeLog(); len(h) != 1 || h[0] != want {
		t.Errorf("Range headers %q; want one, %q", h, want)
	}
}
