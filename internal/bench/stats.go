package bench

import (
	"fmt"
	"slices"
)

// Mode is a way of starting an image.
type Mode string

// The modes.
const (
	// ModePlain: `ctr image pull` of the original gzip image, then `ctr run` (overlayfs).
	ModePlain Mode = "plain"
	// ModeLazypull: `lazypull pull` of the converted image, then `ctr run --snapshotter lazypull`.
	ModeLazypull Mode = "lazypull"
	// ModeProfile: as ModeLazypull, with the image's prefetch profile (recorded by `lazypull
	// profile` before the runs) looked up and its chunks fetched first. ModeLazypull runs
	// with prefetch off, so that the two differ only in the profile.
	ModeProfile Mode = "lazypull-profile"
	// ModeAuto: as ModeProfile, but the profile is the one a first node recorded and
	// pushed by itself (auto_profile_push) as it ran the image once before the runs, with
	// no `lazypull profile` (auto.go). The images are in a repository of their own.
	ModeAuto Mode = "lazypull-auto"
)

// lazy reports whether m runs on the lazypull snapshotter.
func (m Mode) lazy() bool {
	return m == ModeLazypull || m == ModeProfile || m == ModeAuto || isIndexed(m)
}

// Run is one cold start of one image in one mode over one link.
type Run struct {
	Image string `json:"image"`
	Mode  Mode   `json:"mode"`
	Link  string `json:"link"`
	Rep   int    `json:"rep"`
	// Order is the run's position in the randomised sequence (0 first).
	Order int `json:"order"`
	Start
}

// Start is what one start measured: a pull, then `ctr run` to ready.
type Start struct {
	// Pull is the pull command's wall clock; Ready is from `ctr run` starting to the readiness
	// line (create + run to ready); Total is their sum.
	Pull  float64 `json:"pull_s"`
	Ready float64 `json:"ready_s"`
	Total float64 `json:"total_s"`
	// Bytes and Requests were forwarded by the link from the pull's start until ready: the
	// registry's bytes to the node (responses, headers included) and the node's requests.
	Bytes    int64 `json:"bytes_before_ready"`
	Requests int64 `json:"requests_before_ready"`
	// BytesAfter is what the link forwarded from ready until the run was torn down
	// (a background fill, say).
	BytesAfter int64 `json:"bytes_after_ready"`
}

// Stat is the median and the range of a set of measurements.
type Stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
}

// NewStat summarises xs; it is the zero Stat for none.
func NewStat(xs []float64) Stat {
	if len(xs) == 0 {
		return Stat{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Stat{Median: m, Min: s[0], Max: s[len(s)-1], N: len(s)}
}

// statsOf returns the Stat of each figure over the runs keep selects, in the order of
// figures; ok is false when keep selects none.
func statsOf[R any](runs []R, keep func(R) bool, figures ...func(R) float64) (stats []Stat, ok bool) {
	xs := make([][]float64, len(figures))
	for _, r := range runs {
		if !keep(r) {
			continue
		}
		ok = true
		for i, f := range figures {
			xs[i] = append(xs[i], f(r))
		}
	}
	stats = make([]Stat, len(figures))
	for i := range xs {
		stats[i] = NewStat(xs[i])
	}
	return stats, ok
}

// againstPlain returns plain's median total over total's (how many times faster than
// plain) and bytes' median over plain's (the share of plain's bytes); each is 0 where its
// divisor is.
func againstPlain(plainTotal, plainBytes, total, bytes Stat) (faster, bytesShare float64) {
	if total.Median > 0 {
		faster = plainTotal.Median / total.Median
	}
	if plainBytes.Median > 0 {
		bytesShare = bytes.Median / plainBytes.Median
	}
	return faster, bytesShare
}

// PlainRatios compare a summary with plain's of the same group; both are 0 without a plain
// run.
type PlainRatios struct {
	// VsPlain is plain's median total over this one's; BytesVsPlain this median of bytes over
	// plain's.
	VsPlain      float64 `json:"speedup_vs_plain,omitempty"`
	BytesVsPlain float64 `json:"bytes_vs_plain,omitempty"`
}

// summarizeGroups makes the summaries of a scenario's runs a group at a time, a group per
// link and key, in that order: summarize's summary of each mode that has runs (ok), then
// their ratios against the group's plain one (comparePlain, with fig); withPlain, if not
// nil, then sees each group that has a plain summary.
func summarizeGroups[K, S any](links []Link, keys []K, modes []Mode, summarize func(l Link, k K, m Mode) (s S, ok bool),
	fig func(*S) (Mode, Stat, Stat, *PlainRatios), withPlain func(group []S)) []S {
	var out []S
	for _, l := range links {
		for _, k := range keys {
			var group []S
			for _, m := range modes {
				if s, ok := summarize(l, k, m); ok {
					group = append(group, s)
				}
			}
			if comparePlain(group, fig) && withPlain != nil {
				withPlain(group)
			}
			out = append(out, group...)
		}
	}
	return out
}

// comparePlain sets the PlainRatios of each summary of group against the group's plain
// one, fig giving a summary's mode, total, bytes and ratios; it reports whether there was a
// plain one.
func comparePlain[S any](group []S, fig func(*S) (m Mode, total, bytes Stat, r *PlainRatios)) bool {
	for i := range group {
		m, plainTotal, plainBytes, _ := fig(&group[i])
		if m != ModePlain {
			continue
		}
		for j := range group {
			_, total, bytes, r := fig(&group[j])
			r.VsPlain, r.BytesVsPlain = againstPlain(plainTotal, plainBytes, total, bytes)
		}
		return true
	}
	return false
}

// timesCell is a table cell of a ratio, "1.23x", or "-" for 0 (no ratio).
func timesCell(x float64) string {
	if x > 0 {
		return fmt.Sprintf("%.2fx", x)
	}
	return "-"
}

// percentCell is a table cell of a fraction in percent, "12.3%", or "-" for 0 (none).
func percentCell(x float64) string {
	if x > 0 {
		return fmt.Sprintf("%.1f%%", x*100)
	}
	return "-"
}

// Format prints the median with the range: "1.23 (1.10-1.40)", prec digits after the point.
func (s Stat) Format(prec int) string {
	if s.N == 0 {
		return "-"
	}
	if s.N == 1 {
		return fmt.Sprintf("%.*f", prec, s.Median)
	}
	return fmt.Sprintf("%.*f (%.*f-%.*f)", prec, s.Median, prec, s.Min, prec, s.Max)
}

// Scale returns s with every figure multiplied by f (units).
func (s Stat) Scale(f float64) Stat {
	return Stat{Median: s.Median * f, Min: s.Min * f, Max: s.Max * f, N: s.N}
}

// Summary aggregates the runs of one image, mode and link.
type Summary struct {
	Image string `json:"image"`
	Mode  Mode   `json:"mode"`
	Link  string `json:"link"`
	StartStats
	// VsPlain is plain's median total over this one's (how many times faster; 0 when there
	// is no plain run); VsLimit is this median total over the image's limit on this link.
	VsPlain float64 `json:"speedup_vs_plain,omitempty"`
	VsLimit float64 `json:"ratio_to_limit,omitempty"`
	// VsStargz is stargz's median total over this one's, and RequestsVsStargz this median
	// requests over stargz's, stargz being optimized eStargz when it ran, else eStargz (0
	// when neither ran): see stargzRatios.
	VsStargz         float64 `json:"speedup_vs_stargz,omitempty"`
	RequestsVsStargz float64 `json:"requests_vs_stargz,omitempty"`
}

// StartStats summarises the Starts of a set of runs.
type StartStats struct {
	Pull     Stat `json:"pull_s"`
	Ready    Stat `json:"ready_s"`
	Total    Stat `json:"total_s"`
	Bytes    Stat `json:"bytes_before_ready"`
	Requests Stat `json:"requests_before_ready"`
}

// startStats summarises the starts of the runs keep selects; ok is false when it selects none.
func startStats[R any](runs []R, keep func(R) bool, start func(R) Start) (StartStats, bool) {
	st, ok := statsOf(runs, keep, func(r R) float64 { return start(r).Pull }, func(r R) float64 { return start(r).Ready },
		func(r R) float64 { return start(r).Total }, func(r R) float64 { return float64(start(r).Bytes) },
		func(r R) float64 { return float64(start(r).Requests) })
	return StartStats{Pull: st[0], Ready: st[1], Total: st[2], Bytes: st[3], Requests: st[4]}, ok
}

// Limit is the physical limit of one image on one link: the time a start needs at the least,
// whatever the method: the image's warm local start, plus the bytes it must read to start at
// the link's bandwidth, plus one round trip.
type Limit struct {
	Image string  `json:"image"`
	Link  string  `json:"link"`
	Warm  float64 `json:"warm_start_s"`
	Bytes int64   `json:"bytes_read_at_start"`
	// Seconds = Warm + Bytes/bandwidth + RTT.
	Seconds float64 `json:"limit_s"`
}

// Warm is one warm local start: the image already unpacked, the page cache warm.
type Warm struct {
	Image string  `json:"image"`
	Rep   int     `json:"rep"`
	Ready float64 `json:"ready_s"`
}

// Summarize aggregates runs per image, mode and link, in the order of images, links and
// modes given, and adds the ratios against plain and against the limits.
func Summarize(runs []Run, images []string, links []Link, modes []Mode, limits []Limit) []Summary {
	var out []Summary
	for _, l := range links {
		for _, im := range images {
			var plain float64
			var group []Summary
			for _, m := range modes {
				st, ok := startStats(runs, func(r Run) bool { return r.Image == im && r.Mode == m && r.Link == l.Name },
					func(r Run) Start { return r.Start })
				if !ok {
					continue
				}
				s := Summary{Image: im, Mode: m, Link: l.Name, StartStats: st}
				if m == ModePlain {
					plain = s.Total.Median
				}
				for _, lim := range limits {
					if lim.Image == im && lim.Link == l.Name && lim.Seconds > 0 {
						s.VsLimit = s.Total.Median / lim.Seconds
					}
				}
				group = append(group, s)
			}
			for i := range group {
				if plain > 0 && group[i].Total.Median > 0 {
					group[i].VsPlain = plain / group[i].Total.Median
				}
			}
			stargzRatios(group)
			out = append(out, group...)
		}
	}
	return out
}

// Limits computes each image's limit on each link: the median warm start, and as the bytes
// read at start the median bytes the lazypull mode (or, without it, the lazypull-profile
// mode) fetched before ready on the fastest link
// (lazypull fetches what the start reads, compressed, plus the indexes: docs/benchmarks.md
// measured it at 0.48x the bytes the kernel reads for python3). Images without warm starts or
// without lazypull runs on the fastest link get no limit.
func Limits(runs []Run, warm []Warm, images []string, links []Link) []Limit {
	if len(links) == 0 {
		return nil
	}
	fastest := links[0]
	for _, l := range links {
		if l.Rate > fastest.Rate {
			fastest = l
		}
	}
	var out []Limit
	for _, im := range images {
		var w, b []float64
		for _, x := range warm {
			if x.Image == im {
				w = append(w, x.Ready)
			}
		}
		for _, m := range []Mode{ModeLazypull, ModeProfile} {
			for _, r := range runs {
				if r.Image == im && r.Mode == m && r.Link == fastest.Name {
					b = append(b, float64(r.Bytes))
				}
			}
			if len(b) > 0 {
				break
			}
		}
		if len(w) == 0 || len(b) == 0 {
			continue
		}
		ws, bs := NewStat(w).Median, int64(NewStat(b).Median)
		for _, l := range links {
			sec := ws + float64(bs)/l.bytesPerSecond() + l.RTT.Seconds()
			out = append(out, Limit{Image: im, Link: l.Name, Warm: ws, Bytes: bs, Seconds: sec})
		}
	}
	return out
}
