package fetch

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Range is a byte range of a blob: Len bytes from Off.
type Range struct {
	Off, Len int64
}

// End is the offset just past the range.
func (r Range) End() int64 { return r.Off + r.Len }

func (r Range) String() string {
	if r.Len <= 0 {
		return fmt.Sprintf("%d+0", r.Off)
	}
	return fmt.Sprintf("%d-%d", r.Off, r.End()-1)
}

// span is a stretch of a blob that one range of a request covers: one or more ranges asked
// for (flights), merged because they touch, overlap or lie close enough that reading the
// hole between them is cheaper than asking for them apart.
type span struct {
	Range
	flights []*flight
}

// alwaysGap is a hole so small that reading it costs less than the headers of a part of its
// own in a multipart answer: such holes are always read through.
const alwaysGap = 256

// planSpans merges flights (sorted by offset) into spans. Ranges that touch or overlap are
// always merged. A hole of at most alwaysGap bytes is read through; one of at most maxGap
// bytes too, as long as the span stays within maxRequest and its holes stay under an
// eighth of the bytes asked for, which keeps the bytes fetched within 1.2 times the bytes
// needed, multipart headers included, for ranges of a few KiB and up.
func planSpans(flights []*flight, maxGap, maxRequest int64) []*span {
	var out []*span
	var cur *span
	var needed, holes int64
	for _, f := range flights {
		r := f.r
		if cur != nil {
			if r.Off <= cur.End() { // touches or overlaps
				if e := r.End(); e > cur.End() {
					needed += e - cur.End()
					cur.Len = e - cur.Off
				}
				cur.flights = append(cur.flights, f)
				continue
			}
			gap := r.Off - cur.End()
			if gap <= alwaysGap || gap <= maxGap && r.End()-cur.Off <= maxRequest && (holes+gap)*8 <= needed+r.Len {
				holes += gap
				needed += r.Len
				cur.Len = r.End() - cur.Off
				cur.flights = append(cur.flights, f)
				continue
			}
		}
		cur = &span{Range: r, flights: []*flight{f}}
		needed, holes = r.Len, 0
		out = append(out, cur)
	}
	return out
}

// packRequests groups spans (sorted) into requests of at most maxRanges spans and, past the
// first span of each, maxRequest bytes.
func packRequests(spans []*span, maxRanges int, maxRequest int64) [][]*span {
	var out [][]*span
	var cur []*span
	var bytes int64
	for _, s := range spans {
		if len(cur) > 0 && (len(cur) >= maxRanges || bytes+s.Len > maxRequest) {
			out = append(out, cur)
			cur, bytes = nil, 0
		}
		cur = append(cur, s)
		bytes += s.Len
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// byRank returns spans (sorted by offset) in the order their caller asked for them: by the
// first asked-for range each holds. A server sends the parts of a multi-range answer in the
// order of the Range header (RFC 9110 14.2; Go's http.ServeContent, and so Docker's
// registry, does), and parts are delivered as they stream (readPart): what a prefetch
// profile names first (the binary a container executes, its libraries) then arrives first,
// and the workload starts on it while the rest is on its way. The answer's readers do not
// depend on the order of its parts.
func byRank(spans []*span) []*span {
	rank := func(s *span) int {
		r := s.flights[0].rank
		for _, f := range s.flights[1:] {
			r = min(r, f.rank)
		}
		return r
	}
	out := slices.Clone(spans)
	slices.SortStableFunc(out, func(a, b *span) int { return rank(a) - rank(b) })
	return out
}

// rangeHeader is the Range header value asking for spans.
func rangeHeader(spans []*span) string {
	var b strings.Builder
	b.WriteString("bytes=")
	for i, s := range spans {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatInt(s.Off, 10))
		b.WriteByte('-')
		b.WriteString(strconv.FormatInt(s.End()-1, 10))
	}
	return b.String()
}

// sortFlights orders flights by offset, then length.
func sortFlights(fs []*flight) {
	sort.Slice(fs, func(i, j int) bool {
		if fs[i].r.Off != fs[j].r.Off {
			return fs[i].r.Off < fs[j].r.Off
		}
		return fs[i].r.Len < fs[j].r.Len
	})
}
