package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// ScaleRun is one start of Count containers of one image at once on one fresh node: one
// pull, then Count `ctr run` at the same moment, each to its readiness line.
type ScaleRun struct {
	Image string `json:"image"`
	Count int    `json:"count"`
	Mode  Mode   `json:"mode"`
	Link  string `json:"link"`
	Rep   int    `json:"rep"`
	Order int    `json:"order"`
	// Pull is the one pull; AllReady from the runs' start until the last container is ready;
	// Total their sum. FirstReady and MedianReady: the first and the median container.
	Pull        float64 `json:"pull_s"`
	FirstReady  float64 `json:"first_ready_s"`
	MedianReady float64 `json:"median_ready_s"`
	AllReady    float64 `json:"all_ready_s"`
	Total       float64 `json:"total_s"`
	// Bytes and Requests: the registry's egress through the link from the pull's start until
	// every container was ready; BytesAfter from then until the node was torn down.
	Bytes      int64 `json:"bytes_before_ready"`
	Requests   int64 `json:"requests_before_ready"`
	BytesAfter int64 `json:"bytes_after_ready"`
}

// progressLine is the run's line in the progress output.
func (r ScaleRun) progressLine() string {
	return fmt.Sprintf("scale %s x%-3d %-8s %-9s #%d: pull %6.2f s, all ready %6.2f s after, total %6.2f s, %7.2f MB in %d requests",
		r.Image, r.Count, r.Mode, r.Link, r.Rep, r.Pull, r.AllReady, r.Total, float64(r.Bytes)/1e6, r.Requests)
}

// scaleRun is one scale run: a fresh node, the page cache dropped, one pull, then j.count
// containers started at once.
func scaleRun(ctx context.Context, cfg Config, p *Proxy, j scenarioJob, pg *progress) (run ScaleRun, err error) {
	im := Workloads[j.image]
	run = ScaleRun{Image: im.Name, Count: j.count, Mode: j.mode, Link: j.link.Name, Rep: j.rep, Order: j.order}
	err = onFreshNode(ctx, cfg, j, pg, func(n *node) error {
		if err := dropCaches(nodePrograms(cfg, j.mode)...); err != nil {
			return j.err("drop caches", err)
		}
		r := ref(p, im, j.mode)
		c0, t0 := p.Counters(), time.Now()
		pg.step("pulling " + r)
		took, err := pullIn(ctx, cfg, n, j.mode, r)
		if err != nil {
			return j.err("pull", err)
		}
		run.Pull = took.Seconds()
		pg.step(fmt.Sprintf("running %d containers to ready", j.count))
		ready, err := startMany(ctx, cfg, n, fmt.Sprintf("scale-%d", j.order), im, j.mode, r, j.count)
		c1 := p.Counters()
		if err != nil {
			return j.err("run to ready", err)
		}
		run.FirstReady, run.MedianReady, run.AllReady = readySpread(ready)
		run.Total = run.Pull + run.AllReady
		d := c1.Sub(c0)
		run.Bytes, run.Requests = d.Down, d.Requests
		run.BytesAfter, err = stopMeasured(cfg, p, n, j, pg, "", t0, run.Total, c1)
		return err
	})
	return run, err
}

// startMany starts count containers of im at once and returns, for each, the time from the
// common start to its readiness line. It returns only when every `ctr run` has ended; the
// error names every container that failed.
func startMany(ctx context.Context, cfg Config, n *node, prefix string, im Image, m Mode, ref string, count int) ([]time.Duration, error) {
	sctx, cancel := context.WithTimeout(ctx, cfg.StepTimeout)
	defer cancel()
	ready := make([]time.Duration, count)
	errs := make([]error, count)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range count {
		wg.Go(func() {
			launched := time.Now()
			took, err := n.runToReady(sctx, fmt.Sprintf("%s-%d", prefix, i), im, append(runArgs(m), ref)...)
			if err != nil {
				errs[i] = fmt.Errorf("container %d of %d: %w", i+1, count, err)
				return
			}
			ready[i] = launched.Add(took).Sub(start)
		})
	}
	wg.Wait()
	return ready, errors.Join(errs...)
}

// readySpread returns the first, median and last of the ready times, in seconds.
func readySpread(ready []time.Duration) (first, median, last float64) {
	if len(ready) == 0 {
		return 0, 0, 0
	}
	xs := make([]float64, len(ready))
	for i, d := range ready {
		xs[i] = d.Seconds()
	}
	s := NewStat(xs)
	return slices.Min(xs), s.Median, slices.Max(xs)
}

// ScaleSummary aggregates the scale runs of one image, count, mode and link.
type ScaleSummary struct {
	Image       string `json:"image"`
	Count       int    `json:"count"`
	Mode        Mode   `json:"mode"`
	Link        string `json:"link"`
	Pull        Stat   `json:"pull_s"`
	AllReady    Stat   `json:"all_ready_s"`
	Total       Stat   `json:"total_s"`
	Bytes       Stat   `json:"bytes_before_ready"`
	Requests    Stat   `json:"requests_before_ready"`
	PlainRatios        // against plain's, for the same count
}

// SummarizeScale aggregates scale runs per link, count and mode, in the order given.
func SummarizeScale(runs []ScaleRun, image string, counts []int, links []Link, modes []Mode) []ScaleSummary {
	summarize := func(l Link, k int, m Mode) (ScaleSummary, bool) {
		st, ok := statsOf(runs, func(r ScaleRun) bool { return r.Image == image && r.Count == k && r.Mode == m && r.Link == l.Name },
			func(r ScaleRun) float64 { return r.Pull }, func(r ScaleRun) float64 { return r.AllReady },
			func(r ScaleRun) float64 { return r.Total }, func(r ScaleRun) float64 { return float64(r.Bytes) },
			func(r ScaleRun) float64 { return float64(r.Requests) })
		return ScaleSummary{Image: image, Count: k, Mode: m, Link: l.Name, Pull: st[0],
			AllReady: st[1], Total: st[2], Bytes: st[3], Requests: st[4]}, ok
	}
	return summarizeGroups(links, counts, modes, summarize, func(s *ScaleSummary) (Mode, Stat, Stat, *PlainRatios) {
		return s.Mode, s.Total, s.Bytes, &s.PlainRatios
	}, nil)
}

// scaleTable is the scale scenario's table: a row per link, count and mode.
func scaleTable(res *Result) *table {
	if len(res.ScaleSummaries) == 0 {
		return nil
	}
	t := &table{
		Title:  "Scale: N containers of one image started at once",
		Header: []string{"image", "N", "link", "mode", "pull s", "all ready s (after pull)", "total s", "registry egress MB", "requests", "x faster than plain", "bytes / plain"},
		Note: fmt.Sprintf("Medians of %d runs, (min-max). One fresh node per run, the page cache dropped: one pull, then N `ctr run` at once, each to its readiness line; total = pull + until the last is ready. Egress: the bytes (10^6) the registry sent through the link from the pull's start until all were ready; in the stargz modes it includes their background fetch of whole layers, which starts 5 s after the last layer mount when the start lasts longer.",
			res.ScenarioN),
	}
	for _, s := range res.ScaleSummaries {
		r := []string{s.Image, fmt.Sprint(s.Count), s.Link, string(s.Mode), s.Pull.Format(2), s.AllReady.Format(2), s.Total.Format(2),
			s.Bytes.Scale(1e-6).Format(2), s.Requests.Format(0), timesCell(s.VsPlain), percentCell(s.BytesVsPlain)}
		t.Rows = append(t.Rows, r)
	}
	return t
}
