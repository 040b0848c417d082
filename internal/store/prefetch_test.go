package store

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"lazypull/format"
	"lazypull/internal/testutil"
)

// TestPrefetchRanges: Prefetch fetches the chunks covering the wanted ranges, of several
// files, in one Fetch call, and nothing else; reads of those ranges then fetch nothing.
func TestPrefetchRanges(t *testing.T) {
	l, src, s := mixedStore(t, 31)
	many, few, tiny := l.files["many-chunks"], l.files["few-chunks"], l.files["tiny"]
	wants := []Want{
		{File: many, Off: 1 << 20, Len: 4096},
		{File: tiny, Off: 0, Len: tiny.Size},
		{File: few, Off: 0, Len: 10},
		{File: many, Off: 1<<20 + 100, Len: 10}, // within the first: no more chunks
	}
	if err := s.Prefetch(context.Background(), src, wants...); err != nil {
		t.Fatal(err)
	}
	calls, chunks := src.counts()
	if calls != 1 {
		t.Errorf("Prefetch: %d Fetch calls, want 1", calls)
	}
	if chunks > 5 {
		t.Errorf("Prefetch fetched %d chunks for 3 small ranges", chunks)
	}
	s.idle()
	for _, w := range wants {
		p := make([]byte, w.Len)
		if _, err := s.ReadAt(context.Background(), src, w.File, p, w.Off); err != nil {
			t.Fatal(err)
		}
		var name string
		for n, f := range l.files {
			if f.Digest == w.File.Digest {
				name = n
			}
		}
		if !bytes.Equal(p, l.data[name][w.Off:w.Off+w.Len]) {
			t.Fatalf("%s at %d: wrong bytes", name, w.Off)
		}
	}
	if c, _ := src.counts(); c != 1 {
		t.Errorf("reads of prefetched ranges fetched again (%d Fetch calls)", c)
	}
	// A range outside its file is refused, naming it.
	err := s.Prefetch(context.Background(), src, Want{File: tiny, Off: 5, Len: tiny.Size})
	if err == nil || !strings.Contains(err.Error(), "outside file") {
		t.Errorf("range outside the file: %v", err)
	}
}

// TestReadWaitsForPrefetch: a read of a chunk that a Prefetch is fetching waits for that
// fetch, and the source is asked for each chunk once.
func TestReadWaitsForPrefetch(t *testing.T) {
	l, src, s := mixedStore(t, 32)
	gate := make(chan struct{})
	src.gate = gate
	many := l.files["many-chunks"]
	errc := make(chan error, 1)
	go func() { errc <- s.Prefetch(context.Background(), src, Want{File: many, Off: 0, Len: many.Size}) }()
	// Wait until the Prefetch's Fetch is in the source (held by the gate).
	testutil.Recv(t, src.fetching, 10*time.Second, "the Prefetch's Fetch")
	var wg sync.WaitGroup
	results := make([][]byte, 3) // the file is 3 MiB and a bit
	for i := range results {
		wg.Go(func() {
			p := make([]byte, 64<<10)
			if _, err := s.ReadAt(context.Background(), src, many, p, int64(i)<<20); err != nil {
				t.Error(err)
			}
			results[i] = p
		})
	}
	// The readers join the flights: each read's first chunk has a flight it joined (a read
	// plans all its chunks at once). The store signals nothing then: its state is polled.
	testutil.WaitFor(t, 10*time.Second, "the readers to join the Prefetch's flights", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		for i := range results {
			off, joined := int64(i)<<20, false
			for _, fl := range s.flights {
				if fl.c.FileOffset <= off && off < fl.c.FileOffset+fl.c.Size && fl.joined > 0 {
					joined = true
				}
			}
			if !joined {
				return false
			}
		}
		return true
	})
	close(gate)
	wg.Wait()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	for i, p := range results {
		if !bytes.Equal(p, l.data["many-chunks"][i<<20:i<<20+64<<10]) {
			t.Errorf("read %d: wrong bytes", i)
		}
	}
	src.mu.Lock()
	defer src.mu.Unlock()
	if src.calls != 1 {
		t.Errorf("%d Fetch calls; the reads should have waited for the Prefetch's", src.calls)
	}
	for d, n := range src.fetched {
		if n != 1 {
			t.Errorf("chunk %s fetched %d times", d, n)
		}
	}
}

// TestReadAhead: ReadAhead fetches the chunks of its range once, in one Fetch call, and
// stores them; a read that joins its flights is served their verified bytes, a read after
// it fetches nothing; a read-ahead of the rest makes the file complete, and one of a
// complete file fetches nothing. A range outside the file and a corrupt frame are errors.
func TestReadAhead(t *testing.T) {
	l, src, s := mixedStore(t, 33)
	gate := make(chan struct{})
	src.gate = gate
	ctx := context.Background()
	many, want := l.files["many-chunks"], l.data["many-chunks"]
	if len(many.Chunks) < 4 {
		t.Fatalf("many-chunks has %d chunks, want at least 4", len(many.Chunks))
	}
	half := many.Size / 2
	errc := make(chan error, 1)
	go func() { errc <- s.ReadAhead(ctx, src, many, 0, half) }()
	testutil.Recv(t, src.fetching, 10*time.Second, "the read-ahead's Fetch")
	got := make([]byte, 64<<10)
	readc := make(chan error, 1)
	go func() { _, err := s.ReadAt(ctx, src, many, got, 1000); readc <- err }()
	testutil.WaitFor(t, 10*time.Second, "the reader to join the read-ahead's flight", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, fl := range s.flights {
			if fl.joined > 0 {
				return true
			}
		}
		return false
	})
	close(gate)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if err := <-readc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want[1000:1000+len(got)]) {
		t.Error("the read that joined the read-ahead got wrong bytes")
	}
	calls, first := src.counts()
	if calls != 1 {
		t.Errorf("%d Fetch calls; the read should have waited for the read-ahead's", calls)
	}
	if first == len(many.Chunks) {
		t.Errorf("the read-ahead of half the file fetched all its %d chunks", first)
	}
	s.idle()
	p := make([]byte, half)
	if _, err := s.ReadAt(ctx, src, many, p, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, want[:half]) {
		t.Error("a read of the read-ahead's range: wrong bytes")
	}
	if c, _ := src.counts(); c != 1 {
		t.Errorf("a read of the read-ahead's range fetched again (%d Fetch calls)", c)
	}
	if _, ok := s.LocalPath(many); ok {
		t.Error("the file is complete after a read-ahead of half of it")
	}

	if err := s.ReadAhead(ctx, src, many, half, many.Size-half); err != nil {
		t.Fatal(err)
	}
	s.idle()
	if _, ok := s.LocalPath(many); !ok {
		t.Error("the file is not complete after a read-ahead of the rest")
	}
	calls, chunks := src.counts()
	if chunks != len(many.Chunks) {
		t.Errorf("%d chunks fetched for a file of %d", chunks, len(many.Chunks))
	}
	if err := s.ReadAhead(ctx, src, many, 0, many.Size); err != nil {
		t.Fatal(err)
	}
	if c, _ := src.counts(); c != calls {
		t.Error("a read-ahead of a complete file fetched")
	}
	if err := s.ReadAhead(ctx, src, many, many.Size-10, 11); err == nil || !strings.Contains(err.Error(), "outside file") {
		t.Errorf("range outside the file: %v", err)
	}

	few := l.files["few-chunks"]
	src.mu.Lock()
	src.corrupt = func(format.Chunk) bool { return true }
	src.mu.Unlock()
	if err := s.ReadAhead(ctx, src, few, 0, few.Size); !errors.Is(err, ErrCorrupt) {
		t.Errorf("read-ahead of corrupt frames: %v, want ErrCorrupt", err)
	}
}
