package gzindex

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"

	"lazypull/internal/testutil"
)

// TestMeasureSpanSizes measures what the span size costs and saves on real layers: for
// each gzip blob in GZINDEX_MEASURE_BLOBS (comma-separated paths) and each span size, the
// index's size, the build pass's throughput, and the compressed bytes fetched to read
// the files listed in GZINDEX_MEASURE_FILES (one tar path a line; each span fetched
// once). Each file is read back through a Reader and compared with the tar's. Skipped
// unless both are set (docs/benchmarks.md has the command and the results).
func TestMeasureSpanSizes(t *testing.T) {
	testutil.MeasureSpanSizes(t, "GZINDEX", "| blob | MB | S KiB | spans | index KB | index / blob | files read MB | fetched MB | fetched / blob | fetched / read | index + fetched MB | build MB/s |",
		[]int64{64, 128, 256, 512, 1024, 2048, 4096, 8192}, func(path string, blob []byte, span int64, want map[string]bool) {
			measureSpanSize(t, path, blob, span, want)
		})
}

func measureSpanSize(t *testing.T, path string, blob []byte, span int64, want map[string]bool) {
	var ix *Index
	var wins bytes.Buffer
	files, elapsed := testutil.BuildFiles(t, want, func(w io.Writer) (err error) {
		ix, err = Build(bytes.NewReader(blob), span, w, &wins)
		return err
	})
	spans := map[int]bool{}
	var read, fetched int64
	r := NewReader(ix, bytes.NewReader(blob), bytes.NewReader(wins.Bytes()), 4<<20)
	for _, f := range files {
		n := int64(len(f.Data))
		read += n
		if n == 0 {
			continue
		}
		for i := ix.SpanAt(f.Off); i <= ix.SpanAt(f.Off+n-1); i++ {
			if !spans[i] {
				spans[i] = true
				fetched += ix.Span(i).CompLen
			}
		}
		testutil.ReadBack(t, r, f)
	}
	enc := len(ix.Encode())
	name := path[strings.LastIndex(path, "/")+1:]
	fmt.Printf("| %s | %.1f | %d | %d | %.0f | %.2f%% | %.2f | %.2f | %.0f%% | %.2fx | %.2f | %.0f |\n", name, float64(len(blob))/1e6,
		span>>10, ix.NumSpans(), float64(enc)/1e3, 100*float64(enc)/float64(len(blob)), float64(read)/1e6,
		float64(fetched)/1e6, 100*float64(fetched)/float64(len(blob)), float64(fetched)/float64(max(read, 1)), float64(enc+int(fetched))/1e6,
		float64(ix.Size())/1e6/elapsed.Seconds())
}
