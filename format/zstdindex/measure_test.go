package zstdindex

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

// TestMeasureSpanSizes measures what the span size costs and saves on real layers: for
// each zstd blob in ZSTDINDEX_MEASURE_BLOBS (comma-separated paths) and each span size,
// the eager index's size, the window blob's, the build pass's throughput, and the bytes
// fetched (blob and windows) to read the files listed in ZSTDINDEX_MEASURE_FILES (one tar
// path a line): all of them through one reader that keeps every span (each fetched once), and one file
// alone on average (a reader of its own). Each file read is compared with the tar's.
// Skipped unless both are set (docs/benchmarks.md has the command and the results).
func TestMeasureSpanSizes(t *testing.T) {
	blobs, list := os.Getenv("ZSTDINDEX_MEASURE_BLOBS"), os.Getenv("ZSTDINDEX_MEASURE_FILES")
	if blobs == "" || list == "" {
		t.Skip("ZSTDINDEX_MEASURE_BLOBS and ZSTDINDEX_MEASURE_FILES not set")
	}
	l, err := os.ReadFile(list)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, name := range strings.Fields(string(l)) {
		want[name] = true
	}
	fmt.Println("| blob | MB | S KiB | spans (in frames) | index KB | index / blob | windows MB | windows / blob | files read MB | fetched MB (of it windows) | fetched / read | one file: fetched KB | build MB/s |")
	fmt.Println("| ---- | -- | ----- | ----------------- | -------- | ------------ | ---------- | -------------- | ------------- | -------------------------- | -------------- | -------------------- | ---------- |")
	for _, path := range strings.Split(blobs, ",") {
		blob, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []int64{64, 128, 256, 512, 1024} {
			measureSpanSize(t, path, blob, s<<10, want)
		}
	}
}

// fileRange is a file's content range in the uncompressed tar, and the file's content.
type fileRange struct {
	off  int64
	data []byte
}

func measureSpanSize(t *testing.T, path string, blob []byte, span int64, want map[string]bool) {
	pr, pw := io.Pipe()
	files := make(chan []fileRange, 1)
	go func() { files <- tarRanges(pr, want) }()
	var windows bytes.Buffer
	start := time.Now()
	ix, err := Build(bytes.NewReader(blob), span, pw, &windows)
	pw.CloseWithError(err)
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	ranges := <-files
	b, w := &countingReaderAt{r: bytes.NewReader(blob)}, &countingReaderAt{r: bytes.NewReader(windows.Bytes())}
	r := NewReader(ix, b, w, 1<<40) // keeps every span: each fetched once
	var read, one int64
	for _, fr := range ranges {
		read += int64(len(fr.data))
		readFile(t, r, fr)
		b1, w1 := &countingReaderAt{r: bytes.NewReader(blob)}, &countingReaderAt{r: bytes.NewReader(windows.Bytes())}
		readFile(t, NewReader(ix, b1, w1, 0), fr)
		one += b1.n.Load() + w1.n.Load()
	}
	fetched := b.n.Load() + w.n.Load()
	mid := 0
	for _, p := range ix.points {
		if p.mid {
			mid++
		}
	}
	enc := len(ix.Encode())
	name := path[strings.LastIndex(path, "/")+1:]
	fmt.Printf("| %s | %.1f | %d | %d (%d) | %.0f | %.3f%% | %.1f | %.0f%% | %.2f | %.2f (%.2f) | %.2fx | %.0f | %.0f |\n", name, float64(len(blob))/1e6,
		span>>10, ix.NumSpans(), mid, float64(enc)/1e3, 100*float64(enc)/float64(len(blob)),
		float64(windows.Len())/1e6, 100*float64(windows.Len())/float64(len(blob)),
		float64(read)/1e6, float64(fetched)/1e6, float64(w.n.Load())/1e6, float64(fetched)/float64(max(read, 1)),
		float64(one)/float64(max(len(ranges), 1))/1e3, float64(ix.Size())/1e6/elapsed.Seconds())
}

func readFile(t *testing.T, r *Reader, fr fileRange) {
	if len(fr.data) == 0 {
		return
	}
	p := make([]byte, len(fr.data))
	if _, err := r.ReadAt(p, fr.off); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	if !bytes.Equal(p, fr.data) {
		t.Fatalf("file at %d: other bytes", fr.off)
	}
}

// tarRanges reads a tar stream to its end and returns the regular files named in want
// (leading "./" ignored).
func tarRanges(r io.Reader, want map[string]bool) []fileRange {
	defer io.Copy(io.Discard, r)
	c := &countingReader{r: r}
	tr := tar.NewReader(c)
	var out []fileRange
	for {
		h, err := tr.Next()
		if err != nil {
			return out
		}
		if h.Typeflag == tar.TypeReg && want[strings.TrimPrefix(h.Name, "./")] {
			off := c.n
			data, err := io.ReadAll(tr)
			if err != nil {
				return out
			}
			out = append(out, fileRange{off: off, data: data})
		}
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
