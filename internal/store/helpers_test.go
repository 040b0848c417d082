package store

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"lazypull/format"
	"lazypull/internal/testutil"
)

type tfile struct {
	name string
	data []byte
}

// testLayer is a real lazypull layer, in memory, with the files it holds.
type testLayer struct {
	blob  []byte
	ix    *format.Index
	files map[string]File
	data  map[string][]byte
	names []string
}

// chunkSet returns the digests of f's chunks.
func chunkSet(f File) map[format.Digest]bool {
	set := map[format.Digest]bool{}
	for _, c := range f.Chunks {
		set[c.Digest] = true
	}
	return set
}

// all returns the layer's files, in its order.
func (l *testLayer) all() []File {
	var all []File
	for _, name := range l.names {
		all = append(all, l.files[name])
	}
	return all
}

func buildLayer(t testing.TB, files ...tfile) *testLayer {
	t.Helper()
	var entries []testutil.Entry
	for _, f := range files {
		entries = append(entries, testutil.File(f.name, f.data))
	}
	var blob bytes.Buffer
	if _, err := format.Write(context.Background(), &blob, bytes.NewReader(testutil.Tar(t, entries...))); err != nil {
		t.Fatal(err)
	}
	return openLayer(t, blob.Bytes(), files)
}

func openLayer(t testing.TB, blob []byte, files []tfile) *testLayer {
	t.Helper()
	l, err := format.Open(bytes.NewReader(blob), int64(len(blob)), nil)
	if err != nil {
		t.Fatal(err)
	}
	tl := &testLayer{blob: blob, ix: l.Index, files: map[string]File{}, data: map[string][]byte{}}
	for _, f := range files {
		e, ok := l.Index.Lookup(f.name)
		if !ok {
			t.Fatalf("%s not in layer", f.name)
		}
		sf, err := FileOf(l.Index, e)
		if err != nil {
			t.Fatal(err)
		}
		if _, dup := tl.files[f.name]; !dup {
			tl.names = append(tl.names, f.name)
		}
		tl.files[f.name] = sf
		tl.data[f.name] = f.data
	}
	return tl
}

// mixedFiles is a set of files of every size class: empty, tiny, one chunk, a few chunks,
// many chunks, and repeated content (identical chunks within one file).
func mixedFiles(seed uint64) []tfile {
	return []tfile{
		{"empty", nil},
		{"tiny", []byte("hello, store\n")},
		{"one-chunk", testutil.RandBytes(seed+1, 20_000)},
		{"exactly-32k", testutil.RandBytes(seed+2, 32<<10)},
		{"few-chunks", testutil.RandBytes(seed+3, 300_000)},
		{"many-chunks", testutil.RandBytes(seed+4, 3<<20+12345)},
		{"zeros", make([]byte, 2<<20)},
		{"text", bytes.Repeat([]byte("lazy pull, lazy pull, "), 50_000)},
	}
}

// fakeSource serves chunks from a layer blob and counts what it is asked for. Frames are
// handed to fn in a buffer that is scribbled over after fn returns, so a store that keeps
// the frame past the call reads garbage.
type fakeSource struct {
	blob []byte

	mu      sync.Mutex
	calls   int
	chunks  int
	fetched map[format.Digest]int
	// corrupt, when set, says which chunks to damage; gate, when set, is waited on before
	// each Fetch delivers anything.
	corrupt func(c format.Chunk) bool
	gate    chan struct{}
	// fetching gets a value each time Fetch is called (before the gate), for a test to
	// wait on; calls beyond its buffer are not signalled.
	fetching chan struct{}
}

func newSource(l *testLayer) *fakeSource {
	return &fakeSource{blob: l.blob, fetched: map[format.Digest]int{}, fetching: make(chan struct{}, 100)}
}

func (s *fakeSource) Fetch(ctx context.Context, chunks []format.Chunk, fn func(c format.Chunk, frame []byte) error) error {
	s.mu.Lock()
	s.calls++
	s.chunks += len(chunks)
	for _, c := range chunks {
		s.fetched[c.Digest]++
	}
	gate, corrupt := s.gate, s.corrupt
	s.mu.Unlock()
	select {
	case s.fetching <- struct{}{}:
	default:
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for _, c := range chunks {
		if c.Offset < 0 || c.Offset+c.CompSize > int64(len(s.blob)) {
			return fmt.Errorf("fake source: chunk %s at %d+%d outside the blob", c.Digest, c.Offset, c.CompSize)
		}
		frame := bytes.Clone(s.blob[c.Offset : c.Offset+c.CompSize])
		if corrupt != nil && corrupt(c) {
			frame[len(frame)/2] ^= 0x40
		}
		err := fn(c, frame)
		for i := range frame {
			frame[i] = 0xee
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *fakeSource) counts() (calls, chunks int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls, s.chunks
}

// mixedStore returns a layer of mixedFiles(seed), a source serving it, and a store in a
// new temp directory.
func mixedStore(t testing.TB, seed uint64) (*testLayer, *fakeSource, *Store) {
	t.Helper()
	l := buildLayer(t, mixedFiles(seed)...)
	return l, newSource(l), openStore(t, t.TempDir())
}

func openStore(t testing.TB, dir string, opts ...Option) *Store {
	t.Helper()
	s, err := Open(dir, append([]Option{WithLogger(slog.New(slog.DiscardHandler))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	s.bufs.poison = true // a chunk buffer recycled while a read may copy it serves wrong bytes
	return s
}

// idle waits until fetched chunks are stored and the assemblies that started are done.
func (s *Store) idle() {
	s.flush()
	s.bg.Wait()
}

// readAll reads a whole file through ReadAt in pieces of n bytes.
func readAll(t testing.TB, s *Store, src Source, f File, n int) []byte {
	t.Helper()
	out := make([]byte, 0, f.Size)
	buf := make([]byte, n)
	for off := int64(0); off < f.Size; {
		k, err := s.ReadAt(context.Background(), src, f, buf, off)
		if k == 0 && err != nil {
			t.Fatalf("read %s at %d: %v", f.Digest, off, err)
		}
		out = append(out, buf[:k]...)
		off += int64(k)
	}
	return out
}

// dirFiles lists the regular files under dir, relative to it.
func dirFiles(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
