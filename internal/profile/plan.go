package profile

import (
	"fmt"

	"lazypull/format"
)

// Layer is a layer of the image a profile is applied to.
type Layer struct {
	Digest string
	Index  *format.Index
}

// Want is a profiled file found in an image: the bytes of Entry (a regular file, hard
// links resolved) of the image's layer Layer to fetch first.
type Want struct {
	Layer  int // position in the image, lowest first
	Entry  *format.Entry
	Ranges []Range // clipped to the file's size
}

// PlanGap is the largest hole between two ranges of a file that Plan fetches with them. A
// workload that maps a file reads it in the kernel's read-around windows (up to 1 MiB on
// a lazypull mount), placed by the order of its page faults, which is not the same from
// run to run: the windows one run recorded leave holes that the next run reads, each then
// a request of its own before ready. Fetched with their neighbours, holes this small cost
// a few percent more bytes (clang's profile 9%, a JVM's 2%) and save those round trips.
const PlanGap = 1 << 20

// bridge merges ranges (sorted, apart) whose hole is at most gap.
func bridge(rs []Range, gap int64) []Range {
	out := rs[:1]
	for _, r := range rs[1:] {
		last := &out[len(out)-1]
		if r.Off-last.End() <= gap {
			last.Len = r.End() - last.Off
			continue
		}
		out = append(out, r)
	}
	return out
}

// Plan finds the profile's files in the image's layers, in the profile's order. A file
// comes from the layer of the digest the profile names when the image has it, else from
// the topmost layer that has the path (a profile of another version of the image). Files
// found nowhere, or no longer regular files, are returned in stale, and skipped. Ranges
// closer than PlanGap are planned as one.
func (p *Profile) Plan(layers []Layer) (wants []Want, stale []string) {
	byDigest := map[string]int{}
	for i, l := range layers {
		if _, ok := byDigest[l.Digest]; !ok {
			byDigest[l.Digest] = i
		}
	}
	lookup := func(i int, name string) *format.Entry {
		e, _ := layers[i].Index.Lookup(name)
		return e
	}
	for _, f := range p.Files {
		li, e := -1, (*format.Entry)(nil)
		if i, ok := byDigest[p.Layers[f.Layer]]; ok {
			li, e = i, lookup(i, f.Path)
		} else {
			for i := len(layers) - 1; i >= 0 && e == nil; i-- {
				li, e = i, lookup(i, f.Path)
			}
		}
		if e == nil {
			stale = append(stale, f.Path)
			continue
		}
		c, err := layers[li].Index.Content(e)
		if err != nil || !c.IsRegular() || c.Sparse {
			stale = append(stale, f.Path)
			continue
		}
		var rs []Range
		for _, r := range f.Ranges {
			if r.Off >= c.Size {
				break
			}
			rs = append(rs, Range{r.Off, min(r.Len, c.Size-r.Off)})
		}
		if len(rs) == 0 {
			if c.Size > 0 {
				stale = append(stale, f.Path)
			}
			continue
		}
		wants = append(wants, Want{Layer: li, Entry: c, Ranges: bridge(rs, PlanGap)})
	}
	return wants, stale
}

// String describes the profile in one line.
func (p *Profile) String() string {
	return fmt.Sprintf("profile of %s: %d files, %d bytes", p.Subject, len(p.Files), p.Bytes())
}
