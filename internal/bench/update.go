package bench

import (
	"context"
	"fmt"
	"time"
)

// UpdateBar is the bar for the image update: lazypull fetches at most this fraction
// of the bytes the plain pull fetches to start v2.
const UpdateBar = 0.10

// UpdateRun is one image update on one node: v1 pulled and started to ready (untimed), then
// v2 pulled and started to ready, timed, with the link's counts for the v2 step only.
type UpdateRun struct {
	From  string `json:"from"` // v1
	To    string `json:"to"`   // v2
	Mode  Mode   `json:"mode"`
	Link  string `json:"link"`
	Rep   int    `json:"rep"`
	Order int    `json:"order"`
	// V1Bytes and V1Requests: what starting v1 fetched (the node's state before the update).
	V1Bytes    int64 `json:"v1_bytes_before_ready"`
	V1Requests int64 `json:"v1_requests_before_ready"`
	Start            // v2's
}

// progressLine is the run's line in the progress output.
func (r UpdateRun) progressLine() string {
	return fmt.Sprintf("update %s -> %s %-8s %-9s #%d: pull %6.2f s, to ready %6.2f s, total %6.2f s, %7.2f MB in %d requests (v1: %.2f MB)",
		r.From, r.To, r.Mode, r.Link, r.Rep, r.Pull, r.Ready, r.Total, float64(r.Bytes)/1e6, r.Requests, float64(r.V1Bytes)/1e6)
}

// updateRun is one update: a fresh node, v1 to ready, the page cache dropped, then v2 to
// ready with the link's counters read around that step only.
func updateRun(ctx context.Context, cfg Config, p *Proxy, j scenarioJob, pg *progress) (run UpdateRun, err error) {
	v1, v2 := Workloads[j.image], Workloads[Updates[j.image]]
	run = UpdateRun{From: v1.Name, To: v2.Name, Mode: j.mode, Link: j.link.Name, Rep: j.rep, Order: j.order}
	err = onFreshNode(ctx, cfg, j, pg, func(n *node) error {

		c0 := p.Counters()
		r1 := ref(p, v1, j.mode)
		pg.step("v1: pulling " + r1)
		if _, err := pullIn(ctx, cfg, n, j.mode, r1); err != nil {
			return j.err("v1: pull", err)
		}
		pg.step("v1: running to ready")
		if err := runReady(ctx, cfg, n, fmt.Sprintf("upd-%d-v1", j.order), v1, j.mode, r1); err != nil {
			return j.err("v1: run to ready", err)
		}
		d1 := p.Counters().Sub(c0)
		run.V1Bytes, run.V1Requests = d1.Down, d1.Requests
		// Whatever v1's start set off in the background (a prefetch, the stargz snapshotter's
		// whole-layer fetch) is v1's: the update is measured from a node that is done with v1, as
		// after v1 has served a while. The idle period is longer than the 5 s the stargz
		// snapshotter waits after the last mount before it fetches the layers in the background.
		if err := quiet(ctx, p, quietIdle, cfg.StepTimeout); err != nil {
			return j.err("v1: wait for the link to go quiet", err)
		}
		if err := dropCaches(nodePrograms(cfg, j.mode)...); err != nil {
			return j.err("drop caches", err)
		}

		r2 := ref(p, v2, j.mode)
		c1, t1 := p.Counters(), time.Now()
		pg.step("v2: pulling " + r2)
		took, err := pullIn(ctx, cfg, n, j.mode, r2)
		if err != nil {
			return j.err("v2: pull", err)
		}
		run.Pull = took.Seconds()
		pg.step("v2: running to ready")
		sctx, cancel := context.WithTimeout(ctx, cfg.StepTimeout)
		var c2 Counters
		took, err = n.runToReadyThen(sctx, fmt.Sprintf("upd-%d-v2", j.order), v2,
			func() { c2 = p.Counters() }, append(runArgs(j.mode), r2)...)
		cancel()
		if err != nil {
			return j.err("v2: run to ready", err)
		}
		run.Ready = took.Seconds()
		run.Total = run.Pull + run.Ready
		d := c2.Sub(c1)
		run.Bytes, run.Requests = d.Down, d.Requests
		run.BytesAfter, err = stopMeasured(cfg, p, n, j, pg, "v2: ", t1, run.Total, c2)
		return err
	})
	return run, err
}

// runReady runs im to ready on n within the step timeout.
func runReady(ctx context.Context, cfg Config, n *node, id string, im Image, m Mode, ref string) error {
	sctx, cancel := context.WithTimeout(ctx, cfg.StepTimeout)
	defer cancel()
	_, err := n.runToReady(sctx, id, im, append(runArgs(m), ref)...)
	return err
}

// quietIdle is how long the link must be idle before v2's step starts.
const quietIdle = 7 * time.Second

// quiet waits until the link has forwarded nothing for the period idle, at most max.
func quiet(ctx context.Context, p *Proxy, idle, max time.Duration) error {
	deadline := time.Now().Add(max)
	last, since := p.Counters(), time.Now()
	for time.Since(since) < idle {
		if time.Now().After(deadline) {
			return fmt.Errorf("still busy after %v", max)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if c := p.Counters(); c != last {
			last, since = c, time.Now()
		}
	}
	return nil
}

// UpdateSummary aggregates the update runs of one image, mode and link.
type UpdateSummary struct {
	From        string `json:"from"`
	To          string `json:"to"`
	Mode        Mode   `json:"mode"`
	Link        string `json:"link"`
	V1Bytes     Stat   `json:"v1_bytes_before_ready"`
	StartStats         // v2's
	PlainRatios        // the bar: BytesVsPlain at most UpdateBar
	// MeetsBar: BytesVsPlain <= UpdateBar, for the lazypull modes (the bar is theirs).
	MeetsBar *bool `json:"meets_bar,omitempty"`
}

// SummarizeUpdates aggregates update runs per image, link and mode, in the order given.
func SummarizeUpdates(runs []UpdateRun, images []string, links []Link, modes []Mode) []UpdateSummary {
	summarize := func(l Link, im string, m Mode) (UpdateSummary, bool) {
		keep := func(r UpdateRun) bool { return r.From == im && r.Mode == m && r.Link == l.Name }
		st, ok := startStats(runs, keep, func(r UpdateRun) Start { return r.Start })
		v1, _ := statsOf(runs, keep, func(r UpdateRun) float64 { return float64(r.V1Bytes) })
		return UpdateSummary{From: im, To: Updates[im], Mode: m, Link: l.Name, V1Bytes: v1[0], StartStats: st}, ok
	}
	// The bar is the lazypull modes', against plain's bytes.
	judge := func(group []UpdateSummary) {
		for i := range group {
			if s := &group[i]; s.Mode.lazy() {
				ok := s.BytesVsPlain <= UpdateBar
				s.MeetsBar = &ok
			}
		}
	}
	return summarizeGroups(links, images, modes, summarize, func(s *UpdateSummary) (Mode, Stat, Stat, *PlainRatios) {
		return s.Mode, s.Total, s.Bytes, &s.PlainRatios
	}, judge)
}

// updateTable is the update scenario's table: a row per image, link and mode.
func updateTable(res *Result) *table {
	if len(res.UpdateSummaries) == 0 {
		return nil
	}
	t := &table{
		Title:  "Image update: v1 started, then v2 pulled and started",
		Header: []string{"update", "link", "mode", "v2 pull s", "v2 create+run to ready s", "v2 total s", "v2 MB", "v2 requests", "x faster than plain", "bytes / plain", fmt.Sprintf("bar <= %.0f%%", UpdateBar*100), "v1 MB"},
		Note: fmt.Sprintf("Medians of %d runs, (min-max). One fresh node per run: v1 pulled and run to ready (untimed; v1 MB is what it fetched), the link left to go quiet (%.0f s without a byte), the page cache dropped, then v2 pulled and run to ready: its time, and the MB (10^6 bytes) and requests the registry sent through the link for that step only. The bar: lazypull fetches at most %.0f%% of the bytes of the plain pull.",
			res.ScenarioN, quietIdle.Seconds(), UpdateBar*100),
	}
	for _, s := range res.UpdateSummaries {
		r := []string{s.From + " -> " + s.To, s.Link, string(s.Mode), s.Pull.Format(2), s.Ready.Format(2), s.Total.Format(2),
			s.Bytes.Scale(1e-6).Format(2), s.Requests.Format(0), timesCell(s.VsPlain), percentCell(s.BytesVsPlain), "-", s.V1Bytes.Scale(1e-6).Format(1)}
		if s.MeetsBar != nil {
			r[10] = map[bool]string{true: "met", false: "MISSED"}[*s.MeetsBar]
		}
		t.Rows = append(t.Rows, r)
	}
	return t
}
