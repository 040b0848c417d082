package zstdindex

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"

	"lazypull/internal/testutil"
)

// TestMeasureSpanSizes measures what the span size costs and saves on real layers: for
// each zstd blob in ZSTDINDEX_MEASURE_BLOBS (comma-separated paths) and each span size,
// the eager index's size, the window blob's, the build pass's throughput, and the bytes
// fetched (blob and windows) to read the files listed in ZSTDINDEX_MEASURE_FILES (one tar
// path a line): all of them through one reader that keeps every span (each fetched once), and one file
// alone on average (a reader of its own). Each file read is compared with the tar's.
// Skipped unless both are set (docs/benchmarks.md has the command and the results).
func TestMeasureSpanSizes(t *testing.T) {
	testutil.MeasureSpanSizes(t, "ZSTDINDEX", "| blob | MB | S KiB | spans (in frames) | index KB | index / blob | windows MB | windows / blob | files read MB | fetched MB (of it windows) | fetched / read | one file: fetched KB | build MB/s |",
		[]int64{64, 128, 256, 512, 1024}, func(path string, blob []byte, span int64, want map[string]bool) {
			measureSpanSize(t, path, blob, span, want)
		})
}

func measureSpanSize(t *testing.T, path string, blob []byte, span int64, want map[string]bool) {
	var ix *Index
	var windows bytes.Buffer
	files, elapsed := testutil.BuildFiles(t, want, func(w io.Writer) (err error) {
		ix, err = Build(bytes.NewReader(blob), span, w, &windows)
		return err
	})
	b, w := &countingReaderAt{r: bytes.NewReader(blob)}, &countingReaderAt{r: bytes.NewReader(windows.Bytes())}
	r := NewReader(ix, b, w, 1<<40) // keeps every span: each fetched once
	var read, one int64
	for _, f := range files {
		read += int64(len(f.Data))
		testutil.ReadBack(t, r, f)
		b1, w1 := &countingReaderAt{r: bytes.NewReader(blob)}, &countingReaderAt{r: bytes.NewReader(windows.Bytes())}
		testutil.ReadBack(t, NewReader(ix, b1, w1, 0), f)
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
		float64(one)/float64(max(len(files), 1))/1e3, float64(ix.Size())/1e6/elapsed.Seconds())
}
