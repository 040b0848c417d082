package bench

import (
	"fmt"
	"math"
	"testing"
)

func TestNewStat(t *testing.T) {
	for _, c := range []struct {
		in            []float64
		med, min, max float64
	}{
		{[]float64{3}, 3, 3, 3},
		{[]float64{5, 1, 3}, 3, 1, 5},
		{[]float64{4, 1, 3, 2}, 2.5, 1, 4},
		{[]float64{2, 2, 9, 2, 1}, 2, 1, 9},
	} {
		s := NewStat(c.in)
		if s.Median != c.med || s.Min != c.min || s.Max != c.max || s.N != len(c.in) {
			t.Errorf("NewStat(%v) = %+v, want median %v, min %v, max %v", c.in, s, c.med, c.min, c.max)
		}
	}
	if s := NewStat(nil); s.N != 0 || s.Format(2) != "-" {
		t.Errorf("NewStat(nil) = %+v, formatted %q", s, s.Format(2))
	}
	in := []float64{3, 1, 2}
	NewStat(in)
	if in[0] != 3 {
		t.Error("NewStat sorted its input in place")
	}
	if got := NewStat([]float64{1.234, 2, 0.5}).Format(2); got != "1.23 (0.50-2.00)" {
		t.Errorf("Format = %q", got)
	}
}

func approx(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestSummarizeAndLimits(t *testing.T) {
	fast, _ := ParseLink("1G/2ms")
	slow, _ := ParseLink("100M/20ms")
	links := []Link{slow, fast} // the fastest found by rate, not by position
	runs := []Run{
		{Image: "py", Mode: ModePlain, Link: slow.Name, Start: Start{Total: 10, Pull: 9, Ready: 1, Bytes: 60e6}},
		{Image: "py", Mode: ModePlain, Link: slow.Name, Start: Start{Total: 12, Pull: 11, Ready: 1, Bytes: 60e6}},
		{Image: "py", Mode: ModePlain, Link: slow.Name, Start: Start{Total: 11, Pull: 10, Ready: 1, Bytes: 60e6}},
		{Image: "py", Mode: ModeLazypull, Link: slow.Name, Start: Start{Total: 2, Bytes: 5e6, Requests: 30}},
		{Image: "py", Mode: ModeLazypull, Link: slow.Name, Start: Start{Total: 1, Bytes: 5e6, Requests: 40}},
		{Image: "py", Mode: ModeLazypull, Link: fast.Name, Start: Start{Total: 1, Bytes: 4e6}},
		{Image: "py", Mode: ModeLazypull, Link: fast.Name, Start: Start{Total: 1, Bytes: 6e6}},
		{Image: "other", Mode: ModePlain, Link: fast.Name, Start: Start{Total: 3}}, // not asked for
	}
	warm := []Warm{{Image: "py", Ready: 0.3}, {Image: "py", Ready: 0.5}, {Image: "py", Ready: 0.4}}
	lims := Limits(runs, warm, []string{"py"}, links)
	if len(lims) != 2 {
		t.Fatalf("limits %+v, want one per link", lims)
	}
	for _, l := range lims {
		if l.Warm != 0.4 || l.Bytes != 5e6 {
			t.Errorf("limit %+v: want warm 0.4 s and 5e6 bytes (the lazypull median on the fast link)", l)
		}
	}
	// 0.4 s + 5e6 B / 12.5e6 B/s + 0.02 s.
	if lims[0].Link != slow.Name || !approx(lims[0].Seconds, 0.4+0.4+0.02) {
		t.Errorf("limit on %s = %v s, want 0.82", lims[0].Link, lims[0].Seconds)
	}

	sums := Summarize(runs, []string{"py"}, links, []Mode{ModePlain, ModeLazypull}, lims)
	if len(sums) != 3 {
		t.Fatalf("%d summaries, want 3 (plain and lazypull on the slow link, lazypull on the fast): %+v", len(sums), sums)
	}
	p, l := sums[0], sums[1]
	if p.Mode != ModePlain || p.Total.Median != 11 || p.Total.Min != 10 || p.Total.Max != 12 || p.VsPlain != 1 {
		t.Errorf("plain summary %+v", p)
	}
	if l.Mode != ModeLazypull || l.Total.Median != 1.5 || !approx(l.VsPlain, 11/1.5) || l.Requests.Median != 35 {
		t.Errorf("lazypull summary %+v: want median 1.5, %v x faster than plain", l, 11/1.5)
	}
	if !approx(l.VsLimit, 1.5/0.82) {
		t.Errorf("lazypull / limit = %v, want %v", l.VsLimit, 1.5/0.82)
	}
	if f := sums[2]; f.Link != fast.Name || f.VsPlain != 0 {
		t.Errorf("fast link summary %+v: no plain run there, so no ratio to plain", f)
	}
	if got := Limits(runs, nil, []string{"py"}, links); len(got) != 0 {
		t.Errorf("limits without warm starts: %+v", got)
	}
}

func TestJobsShuffledAndComplete(t *testing.T) {
	l1, _ := ParseLink("1G/2ms")
	l2, _ := ParseLink("20M/50ms")
	ims := []Image{Workloads["python"], Workloads["node"]}
	a := jobs(ims, []Link{l1, l2}, []Mode{ModePlain, ModeLazypull}, 3, 42)
	b := jobs(ims, []Link{l1, l2}, []Mode{ModePlain, ModeLazypull}, 3, 42)
	c := jobs(ims, []Link{l1, l2}, []Mode{ModePlain, ModeLazypull}, 3, 43)
	if len(a) != 2*2*2*3 {
		t.Fatalf("%d jobs, want 24", len(a))
	}
	// A job's key: what it runs (an Image is not comparable: a user's has a command).
	key := func(j job) string { return fmt.Sprint(j.image.Name, j.mode, j.link, j.rep, j.order) }
	seen := map[string]bool{}
	same, sameC := true, true
	for i := range a {
		k := a[i]
		k.order = 0
		seen[key(k)] = true
		if key(a[i]) != key(b[i]) {
			same = false
		}
		if key(a[i]) != key(c[i]) {
			sameC = false
		}
		if a[i].order != i {
			t.Errorf("job %d has order %d", i, a[i].order)
		}
	}
	if len(seen) != 24 {
		t.Errorf("%d distinct jobs, want 24", len(seen))
	}
	if !same || sameC {
		t.Errorf("same seed same order: %v (want true); another seed the same order: %v (want false)", same, sameC)
	}
}
