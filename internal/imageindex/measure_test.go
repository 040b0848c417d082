package imageindex

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestMeasureProfileSpans measures what a profiled start fetches from a gzip image's
// layers for each span size, as the daemon's prefetch asks for it: a profiled file of up to
// 4 MiB whole, a larger one by the spans holding its profiled ranges, chunks within 256
// KiB of the previous one read together (up to 8 MiB), and each read fetched as the whole
// spans covering it. Beside it, what the same reads would fetch if a read ended at the
// compressed position of its last byte when that byte ends a whole file (verifiable by the
// file's own digest; interpolated within the span), the eager index (table and
// gzindex), the window blob, and the windows fetched from it (one for each read that
// does not start in or right after the last span fetched). Every profiled path must be
// in its layer's table.
// IMAGEINDEX_MEASURE_LAYOUT is the image's OCI layout (blobs/sha256/...),
// IMAGEINDEX_MEASURE_PROFILE a profile recorded on it; skipped unless both are set.
func TestMeasureProfileSpans(t *testing.T) {
	layout, prof := os.Getenv("IMAGEINDEX_MEASURE_LAYOUT"), os.Getenv("IMAGEINDEX_MEASURE_PROFILE")
	if layout == "" || prof == "" {
		t.Skip("IMAGEINDEX_MEASURE_LAYOUT and IMAGEINDEX_MEASURE_PROFILE not set")
	}
	var p struct {
		Layers []string `json:"layers"`
		Files  []struct {
			Layer  int        `json:"layer"`
			Path   string     `json:"path"`
			Ranges [][2]int64 `json:"ranges"`
		} `json:"files"`
	}
	b, err := os.ReadFile(prof)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	fmt.Println("| layer | S KiB | index KB (table + gzindex) | gzindex KB | window blob KB | reads | fetched MB | windows fetched KB | fetched, reads ending at a whole file's last byte MB |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|")
	for li, d := range p.Layers {
		blob, err := os.ReadFile(filepath.Join(layout, "blobs", strings.Replace(d, ":", "/", 1)))
		if err != nil {
			t.Fatal(err)
		}
		want := map[string][][2]int64{}
		for _, f := range p.Files {
			if f.Layer == li {
				want[f.Path] = f.Ranges
			}
		}
		for _, kib := range []int64{16, 32, 64, 128, 256} {
			measureProfileSpan(t, d[7:19], blob, kib<<10, want)
		}
	}
}

// measured is a read of the prefetch: its range of the tar stream, and whether it ends
// with a whole file.
type measured struct {
	start, end int64
	wholeEnd   bool
}

func measureProfileSpan(t *testing.T, name string, blob []byte, span int64, want map[string][][2]int64) {
	var wins bytes.Buffer
	built, err := BuildLayer(bytes.NewReader(blob), Gzip, span, &wins)
	if err != nil {
		t.Fatal(err)
	}
	ix := built.GZ
	var chunks []measured
	found := 0
	for _, e := range built.Table.Entries {
		rs, ok := want[e.Name]
		if !ok {
			continue
		}
		found++
		if e.Size == 0 || e.Sparse {
			continue
		}
		if e.Size <= 4<<20 {
			chunks = append(chunks, measured{e.TarOffset, e.TarOffset + e.Size, true})
			continue
		}
		seen := map[int]bool{}
		for _, r := range rs {
			for i := ix.SpanAt(e.TarOffset + r[0]); i <= ix.SpanAt(e.TarOffset+r[0]+r[1]-1); i++ {
				if !seen[i] {
					seen[i] = true
					s := ix.Span(i)
					chunks = append(chunks, measured{s.Off, s.Off + s.Len, false})
				}
			}
		}
	}
	if found < len(want) {
		t.Errorf("layer %s: %d of the profile's %d paths are not in its table", name, len(want)-found, len(want))
	}
	slices.SortFunc(chunks, func(a, b measured) int { return int(a.start - b.start) })
	var reads []measured
	for _, c := range chunks {
		if n := len(reads); n > 0 && c.start-reads[n-1].end <= 256<<10 && max(c.end, reads[n-1].end)-reads[n-1].start <= 8<<20 {
			if c.end >= reads[n-1].end {
				reads[n-1].end, reads[n-1].wholeEnd = c.end, c.wholeEnd
			}
			continue
		}
		reads = append(reads, c)
	}
	// Fetched: the compressed ranges of the spans each read covers, merged when they touch.
	fetched, prefix, windows := 0.0, 0.0, 0.0
	lastSpan, lastPart := -1, 0.0 // the last span fetched, and what of it the prefix counted
	for _, r := range reads {
		first, last := ix.SpanAt(r.start), ix.SpanAt(r.end-1)
		if first > lastSpan+1 {
			windows += float64(ix.Span(first).WindowLen)
		}
		if first == lastSpan { // the rest of a span the previous read ended in
			prefix += float64(ix.Span(first).CompLen) - lastPart
			lastPart = float64(ix.Span(first).CompLen)
		}
		for i := max(first, lastSpan+1); i <= last; i++ {
			s := ix.Span(i)
			fetched += float64(s.CompLen)
			part := float64(s.CompLen)
			if i == last && r.wholeEnd {
				part *= float64(r.end-s.Off) / float64(s.Len)
			}
			prefix += part
			lastPart = part
		}
		lastSpan = last
	}
	if prefix > fetched {
		t.Errorf("layer %s, span %d: reads ending at a file's end fetch %.0f bytes, more than whole spans' %.0f", name, span, prefix, fetched)
	}
	gz := len(ix.Encode())
	fmt.Printf("| %s | %d | %.0f | %.0f | %.0f | %d | %.2f | %.0f | %.2f |\n", name, span>>10,
		float64(len(built.Table.Encode())+gz)/1e3, float64(gz)/1e3, float64(wins.Len())/1e3, len(reads), fetched/1e6, windows/1e3, prefix/1e6)
}
