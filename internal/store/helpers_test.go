package store

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"lazypull/format"
)

// randBytes returns n reproducible pseudo-random bytes.
func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

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

func buildLayer(t testing.TB, files ...tfile) *testLayer {
	t.Helper()
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for _, f := range files {
		h := &tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(len(f.data)), ModTime: time.Unix(1700000000, 0)}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var blob bytes.Buffer
	if _, err := format.Write(context.Background(), &blob, &tb); err != nil {
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
		{"one-chunk", randBytes(seed+1, 20_000)},
		{"exactly-32k", randBytes(seed+2, 32<<10)},
		{"few-chunks", randBytes(seed+3, 300_000)},
		{"many-chunks", randBytes(seed+4, 3<<20+12345)},
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
}

func newSource(l *testLayer) *fakeSource {
	return &fakeSource{blob: l.blob, fetched: map[format.Digest]int{}}
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

// logBuffer collects log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) count(substr string) int { return strings.Count(l.String(), substr) }

func testLogger(t testing.TB) (*slog.Logger, *logBuffer) {
	lb := &logBuffer{}
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}

func openStore(t testing.TB, dir string, opts ...Option) *Store {
	t.Helper()
	s, err := Open(dir, append([]Option{WithLogger(slog.New(slog.DiscardHandler))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
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
