package store

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"lazypull/format"
	"lazypull/internal/testutil"
)

// shuffledSource delivers each Fetch's chunks in a random order.
type shuffledSource struct {
	*fakeSource
	mu sync.Mutex
	r  *rand.Rand
}

func (s *shuffledSource) Fetch(ctx context.Context, chunks []format.Chunk, fn func(c format.Chunk, frame []byte) error) error {
	chunks = slices.Clone(chunks)
	s.mu.Lock()
	s.r.Shuffle(len(chunks), func(i, j int) { chunks[i], chunks[j] = chunks[j], chunks[i] })
	s.mu.Unlock()
	return s.fakeSource.Fetch(ctx, chunks, fn)
}

// checkComplete checks that f, what, is complete in s once its writes are done, its local
// file holding data.
func checkComplete(t *testing.T, s *Store, f File, data []byte, what string) {
	t.Helper()
	s.idle()
	p, ok := s.LocalPath(f)
	if !ok {
		t.Fatalf("%s: not complete", what)
	}
	if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("%s: the complete file differs (%v)", what, err)
	}
}

func tmpFiles(t *testing.T, dir string) []string {
	t.Helper()
	return testutil.DirNames(t, filepath.Join(dir, tmpName))
}

// Fill writes each multi-chunk file straight into one temp file, chunks arriving in any
// order: no object per chunk (nothing to drop), only the files' objects, nothing left in tmp/.
func TestFillDirectRandomOrder(t *testing.T) {
	l := buildLayer(t, mixedFiles(41)...)
	src := &shuffledSource{fakeSource: newSource(l), r: rand.New(rand.NewPCG(4, 1))}
	dir := t.TempDir()
	s := openStore(t, dir)
	if err := s.Fill(context.Background(), src, l.all()...); err != nil {
		t.Fatal(err)
	}
	s.idle()
	want := map[string]bool{}
	var bytesWant int64
	for _, name := range l.names {
		f := l.files[name]
		p, ok := s.LocalPath(f)
		if !ok {
			t.Fatalf("%s: not local after Fill", name)
		}
		if b, err := os.ReadFile(p); err != nil || !bytes.Equal(b, l.data[name]) {
			t.Fatalf("%s: local copy differs (%v)", name, err)
		}
		if !want[filepath.Base(p)] {
			want[filepath.Base(p)] = true
			bytesWant += f.Size
		}
	}
	st := s.Stats()
	if st.DroppedParts != 0 {
		t.Errorf("%d chunk objects written and dropped; want none", st.DroppedParts)
	}
	for _, p := range dirFiles(t, filepath.Join(dir, objectsName)) {
		if !want[filepath.Base(p)] {
			t.Errorf("object %s is no file's: a chunk object", p)
		}
	}
	if st.Bytes != bytesWant {
		t.Errorf("store holds %d bytes, want the files' %d", st.Bytes, bytesWant)
	}
	if left := tmpFiles(t, dir); len(left) != 0 {
		t.Errorf("left in tmp/: %v", left)
	}
	if r, err := s.Verify(context.Background()); err != nil || r.Bad != 0 || r.BadChunks != 0 {
		t.Fatalf("verify: %+v, %v", r, err)
	}
}

// Chunks read ahead into a file's filling are served from it before the file is complete,
// to readers running while the rest arrives; the chunks that plain reads store as objects
// of their own are copied in when the file completes, and dropped.
func TestReadsDuringFill(t *testing.T) {
	l := buildLayer(t, mixedFiles(42)...)
	f, data := l.files["many-chunks"], l.data["many-chunks"]
	src := &shuffledSource{fakeSource: newSource(l), r: rand.New(rand.NewPCG(4, 2))}
	dir := t.TempDir()
	s := openStore(t, dir)
	ctx := context.Background()
	half := f.Size / 2
	if err := s.ReadAhead(ctx, src, f, 0, half); err != nil {
		t.Fatal(err)
	}
	s.idle()
	if _, ok := s.LocalPath(f); ok {
		t.Fatal("complete after reading half ahead")
	}
	if left := tmpFiles(t, dir); len(left) != 1 {
		t.Fatalf("tmp/ holds %v; want the one partly filled file", left)
	}
	_, fetched := src.counts()
	// The first half is local: reading it fetches nothing.
	p := make([]byte, half-100)
	if _, err := s.ReadAt(ctx, src, f, p, 50); err != nil || !bytes.Equal(p, data[50:half-50]) {
		t.Fatalf("read from the filling: %v", err)
	}
	if _, k := src.counts(); k != fetched {
		t.Fatalf("reading what the filling holds fetched %d chunks", k-fetched)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	wg.Go(func() { errs <- s.ReadAhead(ctx, src, f, half, f.Size-half) })
	for g := range 4 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 9))
			for range 50 {
				off := r.Int64N(f.Size)
				b := make([]byte, min(r.Int64N(300_000)+1, f.Size-off))
				if _, err := s.ReadAt(ctx, src, f, b, off); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(b, data[off:off+int64(len(b))]) {
					t.Errorf("read at %d+%d during the fill: wrong bytes", off, len(b))
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	checkComplete(t, s, f, data, "the file after every chunk was read")
	if objs := dirFiles(t, filepath.Join(dir, objectsName)); len(objs) != 1 {
		t.Errorf("objects after the fill completed: %v; want the file alone", objs)
	}
	if left := tmpFiles(t, dir); len(left) != 0 {
		t.Errorf("left in tmp/: %v", left)
	}
}

// A partly filled file does not outlive the store: Close removes it, Open removes one a
// crash left, and the file is fetched again, right.
func TestRestartMidFill(t *testing.T) {
	l := buildLayer(t, mixedFiles(43)...)
	f, data := l.files["many-chunks"], l.data["many-chunks"]
	src := newSource(l)
	dir := t.TempDir()
	s := openStore(t, dir)
	ctx := context.Background()
	if err := s.ReadAhead(ctx, src, f, 0, f.Size/2); err != nil {
		t.Fatal(err)
	}
	s.idle()
	left := tmpFiles(t, dir)
	if len(left) != 1 {
		t.Fatalf("tmp/ holds %v; want the one partly filled file", left)
	}
	partial, err := os.ReadFile(filepath.Join(dir, tmpName, left[0]))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if left := tmpFiles(t, dir); len(left) != 0 {
		t.Fatalf("Close left %v in tmp/", left)
	}
	// What a kill -9 leaves: the partly filled temp file.
	if err := os.WriteFile(filepath.Join(dir, tmpName, left[0]), partial, 0o600); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir)
	if left := tmpFiles(t, dir); len(left) != 0 {
		t.Fatalf("Open left %v in tmp/", left)
	}
	if st := s.Stats(); st.Objects != 0 || st.Bytes != 0 {
		t.Fatalf("reopened store holds %+v; want nothing", st)
	}
	_, before := src.counts()
	if got := readAll(t, s, src, f, 1<<20); !bytes.Equal(got, data) {
		t.Fatal("read after restart differs")
	}
	if _, k := src.counts(); k <= before {
		t.Fatal("nothing fetched again after the restart")
	}
}

// A partly filled file is evicted like an object (it counts the bytes it holds), its temp
// file goes, and its chunks are fetched again when read.
func TestEvictPartlyFilled(t *testing.T) {
	l := buildLayer(t, mixedFiles(44)...)
	f, data := l.files["many-chunks"], l.data["many-chunks"]
	src := newSource(l)
	dir := t.TempDir()
	const bound = 1 << 20
	s := openStore(t, dir, WithMaxBytes(bound))
	ctx := context.Background()
	if err := s.ReadAhead(ctx, src, f, 0, 600_000); err != nil {
		t.Fatal(err)
	}
	s.idle()
	st := s.Stats()
	if st.Bytes < 600_000 || st.Objects != 0 {
		t.Fatalf("after reading ahead: %+v; want the filling's bytes counted, no object", st)
	}
	for _, name := range []string{"few-chunks", "one-chunk", "text"} {
		if got := readAll(t, s, src, l.files[name], 64<<10); !bytes.Equal(got, l.data[name]) {
			t.Fatalf("%s differs", name)
		}
	}
	s.idle()
	s.mu.Lock()
	fills := len(s.fills)
	s.mu.Unlock()
	if fills != 0 {
		t.Fatal("the partly filled file was not evicted")
	}
	if left := tmpFiles(t, dir); len(left) != 0 {
		t.Fatalf("eviction left %v in tmp/", left)
	}
	if st := s.Stats(); st.Bytes > bound || st.Evictions == 0 {
		t.Fatalf("stats %+v: want evictions, within %d bytes", st, bound)
	}
	p := make([]byte, 600_000)
	if _, err := s.ReadAt(ctx, src, f, p, 0); err != nil || !bytes.Equal(p, data[:600_000]) {
		t.Fatalf("read after eviction: %v", err)
	}
}

// Chunks that a file being filled holds are found by other files (dedup by chunk digest),
// and a file whose chunks lie in another's filling completes from it without a fetch.
func TestDedupAcrossFillings(t *testing.T) {
	a := testutil.RandBytes(45, 3<<20)
	b := append(slices.Clone(a[:2<<20]), testutil.RandBytes(46, 500_000)...)
	la := buildLayer(t, tfile{"a", a})
	lb := buildLayer(t, tfile{"b", b})
	fa, fb := la.files["a"], lb.files["b"]
	shared := chunkSet(fa)
	var nShared int
	for _, c := range fb.Chunks {
		if shared[c.Digest] {
			nShared++
		}
	}
	if nShared == 0 {
		t.Fatal("test files share no chunk")
	}
	dir := t.TempDir()
	s := openStore(t, dir)
	ctx := context.Background()
	srcA, srcB := newSource(la), newSource(lb)
	if err := s.ReadAhead(ctx, srcA, fa, 0, 2<<20); err != nil {
		t.Fatal(err)
	}
	s.idle()
	if _, ok := s.LocalPath(fa); ok {
		t.Fatal("a complete after reading part of it ahead")
	}
	if err := s.Fill(ctx, srcB, fb); err != nil {
		t.Fatal(err)
	}
	if _, k := srcB.counts(); k != len(fb.Chunks)-nShared {
		t.Errorf("b fetched %d chunks; want the %d it does not share with a's filling", k, len(fb.Chunks)-nShared)
	}
	checkComplete(t, s, fb, b, "b after Fill")
	if err := s.Fill(ctx, srcA, fa); err != nil {
		t.Fatal(err)
	}
	s.idle()
	if got := readAll(t, s, srcA, fa, 1<<20); !bytes.Equal(got, a) {
		t.Fatal("a differs")
	}
	if r, err := s.Verify(ctx); err != nil || r.Bad != 0 || r.BadChunks != 0 {
		t.Fatalf("verify: %+v, %v", r, err)
	}
}

// fixedCutter cuts content into chunks of n bytes.
type fixedCutter int

func (c fixedCutter) Cut(data []byte, final bool) int {
	if len(data) >= int(c) {
		return int(c)
	}
	if final {
		return len(data)
	}
	return 0
}

func (c fixedCutter) MaxChunk() int { return int(c) }

// The same content cut into other chunks (another layer's index) while its file is being
// filled: those chunks are stored as objects of their own, never refused, and both views
// of the file read right and complete.
func TestFillOtherChunking(t *testing.T) {
	data := testutil.RandBytes(47, 2<<20)
	la := buildLayer(t, tfile{"f", data})
	var blob bytes.Buffer
	tarball := testutil.Tar(t, testutil.File("f", data))
	if _, err := format.Write(context.Background(), &blob, bytes.NewReader(tarball), format.WithCutter(fixedCutter(100_000))); err != nil {
		t.Fatal(err)
	}
	lb := openLayer(t, blob.Bytes(), []tfile{{"f", data}})
	fa, fb := la.files["f"], lb.files["f"]
	if fa.Digest != fb.Digest || slices.Equal(fa.Chunks, fb.Chunks) {
		t.Fatal("want the same file cut two ways")
	}
	s := openStore(t, t.TempDir())
	ctx := context.Background()
	srcA, srcB := newSource(la), newSource(lb)
	if err := s.ReadAhead(ctx, srcA, fa, 0, 1<<20); err != nil {
		t.Fatal(err)
	}
	s.idle()
	if err := s.ReadAhead(ctx, srcB, fb, 0, fb.Size); err != nil {
		t.Fatal(err)
	}
	s.idle()
	if st := s.Stats(); st.WriteErrors != 0 {
		t.Fatalf("%d write errors storing the other chunking's chunks", st.WriteErrors)
	}
	if got := readAll(t, s, srcB, fb, 300_000); !bytes.Equal(got, data) {
		t.Fatal("the other chunking reads wrong")
	}
	if err := s.Fill(ctx, srcA, fa); err != nil {
		t.Fatal(err)
	}
	checkComplete(t, s, fb, data, "the file after Fill")
	if got := readAll(t, s, srcA, fa, 1<<20); !bytes.Equal(got, data) {
		t.Fatal("reads wrong once complete")
	}
}
