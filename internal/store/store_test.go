package store

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"lazypull/format"
	"lazypull/internal/testutil"
)

// checkRandomReads reads random ranges of random files and compares them to the originals.
func checkRandomReads(t *testing.T, s *Store, src Source, l *testLayer, seed uint64, n int) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 1))
	for range n {
		name := l.names[r.IntN(len(l.names))]
		f, want := l.files[name], l.data[name]
		off := int64(0)
		if f.Size > 0 {
			off = r.Int64N(f.Size + 10) // past the end too
		}
		p := make([]byte, r.IntN(300_000)+1)
		k, err := s.ReadAt(context.Background(), src, f, p, off)
		var exp []byte
		if off < int64(len(want)) {
			exp = want[off:min(int64(len(want)), off+int64(len(p)))]
		}
		if k != len(exp) || !bytes.Equal(p[:k], exp) {
			t.Fatalf("%s at %d+%d: read %d bytes (%v), want %d; equal=%v", name, off, len(p), k, err, len(exp), bytes.Equal(p[:k], exp))
		}
		switch {
		case k < len(p) && err != io.EOF:
			t.Fatalf("%s at %d+%d: short read of %d with error %v, want io.EOF", name, off, len(p), k, err)
		case k == len(p) && err != nil:
			t.Fatalf("%s at %d+%d: %v", name, off, len(p), err)
		}
	}
}

func TestReadAtRandomRanges(t *testing.T) {
	l, src, s := mixedStore(t, 1)
	checkRandomReads(t, s, src, l, 1, 400)
	// Every file read whole: all chunks are local now, and reading again fetches nothing.
	for _, name := range l.names {
		if got := readAll(t, s, src, l.files[name], 70_000); !bytes.Equal(got, l.data[name]) {
			t.Fatalf("%s: whole read differs", name)
		}
	}
	calls, chunks := src.counts()
	checkRandomReads(t, s, src, l, 2, 400)
	if c, k := src.counts(); c != calls || k != chunks {
		t.Fatalf("second reads fetched: calls %d -> %d, chunks %d -> %d", calls, c, chunks, k)
	}
	// Each chunk was fetched once, however often it was read.
	for d, n := range src.fetched {
		if n != 1 {
			t.Errorf("chunk %s fetched %d times", d, n)
		}
	}
	// Files with content were assembled in the background: passthrough finds them.
	s.idle()
	for _, name := range l.names {
		f := l.files[name]
		p, ok := s.LocalPath(f)
		if f.Size == 0 {
			continue
		}
		if !ok {
			t.Fatalf("%s: no local copy after reading it all", name)
		}
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(b, l.data[name]) {
			t.Fatalf("%s: local copy differs (%v)", name, err)
		}
	}
	// Assembled files hold their chunks: no chunk object is left beside them.
	st := s.Stats()
	if st.Assembled == 0 || st.DroppedParts == 0 {
		t.Errorf("stats %+v: want assemblies and dropped parts", st)
	}
	var want int64
	for _, name := range l.names {
		want += int64(len(l.data[name]))
	}
	if st.Bytes != want {
		t.Errorf("store holds %d bytes, want exactly the files' %d", st.Bytes, want)
	}
	if st.Hits == 0 || st.Misses == 0 || st.ChunksFetched == 0 || st.BytesFetched == 0 {
		t.Errorf("stats %+v: want hits, misses and fetches counted", st)
	}
}

func TestReadAtEdges(t *testing.T) {
	l, src, s := mixedStore(t, 3)
	ctx := context.Background()
	f := l.files["few-chunks"]
	if _, err := s.ReadAt(ctx, src, f, make([]byte, 1), -1); err == nil {
		t.Error("negative offset: no error")
	}
	if n, err := s.ReadAt(ctx, src, f, make([]byte, 1), f.Size); n != 0 || err != io.EOF {
		t.Errorf("at the end: %d, %v", n, err)
	}
	if n, err := s.ReadAt(ctx, src, l.files["empty"], make([]byte, 1), 0); n != 0 || err != io.EOF {
		t.Errorf("empty file: %d, %v", n, err)
	}
	if n, err := s.ReadAt(ctx, src, f, nil, 0); n != 0 || err != nil {
		t.Errorf("empty buffer: %d, %v", n, err)
	}
	if c, _ := src.counts(); c != 0 {
		t.Errorf("edge reads fetched %d times", c)
	}
	// A file whose chunks do not tile it is refused, not served. Checked before any of its
	// content is local: once the store holds the whole file (its digest checked), a read
	// is served from that, whatever the chunk list says.
	b := f.Chunks[1].FileOffset
	p := make([]byte, 20)
	bad := f
	bad.Chunks = append([]format.Chunk(nil), f.Chunks...)
	bad.Chunks[1].FileOffset++
	if _, err := s.ReadAt(ctx, src, bad, p, b-10); err == nil {
		t.Error("inconsistent chunk list: no error")
	}
	if err := s.Fill(ctx, src, bad); err == nil {
		t.Error("Fill of an inconsistent chunk list: no error")
	}
	if c, _ := src.counts(); c != 0 {
		t.Errorf("reads of an inconsistent chunk list fetched %d times", c)
	}
	// A read across a chunk boundary fetches both chunks in one call.
	if _, err := s.ReadAt(ctx, src, f, p, b-10); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, l.data["few-chunks"][b-10:b+10]) {
		t.Error("read across a boundary differs")
	}
	if c, k := src.counts(); c != 1 || k != 2 {
		t.Errorf("read across a boundary: %d calls for %d chunks, want 1 for 2", c, k)
	}
}

// Two files sharing most chunks (an edited copy): the second one's shared chunks are
// found in the first, never fetched, even from another layer.
func TestSharedChunksNotFetched(t *testing.T) {
	base := testutil.RandBytes(7, 4<<20)
	edited := append(bytes.Clone(base[:3<<20]), testutil.RandBytes(8, 200_000)...)
	edited = append(edited, base[3<<20+50_000:]...)
	l1 := buildLayer(t, tfile{"v1/app", base})
	l2 := buildLayer(t, tfile{"v2/app", edited})
	f1, f2 := l1.files["v1/app"], l2.files["v2/app"]
	inV1 := chunkSet(f1)
	newChunks := map[format.Digest]bool{}
	for _, c := range f2.Chunks {
		if !inV1[c.Digest] {
			newChunks[c.Digest] = true
		}
	}
	if len(newChunks) == 0 || len(newChunks) > len(f2.Chunks)/2 {
		t.Fatalf("test data: %d of %d chunks new; want a few", len(newChunks), len(f2.Chunks))
	}

	for _, mode := range []string{"complete", "chunks"} {
		t.Run(mode, func(t *testing.T) {
			s := openStore(t, t.TempDir())
			src1, src2 := newSource(l1), newSource(l2)
			ctx := context.Background()
			if mode == "complete" {
				// v1 assembled: v2's shared chunks lie inside it.
				if err := s.Fill(ctx, src1, f1); err != nil {
					t.Fatal(err)
				}
			} else {
				// v1 read in parts only: v2's shared chunks are chunk objects.
				for _, c := range f1.Chunks[:len(f1.Chunks)-1] {
					if _, err := s.ReadAt(ctx, src1, f1, make([]byte, 1), c.FileOffset); err != nil {
						t.Fatal(err)
					}
				}
			}
			if got := readAll(t, s, src2, f2, 128<<10); !bytes.Equal(got, edited) {
				t.Fatal("v2 read differs")
			}
			for d := range src2.fetched {
				if inV1[d] && (mode == "complete" || d != f1.Chunks[len(f1.Chunks)-1].Digest) {
					t.Errorf("chunk %s of v2 fetched, but v1 holds it", d)
				}
			}
			if mode == "complete" && len(src2.fetched) != len(newChunks) {
				t.Errorf("fetched %d chunks for v2, want its %d new ones", len(src2.fetched), len(newChunks))
			}
			// v2 is assembled from v1's chunks and its own: complete without more fetches.
			if err := s.Fill(ctx, src2, f2); err != nil {
				t.Fatal(err)
			}
			p, ok := s.LocalPath(f2)
			if !ok {
				t.Fatal("v2 not complete after Fill")
			}
			if b, _ := os.ReadFile(p); !bytes.Equal(b, edited) {
				t.Fatal("v2's local copy differs")
			}
		})
	}
}

// An identical file in two layers (two images) is one object, fetched once.
func TestIdenticalFileStoredOnce(t *testing.T) {
	shared := testutil.RandBytes(11, 1<<20)
	small := []byte("the same small config file\n")
	l1 := buildLayer(t, tfile{"a/lib.so", shared}, tfile{"a/conf", small}, tfile{"a/other", testutil.RandBytes(12, 5000)})
	l2 := buildLayer(t, tfile{"b/x/lib-copy.so", shared}, tfile{"b/conf", small})
	s := openStore(t, t.TempDir())
	src1, src2 := newSource(l1), newSource(l2)
	ctx := context.Background()
	if err := s.Fill(ctx, src1, l1.files["a/lib.so"], l1.files["a/conf"]); err != nil {
		t.Fatal(err)
	}
	if c, _ := src1.counts(); c != 1 {
		t.Errorf("Fill of two files: %d Fetch calls, want 1", c)
	}
	before := s.Stats()
	for _, name := range []string{"b/x/lib-copy.so", "b/conf"} {
		if got := readAll(t, s, src2, l2.files[name], 1<<20); !bytes.Equal(got, l2.data[name]) {
			t.Fatalf("%s differs", name)
		}
	}
	if err := s.Fill(ctx, src2, l2.files["b/x/lib-copy.so"], l2.files["b/conf"]); err != nil {
		t.Fatal(err)
	}
	if c, _ := src2.counts(); c != 0 {
		t.Errorf("second layer fetched %d times", c)
	}
	after := s.Stats()
	if after.Objects != before.Objects || after.Bytes != before.Bytes || after.Bytes != int64(len(shared)+len(small)) {
		t.Errorf("objects %d -> %d, bytes %d -> %d: want one copy of each file", before.Objects, after.Objects, before.Bytes, after.Bytes)
	}
	p1, _ := s.LocalPath(l1.files["a/lib.so"])
	p2, _ := s.LocalPath(l2.files["b/x/lib-copy.so"])
	if p1 != p2 || p1 == "" {
		t.Errorf("local paths %q and %q: want the same object", p1, p2)
	}
}

// gatedBig is a layer of one file, "big", of size random bytes (from seed), its source,
// which holds every Fetch until its gate is closed, and a fresh store.
func gatedBig(t *testing.T, seed uint64, size int) (*testLayer, File, *fakeSource, *Store) {
	t.Helper()
	l := buildLayer(t, tfile{"big", testutil.RandBytes(seed, size)})
	src := newSource(l)
	src.gate = make(chan struct{})
	return l, l.files["big"], src, openStore(t, t.TempDir())
}

// Twenty readers of one chunk at once: one fetch.
func TestConcurrentReadersOneFetch(t *testing.T) {
	l, f, src, s := gatedBig(t, 13, 2<<20)
	c := f.Chunks[2]
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Go(func() {
			p := make([]byte, 1000)
			off := c.FileOffset + int64(i)*100
			if _, err := s.ReadAt(context.Background(), src, f, p, off); err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(p, l.data["big"][off:off+1000]) {
				errs <- errors.New("data differs")
			}
		})
	}
	// Let every reader reach the flight before the one fetch proceeds.
	waitJoined(t, s, 19, "19 readers to join the flight")
	close(src.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if calls, chunks := src.counts(); calls != 1 || chunks != 1 {
		t.Errorf("%d Fetch calls for %d chunks, want 1 and 1", calls, chunks)
	}
	if st := s.Stats(); st.Misses != 20 {
		t.Errorf("%d misses, want 20", st.Misses)
	}
}

// waitJoined waits until n reads have joined the store's one flight (what, for the
// failure). The store signals nothing when a reader joins a flight: its count is polled.
func waitJoined(t *testing.T, s *Store, n int, what string) {
	t.Helper()
	testutil.WaitFor(t, 10*time.Second, what, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, fl := range s.flights {
			return fl.joined == n
		}
		return false
	})
}

// A reader that gives up does not fail the others waiting for the same chunk.
func TestCanceledReaderDoesNotFailOthers(t *testing.T) {
	l, f, src, s := gatedBig(t, 14, 1<<20)
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		_, err := s.ReadAt(ctx, src, f, make([]byte, 10), 0)
		first <- err
	}()
	testutil.Recv(t, src.fetching, 10*time.Second, "the first reader's Fetch")
	second := make(chan error, 1)
	go func() {
		p := make([]byte, 10)
		_, err := s.ReadAt(context.Background(), src, f, p, 0)
		if err == nil && !bytes.Equal(p, l.data["big"][:10]) {
			err = errors.New("data differs")
		}
		second <- err
	}()
	waitJoined(t, s, 1, "the second reader to join the flight")
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled reader: %v", err)
	}
	close(src.gate) // later fetches go through
	if err := <-second; err != nil {
		t.Fatalf("second reader: %v", err)
	}
}

func TestCorruptFrame(t *testing.T) {
	l := buildLayer(t, mixedFiles(5)...)
	f := l.files["many-chunks"]
	bad := f.Chunks[3]
	src := newSource(l)
	src.corrupt = func(c format.Chunk) bool { return c.Digest == bad.Digest }
	dir := t.TempDir()
	s := openStore(t, dir)
	ctx := context.Background()
	p := make([]byte, 100)
	_, err := s.ReadAt(ctx, src, f, p, bad.FileOffset+5)
	if err == nil || !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), bad.Digest.String()) {
		t.Fatalf("corrupt frame: error %v; want ErrCorrupt naming chunk %s", err, bad.Digest)
	}
	if st := s.Stats(); st.Objects != 0 || st.Corrupt != 1 {
		t.Errorf("after a corrupt frame: %+v; want nothing stored, one corrupt", st)
	}
	if files := dirFiles(t, filepath.Join(dir, objectsName)); len(files) != 0 {
		t.Errorf("objects on disk after a corrupt frame: %v", files)
	}
	// Corruption in a read of several chunks: the good ones are stored, the bad one not.
	_, err = s.ReadAt(ctx, src, f, make([]byte, bad.Size+bad.FileOffset-f.Chunks[2].FileOffset+10), f.Chunks[2].FileOffset)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("want ErrCorrupt, got %v", err)
	}
	s.mu.Lock()
	_, hasBad := s.objects[bad.Digest]
	s.mu.Unlock()
	if hasBad {
		t.Fatal("corrupt chunk stored")
	}
	if err := s.Fill(ctx, src, f); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Fill with a corrupt frame: %v", err)
	}
	if _, ok := s.LocalPath(f); ok {
		t.Fatal("file complete although a chunk is corrupt")
	}
	// A good source then serves it all.
	good := newSource(l)
	if got := readAll(t, s, good, f, 1<<20); !bytes.Equal(got, l.data["many-chunks"]) {
		t.Fatal("read differs after a good fetch")
	}
	if r, err := s.Verify(ctx); err != nil || r.Bad != 0 || r.BadChunks != 0 {
		t.Fatalf("verify: %+v, %v", r, err)
	}
}

// A source that corrupts a frame and then delivers it right (another mirror) is fine.
type retryingSource struct{ *fakeSource }

func (r retryingSource) Fetch(ctx context.Context, chunks []format.Chunk, fn func(format.Chunk, []byte) error) error {
	return r.fakeSource.Fetch(ctx, chunks, func(c format.Chunk, frame []byte) error {
		bad := bytes.Clone(frame)
		bad[0] ^= 1
		if err := fn(c, bad); !errors.Is(err, ErrCorrupt) {
			return errors.New("want ErrCorrupt for a damaged frame")
		}
		return fn(c, frame)
	})
}

func TestSourceRetriesCorruptFrame(t *testing.T) {
	l := buildLayer(t, tfile{"f", testutil.RandBytes(15, 500_000)})
	s := openStore(t, t.TempDir())
	if got := readAll(t, s, retryingSource{newSource(l)}, l.files["f"], 64<<10); !bytes.Equal(got, l.data["f"]) {
		t.Fatal("read differs")
	}
}

// A source that returns without delivering a chunk yields an error, not a hang.
type lazySource struct{}

func (lazySource) Fetch(context.Context, []format.Chunk, func(format.Chunk, []byte) error) error {
	return nil
}

func TestSourceDeliversNothing(t *testing.T) {
	l := buildLayer(t, tfile{"f", testutil.RandBytes(16, 100_000)})
	s := openStore(t, t.TempDir())
	_, err := s.ReadAt(context.Background(), lazySource{}, l.files["f"], make([]byte, 10), 0)
	if err == nil || !strings.Contains(err.Error(), "returned without it") {
		t.Fatalf("got %v", err)
	}
}

func TestVersionMismatchRefused(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, versionName), []byte("lazypull store 7\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(dir)
	if err == nil {
		t.Fatal("store of version 7 opened")
	}
	for _, want := range []string{dir, "version 7", "version 1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, versionName), []byte("something else\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("garbage version file: %v", err)
	}
	// A directory with objects/ but no version file is not taken over.
	other := t.TempDir()
	if err := os.Mkdir(filepath.Join(other, objectsName), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(other); err == nil || !strings.Contains(err.Error(), versionName) {
		t.Fatalf("objects/ without a version file: %v", err)
	}
}

func TestSecondOpenLocked(t *testing.T) {
	dir := t.TempDir()
	openStore(t, dir)
	_, err := Open(dir)
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second Open: %v", err)
	}
}

func TestOptionsChecked(t *testing.T) {
	for _, o := range []Option{WithMaxBytes(-1), WithLogger(nil)} {
		if _, err := Open(t.TempDir(), o); err == nil {
			t.Error("bad option accepted")
		}
	}
	if _, err := Open(""); err == nil {
		t.Error("empty dir accepted")
	}
}

func TestClosed(t *testing.T) {
	l := buildLayer(t, tfile{"f", []byte("x")})
	s := openStore(t, t.TempDir())
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadAt(context.Background(), newSource(l), l.files["f"], make([]byte, 1), 0); !errors.Is(err, ErrClosed) {
		t.Errorf("ReadAt after Close: %v", err)
	}
	if err := s.Fill(context.Background(), newSource(l), l.files["f"]); !errors.Is(err, ErrClosed) {
		t.Errorf("Fill after Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestFillAndOpenLocal(t *testing.T) {
	l, src, s := mixedStore(t, 21)
	all := l.all()
	if err := s.Fill(context.Background(), src, all...); err != nil {
		t.Fatal(err)
	}
	if c, _ := src.counts(); c != 1 {
		t.Errorf("Fill of a layer: %d Fetch calls, want 1", c)
	}
	for _, name := range l.names {
		r, err := s.OpenLocal(l.files[name])
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		b, err := io.ReadAll(r)
		_ = r.Close()
		if err != nil || !bytes.Equal(b, l.data[name]) {
			t.Fatalf("%s: local copy differs (%v)", name, err)
		}
	}
	// Fill again: nothing to do.
	if err := s.Fill(context.Background(), src, all...); err != nil {
		t.Fatal(err)
	}
	if c, _ := src.counts(); c != 1 {
		t.Errorf("second Fill fetched")
	}
	// Absent: fs.ErrNotExist.
	other := buildLayer(t, tfile{"o", []byte("not here")})
	if _, err := s.OpenLocal(other.files["o"]); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("OpenLocal of an absent file: %v", err)
	}
}

// An evicted file stays readable through a descriptor opened before (passthrough).
func TestOpenFileSurvivesEviction(t *testing.T) {
	l := buildLayer(t, tfile{"f", testutil.RandBytes(22, 200_000)})
	s := openStore(t, t.TempDir())
	f := l.files["f"]
	if err := s.Fill(context.Background(), newSource(l), f); err != nil {
		t.Fatal(err)
	}
	r, err := s.OpenLocal(f)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if res, err := s.Prune(context.Background(), 0); err != nil || res.Objects != 1 {
		t.Fatalf("prune: %+v, %v", res, err)
	}
	if _, ok := s.LocalPath(f); ok {
		t.Fatal("still local after prune")
	}
	b, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(b, l.data["f"]) {
		t.Fatalf("open descriptor after eviction: %v", err)
	}
}

func TestEvictionBound(t *testing.T) {
	l := buildLayer(t, mixedFiles(31)...)
	const max = 600 << 10
	lg, _ := testutil.NewLog(t)
	s := openStore(t, t.TempDir(), WithMaxBytes(max), WithLogger(lg))
	src := newSource(l)
	// A pinned file stays, whatever else is read.
	pinned := l.files["few-chunks"]
	lease := s.NewLease()
	lease.Pin(pinned)
	if err := s.Fill(context.Background(), src, pinned); err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		checkRandomReads(t, s, src, l, uint64(i), 1)
		if i%10 == 0 {
			s.idle()
		}
		st := s.Stats()
		if st.Bytes > max+st.PinnedBytes {
			t.Fatalf("store holds %d bytes, over the bound %d + pinned %d", st.Bytes, max, st.PinnedBytes)
		}
	}
	s.idle()
	if _, ok := s.LocalPath(pinned); !ok {
		t.Fatal("pinned file evicted")
	}
	st := s.Stats()
	if st.Evictions == 0 {
		t.Fatalf("no evictions with a tiny bound: %+v", st)
	}
	if st.PinnedBytes != pinned.Size {
		t.Errorf("pinned bytes %d, want %d", st.PinnedBytes, pinned.Size)
	}
	// Released, it goes at once: the store is over its bound.
	lease.Release()
	if st := s.Stats(); st.Bytes > max {
		t.Errorf("after release: %d bytes, over %d", st.Bytes, max)
	}
	if r, err := s.Verify(context.Background()); err != nil || r.Bad+r.BadChunks != 0 {
		t.Fatalf("verify: %+v %v", r, err)
	}
}

func TestPrune(t *testing.T) {
	l, src, s := mixedStore(t, 41)
	all := l.all()
	if err := s.Fill(context.Background(), src, all...); err != nil {
		t.Fatal(err)
	}
	keep := l.files["many-chunks"]
	lease := s.NewLease()
	defer lease.Release()
	lease.Pin(keep)
	lease.Pin(keep) // counted
	lease.Unpin(keep)
	before := s.Stats()
	res, err := s.Prune(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	after := s.Stats()
	if after.Bytes != keep.Size || after.Objects != 1 {
		t.Errorf("after prune: %+v; want only the pinned file", after)
	}
	if res.Bytes != before.Bytes-after.Bytes || int64(res.Objects) != int64(before.Objects-after.Objects) {
		t.Errorf("prune result %+v vs %d -> %d bytes", res, before.Bytes, after.Bytes)
	}
	if _, err := s.Prune(context.Background(), -1); err == nil {
		t.Error("negative prune target accepted")
	}
	// Everything is still readable: what was pruned is fetched again.
	checkRandomReads(t, s, src, l, 9, 100)
}

func TestCollectors(t *testing.T) {
	l := buildLayer(t, tfile{"f", testutil.RandBytes(51, 100_000)})
	s := openStore(t, t.TempDir())
	_ = readAll(t, s, newSource(l), l.files["f"], 4096)
	reg := prometheus.NewRegistry()
	for _, c := range s.Collectors() {
		if err := reg.Register(c); err != nil {
			t.Fatal(err)
		}
	}
	// The read's file is put together in the background: compare the metrics with the
	// stats of a moment when nothing changed between the two.
	var got map[string]float64
	var st Stats
	testutil.WaitFor(t, 10*time.Second, "the metrics and the stats taken with nothing changing between them", func() bool {
		before := s.Stats()
		got = gather(t, reg)
		st = s.Stats()
		return before == st
	})
	for name, want := range map[string]float64{
		"lazypull_store_objects":              float64(st.Objects),
		"lazypull_store_bytes":                float64(st.Bytes),
		"lazypull_store_hits_total":           float64(st.Hits),
		"lazypull_store_misses_total":         float64(st.Misses),
		"lazypull_store_fetched_chunks_total": float64(st.ChunksFetched),
		"lazypull_store_fetched_bytes_total":  float64(st.BytesFetched),
		"lazypull_store_evictions_total":      0,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}
	if got["lazypull_store_misses_total"] == 0 {
		t.Error("no misses counted")
	}
}

// gather returns the value of each metric reg gathers (the first of each family).
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		m := mf.GetMetric()[0]
		if m.GetCounter() != nil {
			got[mf.GetName()] = m.GetCounter().GetValue()
		} else {
			got[mf.GetName()] = m.GetGauge().GetValue()
		}
	}
	return got
}

func TestMeta(t *testing.T) {
	s := openStore(t, t.TempDir())
	b := []byte(`{"schemaVersion":2}`)
	d, err := s.PutMeta(b)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.Meta(d); err != nil || string(got) != string(b) {
		t.Fatalf("Meta = %q, %v", got, err)
	}
	if _, err := s.Meta(format.Digest{1}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("absent metadata: %v, want ErrNotExist", err)
	}
	// a kept blob that went bad is an error, and is dropped
	p := filepath.Join(s.Dir(), metaName, d.String()[len("sha256:"):])
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Meta(d); !errors.Is(err, ErrCorrupt) {
		t.Errorf("corrupt metadata: %v, want ErrCorrupt", err)
	}
	if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("corrupt metadata left in place: %v", err)
	}
}

// Open makes every two-hex directory of objects/, so that no commit makes one (and
// fsyncs objects/) under the store's lock; a directory removed by hand while the store
// runs is made again by the commit that needs it.
func TestObjectDirs(t *testing.T) {
	l, src, s := mixedStore(t, 23)
	root := filepath.Join(s.dir, objectsName)
	subs, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(subs) != 256 {
		t.Fatalf("a fresh store has %d directories in objects/, want 256", len(subs))
	}
	for _, d := range subs {
		if err := os.Remove(filepath.Join(root, d.Name())); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Fill(context.Background(), src, l.all()...); err != nil {
		t.Fatal(err)
	}
	for _, name := range l.names {
		b, err := os.ReadFile(s.objectPath(l.files[name].Digest))
		if err != nil || !bytes.Equal(b, l.data[name]) {
			t.Fatalf("%s: object differs (%v)", name, err)
		}
	}
}
