package gzindex

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
// each gzip blob in GZINDEX_MEASURE_BLOBS (comma-separated paths) and each span size, the
// index's size, the build pass's throughput, and the compressed bytes fetched to read
// the files listed in GZINDEX_MEASURE_FILES (one tar path a line; each span fetched
// once). Each file is read back through a Reader and compared with the tar's. Skipped
// unless both are set (docs/benchmarks.md has the command and the results).
func TestMeasureSpanSizes(t *testing.T) {
	blobs, list := os.Getenv("GZINDEX_MEASURE_BLOBS"), os.Getenv("GZINDEX_MEASURE_FILES")
	if blobs == "" || list == "" {
		t.Skip("GZINDEX_MEASURE_BLOBS and GZINDEX_MEASURE_FILES not set")
	}
	l, err := os.ReadFile(list)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, name := range strings.Fields(string(l)) {
		want[name] = true
	}
	fmt.Println("| blob | MB | S KiB | spans | index KB | index / blob | files read MB | fetched MB | fetched / blob | fetched / read | index + fetched MB | build MB/s |")
	fmt.Println("| ---- | -- | ----- | ----- | -------- | ------------ | ------------- | ---------- | -------------- | -------------- | ------------------ | ---------- |")
	for _, path := range strings.Split(blobs, ",") {
		blob, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []int64{64, 128, 256, 512, 1024, 2048, 4096, 8192} {
			measureSpanSize(t, path, blob, s<<10, want)
		}
	}
}

// fileRange is a file's content range in the uncompressed tar.
type fileRange struct{ off, n int64 }

func measureSpanSize(t *testing.T, path string, blob []byte, span int64, want map[string]bool) {
	pr, pw := io.Pipe()
	files := make(chan []fileRange, 1)
	go func() { files <- tarRanges(pr, want) }()
	start := time.Now()
	ix, err := Build(bytes.NewReader(blob), span, pw)
	pw.CloseWithError(err)
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	ranges := <-files
	spans := map[int]bool{}
	var read, fetched int64
	r := NewReader(ix, bytes.NewReader(blob), 4<<20)
	for _, fr := range ranges {
		read += fr.n
		if fr.n == 0 {
			continue
		}
		for i := ix.SpanAt(fr.off); i <= ix.SpanAt(fr.off+fr.n-1); i++ {
			if !spans[i] {
				spans[i] = true
				fetched += ix.Span(i).CompLen
			}
		}
		if _, err := r.ReadAt(make([]byte, fr.n), fr.off); err != nil {
			t.Fatal(err)
		}
	}
	enc := len(ix.Encode())
	name := path[strings.LastIndex(path, "/")+1:]
	fmt.Printf("| %s | %.1f | %d | %d | %.0f | %.2f%% | %.2f | %.2f | %.0f%% | %.2fx | %.2f | %.0f |\n", name, float64(len(blob))/1e6,
		span>>10, ix.NumSpans(), float64(enc)/1e3, 100*float64(enc)/float64(len(blob)), float64(read)/1e6,
		float64(fetched)/1e6, 100*float64(fetched)/float64(len(blob)), float64(fetched)/float64(max(read, 1)), float64(enc+int(fetched))/1e6,
		float64(ix.Size())/1e6/elapsed.Seconds())
}

// tarRanges reads a tar stream to its end and returns the content ranges of the regular
// files named in want (leading "./" ignored).
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
			out = append(out, fileRange{off: c.n, n: h.Size})
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
