package fetch

import (
	"reflect"
	"testing"
)

func flights(rs ...Range) []*flight {
	var out []*flight
	for _, r := range rs {
		out = append(out, &flight{r: r})
	}
	sortFlights(out)
	return out
}

func spanRanges(ss []*span) []Range {
	var out []Range
	for _, s := range ss {
		out = append(out, s.Range)
	}
	return out
}

func TestPlanSpans(t *testing.T) {
	cases := []struct {
		name   string
		in     []Range
		gap    int64
		maxReq int64
		want   []Range
	}{
		{"touching and overlapping", []Range{{0, 10}, {10, 10}, {5, 30}, {35, 1}}, 0, 1 << 20, []Range{{0, 36}}},
		{"contained", []Range{{0, 100}, {10, 5}}, 0, 1 << 20, []Range{{0, 100}}},
		// A hole smaller than a part's headers is always read through.
		{"tiny hole", []Range{{0, 10}, {200, 10}}, 0, 1 << 20, []Range{{0, 210}}},
		{"hole too big for gap 0", []Range{{0, 10}, {300, 10}}, 0, 1 << 20, []Range{{0, 10}, {300, 10}}},
		// Holes within maxGap are read while they stay under an eighth of what is needed.
		{"hole within ratio", []Range{{0, 8000}, {9000, 8000}}, 16 << 10, 1 << 20, []Range{{0, 17000}}},
		{"hole past ratio", []Range{{0, 1000}, {2000, 1000}}, 16 << 10, 1 << 20, []Range{{0, 1000}, {2000, 1000}}},
		{"hole past maxGap", []Range{{0, 1 << 20}, {1<<20 + 20000, 1 << 20}}, 16 << 10, 16 << 20, []Range{{0, 1 << 20}, {1<<20 + 20000, 1 << 20}}},
		{"merge past maxRequest", []Range{{0, 8000}, {9000, 8000}}, 16 << 10, 10000, []Range{{0, 8000}, {9000, 8000}}},
		// A range larger than maxRequest is still one span.
		{"big range", []Range{{0, 100}, {0, 50000}}, 0, 1000, []Range{{0, 50000}}},
	}
	for _, c := range cases {
		got := spanRanges(planSpans(flights(c.in...), c.gap, c.maxReq))
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

func TestPackRequests(t *testing.T) {
	var spans []*span
	for i := range 200 {
		spans = append(spans, &span{Range: Range{int64(i) * 1000, 100}})
	}
	reqs := packRequests(spans, 64, 1<<20)
	if len(reqs) != 4 || len(reqs[0]) != 64 || len(reqs[3]) != 8 {
		t.Fatalf("%d requests", len(reqs))
	}
	reqs = packRequests(spans[:10], 64, 250)
	if len(reqs) != 5 || len(reqs[0]) != 2 {
		t.Fatalf("byte cap: %d requests", len(reqs))
	}
	if h := rangeHeader(spans[:3]); h != "bytes=0-99,1000-1099,2000-2099" {
		t.Fatalf("header %q", h)
	}
}
