package zstdindex

import (
	"archive/tar"
	"bytes"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/klauspost/compress/zstd"

	"lazypull/internal/testutil"
)

// zstdGo compresses with klauspost/compress at level, in one frame.
func zstdGo(t testing.TB, p []byte, level zstd.EncoderLevel, opts ...zstd.EOption) []byte {
	enc, err := zstd.NewWriter(nil, append([]zstd.EOption{zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(1)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(p, nil)
}

// zstdCmd compresses with the zstd command, or skips.
func zstdCmd(t testing.TB, p []byte, args ...string) []byte {
	if _, err := exec.LookPath("zstd"); err != nil {
		t.Skip("zstd not installed")
	}
	cmd := exec.Command("zstd", append([]string{"-c", "-q"}, args...)...)
	cmd.Stdin = bytes.NewReader(p)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("zstd %v: %v", args, err)
	}
	return out
}

// unzstd decompresses with klauspost/compress: the reference.
func unzstd(t testing.TB, blob []byte) []byte {
	d, err := zstd.NewReader(bytes.NewReader(blob), zstd.WithDecoderMaxWindow(1<<30))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	out, err := io.ReadAll(d)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// build indexes blob, checks the build pass's output, and returns the index and window blob.
func build(t testing.TB, blob []byte, span int64) (*Index, []byte) {
	var out, windows bytes.Buffer
	ix, err := Build(bytes.NewReader(blob), span, &out, &windows)
	if err != nil {
		t.Fatal(err)
	}
	if want := unzstd(t, blob); !bytes.Equal(out.Bytes(), want) {
		t.Fatalf("the build pass decodes %d bytes, other than klauspost/compress's %d", out.Len(), len(want))
	}
	if int64(windows.Len()) != ix.WindowsSize() {
		t.Fatalf("window blob of %d bytes, index says %d", windows.Len(), ix.WindowsSize())
	}
	return ix, windows.Bytes()
}

// realTar returns a tar of up to n bytes of the files under /usr/lib (shared libraries,
// Python modules, data): real layer content, the same on each call on one machine.
func realTar(t testing.TB, n int) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	err := filepath.WalkDir("/usr/lib", func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		if b.Len() >= n {
			return filepath.SkipAll
		}
		data, err := os.ReadFile(path)
		if err != nil || b.Len()+len(data) > n {
			return nil
		}
		if err := tw.WriteHeader(&tar.Header{Name: path[1:], Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err = tw.Write(data)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	if b.Len() < n/2 {
		t.Skipf("only %d bytes of files under /usr/lib", b.Len())
	}
	return b.Bytes()
}

// skippable returns a skippable frame holding p.
func skippable(p []byte) []byte {
	b := []byte{0x5A, 0x2A, 0x4D, 0x18, byte(len(p)), byte(len(p) >> 8), byte(len(p) >> 16), byte(len(p) >> 24)}
	return append(b, p...)
}

// streams returns the zstd blobs the round trips run on, by name, with their content.
func streams(t *testing.T) map[string][2][]byte {
	data := realTar(t, 8<<20)
	small := testutil.Corpus(5000, 2)
	mixed := testutil.Corpus(3<<20, 1)
	multi := slicesConcat(zstdGo(t, data[:3<<20], zstd.SpeedDefault), skippable([]byte("lazypull")),
		zstdGo(t, nil, zstd.SpeedFastest), zstdGo(t, small, zstd.SpeedBestCompression),
		zstdGo(t, data[3<<20:], zstd.SpeedFastest, zstd.WithEncoderCRC(false)), skippable(nil))
	s := map[string][2][]byte{
		"go-fastest":   {zstdGo(t, data, zstd.SpeedFastest), data},
		"go-default":   {zstdGo(t, data, zstd.SpeedDefault), data},
		"go-better":    {zstdGo(t, data, zstd.SpeedBetterCompression), data},
		"go-best":      {zstdGo(t, data, zstd.SpeedBestCompression), data},
		"go-mixed":     {zstdGo(t, mixed, zstd.SpeedDefault, zstd.WithWindowSize(1<<20)), mixed},
		"multi-frame":  {multi, slicesConcat(data[:3<<20], small, data[3<<20:])},
		"small":        {zstdGo(t, small, zstd.SpeedDefault), small},
		"empty":        {zstdGo(t, nil, zstd.SpeedDefault), nil},
		"cli-1":        {zstdCmd(t, data, "-1"), data},
		"cli-3":        {zstdCmd(t, data, "-3"), data},
		"cli-19":       {zstdCmd(t, data, "-19"), data},
		"cli-long":     {zstdCmd(t, data, "-3", "--long"), data},
		"cli-mixed-19": {zstdCmd(t, mixed, "-19"), mixed},
		"cli-threads":  {zstdCmd(t, data, "-3", "-T2", "--rsyncable"), data},
	}
	return s
}

func slicesConcat(ps ...[]byte) []byte { return bytes.Join(ps, nil) }

// countingReaderAt counts the bytes read through it.
type countingReaderAt struct {
	r     io.ReaderAt
	n     atomic.Int64
	reads atomic.Int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	c.reads.Add(1)
	n, err := c.r.ReadAt(p, off)
	c.n.Add(int64(n))
	return n, err
}

// TestRoundTrip builds the index of each stream and reads it back: every span alone,
// from a reader that keeps nothing (its window fetched); the whole stream in one read;
// random reads at span starts, inside spans and in the last span, from a reader that
// keeps spans. Every byte equals the content compressed.
func TestRoundTrip(t *testing.T) {
	for name, s := range streams(t) {
		t.Run(name, func(t *testing.T) {
			blob, want := s[0], s[1]
			ix, windows := build(t, blob, 128<<10)
			if ix.Size() != int64(len(want)) || ix.CompressedSize() != int64(len(blob)) {
				t.Fatalf("sizes %d, %d; want %d, %d", ix.Size(), ix.CompressedSize(), len(want), len(blob))
			}
			mid := 0
			for i := range ix.NumSpans() {
				if ix.points[i].mid {
					mid++
				}
				s := ix.Span(i)
				r := NewReader(ix, bytes.NewReader(blob), bytes.NewReader(windows), 0)
				readCheck(t, r, want, s.Off, s.Len)
			}
			t.Logf("%d bytes in %d: %d spans (%d inside frames), index %d bytes, window blob %d bytes",
				len(want), len(blob), ix.NumSpans(), mid, len(ix.Encode()), len(windows))
			if len(want) == 0 {
				return
			}
			win := &countingReaderAt{r: bytes.NewReader(windows)}
			readCheck(t, NewReader(ix, bytes.NewReader(blob), win, 0), want, 0, int64(len(want)))
			if win.n.Load() != 0 {
				t.Fatalf("a read from the start fetched %d bytes of windows", win.n.Load())
			}
			r := NewReader(ix, bytes.NewReader(blob), bytes.NewReader(windows), 8<<20)
			rng := rand.New(rand.NewPCG(3, 4))
			last := ix.Span(ix.NumSpans() - 1)
			for range 50 {
				s := ix.Span(rng.IntN(ix.NumSpans()))
				off := []int64{s.Off, s.Off + rng.Int64N(s.Len), last.Off + rng.Int64N(last.Len)}[rng.IntN(3)]
				readCheck(t, r, want, off, min(1+rng.Int64N(300<<10), int64(len(want))-off))
			}
		})
	}
}

// readCheck reads [off, off+n) through r and compares it with want's.
func readCheck(t *testing.T, r *Reader, want []byte, off, n int64) {
	t.Helper()
	p := make([]byte, n)
	if k, err := r.ReadAt(p, off); int64(k) != n || err != nil && !(err == io.EOF && off+n == int64(len(want))) {
		t.Fatalf("reading %d bytes at %d: %d, %v", n, off, k, err)
	}
	if !bytes.Equal(p, want[off:off+n]) {
		t.Fatalf("reading %d bytes at %d: other bytes", n, off)
	}
}

// TestSequentialReadNeedsNoWindows reads a stream span after span through a reader that
// keeps the last span: no window is fetched; read backwards, every span inside a frame
// fetches its window.
func TestSequentialReadNeedsNoWindows(t *testing.T) {
	data := realTar(t, 6<<20)
	blob := zstdCmd(t, data, "-19")
	ix, windows := build(t, blob, 64<<10)
	win := &countingReaderAt{r: bytes.NewReader(windows)}
	r := NewReader(ix, bytes.NewReader(blob), win, MaxSpanOut)
	for i := range ix.NumSpans() {
		s := ix.Span(i)
		readCheck(t, r, data, s.Off, s.Len)
	}
	if win.reads.Load() != 0 {
		t.Fatalf("a sequential read fetched %d windows", win.reads.Load())
	}
	r = NewReader(ix, bytes.NewReader(blob), win, 0)
	mid := 0
	for i := ix.NumSpans() - 1; i >= 0; i-- {
		if ix.points[i].mid {
			mid++
		}
		s := ix.Span(i)
		readCheck(t, r, data, s.Off, s.Len)
	}
	if mid < 10 || win.reads.Load() != int64(mid) {
		t.Fatalf("a backward read of %d spans inside frames fetched %d windows", mid, win.reads.Load())
	}
	t.Logf("%d spans, %d windows (%d bytes) fetched", ix.NumSpans(), mid, win.n.Load())
}
