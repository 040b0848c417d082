package bench

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// A scenario is one kind of measurement Bench makes. The cold starts (run.go) are the
// original one; update.go and scale.go add the image update and the many-containers start.
const (
	ScenarioCold   = "cold"
	ScenarioUpdate = "update"
	ScenarioScale  = "scale"
)

// Scenarios lists every scenario, in the order Bench runs them.
var Scenarios = []string{ScenarioCold, ScenarioUpdate, ScenarioScale}

// Updates maps an image to its next version for the update scenario: the same base layer,
// the app layer built again with a few packages and app files changed
// (scripts/build-bench-images.sh).
var Updates = map[string]string{
	"python": "python-v2",
}

// ScenarioConfig chooses the scenarios Bench runs and sizes the update and scale ones. They
// run on their own links (typically one), with N repetitions each, in the modes of Config.
type ScenarioConfig struct {
	// Run names the scenarios to run (ScenarioCold, ScenarioUpdate, ScenarioScale); empty
	// means the cold starts only, as before there were others.
	Run []string
	// Update lists the images whose update to their next version (Updates) is measured.
	Update []string
	// ScaleImage is the image started ScaleCounts times at once.
	ScaleImage  string
	ScaleCounts []int
	// Links are the links of the update and scale scenarios; N their repetitions.
	Links []Link
	N     int
}

// Has says whether scenario s is to run.
func (c ScenarioConfig) Has(s string) bool {
	if len(c.Run) == 0 {
		return s == ScenarioCold
	}
	return slices.Contains(c.Run, s)
}

// maxScale bounds the containers started at once: each is a ctr client and a shim on the node.
const maxScale = 200

// validate checks the scenarios and fills defaults; modes are the modes of the run.
func (c *ScenarioConfig) validate(modes []Mode) error {
	for _, s := range c.Run {
		if !slices.Contains(Scenarios, s) {
			return fmt.Errorf("unknown scenario %q (known: %s)", s, strings.Join(Scenarios, ", "))
		}
	}
	if !c.Has(ScenarioUpdate) && !c.Has(ScenarioScale) {
		return nil
	}
	if len(c.Links) == 0 {
		return fmt.Errorf("the %s scenarios need at least one link", strings.Join(c.extra(), " and "))
	}
	if c.N < 1 {
		return fmt.Errorf("need at least 1 run per scenario, link and mode, not %d", c.N)
	}
	for _, m := range modes {
		if !scenarioMode(m) {
			return fmt.Errorf("mode %q has no update or scale scenario yet", m)
		}
	}
	if c.Has(ScenarioUpdate) {
		if len(c.Update) == 0 {
			return fmt.Errorf("the update scenario needs an image (known: %s)", strings.Join(slices.Sorted(maps.Keys(Updates)), ", "))
		}
		for _, im := range c.Update {
			if _, ok := Updates[im]; !ok {
				return fmt.Errorf("image %q has no next version to update to (known: %s)", im, strings.Join(slices.Sorted(maps.Keys(Updates)), ", "))
			}
		}
	}
	if c.Has(ScenarioScale) {
		if _, ok := Workloads[c.ScaleImage]; !ok {
			return fmt.Errorf("scale image %q unknown (known: %s)", c.ScaleImage, strings.Join(slices.Sorted(maps.Keys(Workloads)), ", "))
		}
		if len(c.ScaleCounts) == 0 {
			return fmt.Errorf("the scale scenario needs at least one container count")
		}
		for _, n := range c.ScaleCounts {
			if n < 1 || n > maxScale {
				return fmt.Errorf("scale: %d containers at once: want 1 to %d", n, maxScale)
			}
		}
	}
	return nil
}

// extra names the scenarios other than the cold starts that are to run.
func (c ScenarioConfig) extra() []string {
	var out []string
	for _, s := range Scenarios[1:] {
		if c.Has(s) {
			out = append(out, s)
		}
	}
	return out
}

// images lists the images the scenarios need built and pushed, besides the cold ones.
func (c ScenarioConfig) images() []string {
	var out []string
	if c.Has(ScenarioUpdate) {
		for _, im := range c.Update {
			out = append(out, im, Updates[im])
		}
	}
	if c.Has(ScenarioScale) {
		out = append(out, c.ScaleImage)
	}
	return out
}

// ParseCounts parses a comma-separated list of container counts, e.g. "1,10,50".
func ParseCounts(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		var n int
		if _, err := fmt.Sscanf(f, "%d", &n); err != nil || fmt.Sprint(n) != f {
			return nil, fmt.Errorf("container count %q: want a whole number", f)
		}
		if n < 1 || n > maxScale {
			return nil, fmt.Errorf("container count %d: want 1 to %d", n, maxScale)
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no container counts in %q", s)
	}
	return out, nil
}

// scenarioMode says whether the update and scale scenarios know how to start a node, pull
// and run in mode m. A new mode adds a case here and in startFor, pullIn and runArgs.
func scenarioMode(m Mode) bool {
	return m == ModePlain || m.lazy() || isStargz(m)
}

// startFor starts a fresh node for mode m.
func startFor(ctx context.Context, cfg Config, m Mode) (*node, error) {
	if isStargz(m) {
		return startStargzNode(ctx, cfg)
	}
	return startNode(ctx, cfg.Scripts, cfg.Lazypull, cfg.WorkDir, m)
}

// pullIn pulls ref on node n the way mode m does, and returns how long it took.
func pullIn(ctx context.Context, cfg Config, n *node, m Mode, ref string) (time.Duration, error) {
	sctx, cancel := context.WithTimeout(ctx, cfg.StepTimeout)
	defer cancel()
	t0 := time.Now()
	var err error
	switch {
	case m.lazy():
		_, err = command(sctx, nil, cfg.Lazypull, "pull", "--address", n.sock(), "--snapshotter-address", n.snSock, "--namespace", namespace, "--plain-http", ref)
	case isStargz(m):
		err = stargzPull(sctx, n, ref)
	case m == ModePlain:
		_, err = command(sctx, nil, "ctr", n.ctr("image", "pull", "--plain-http", ref)...)
	default:
		err = fmt.Errorf("mode %q: no pull for this scenario", m)
	}
	return time.Since(t0), err
}

// runArgs are the `ctr run` flags of mode m before the image reference.
func runArgs(m Mode) []string {
	switch {
	case m.lazy():
		return []string{"--snapshotter", "lazypull"}
	case isStargz(m):
		return stargzArgs()
	}
	return nil
}

// scenarioJob is one run of the update or scale scenario.
type scenarioJob struct {
	scenario string
	image    string // the v1 image of an update, the image of a scale run
	count    int    // containers at once (scale)
	mode     Mode
	link     Link
	rep      int
	order    int
}

func (j scenarioJob) String() string {
	s := fmt.Sprintf("%s %s", j.scenario, j.image)
	if j.scenario == ScenarioScale {
		s += fmt.Sprintf(" x%d", j.count)
	}
	return fmt.Sprintf("%s %s %s #%d", s, j.mode, j.link.Name, j.rep)
}

func (j scenarioJob) err(step string, err error) *StepError {
	return &StepError{Image: j.image, Mode: j.mode, Link: j.link.Name, Rep: j.rep,
		Step: j.scenario + ": " + step, Err: err, Msg: err.Error()}
}

// scenarioJobs lists the update and scale runs, shuffled by seed like the cold runs, so that
// a drift of the machine does not fall on one mode.
func scenarioJobs(c ScenarioConfig, modes []Mode, seed uint64) []scenarioJob {
	var js []scenarioJob
	for _, l := range c.Links {
		for _, m := range modes {
			for r := 1; r <= c.N; r++ {
				if c.Has(ScenarioUpdate) {
					for _, im := range c.Update {
						js = append(js, scenarioJob{scenario: ScenarioUpdate, image: im, mode: m, link: l, rep: r})
					}
				}
				if c.Has(ScenarioScale) {
					for _, k := range c.ScaleCounts {
						js = append(js, scenarioJob{scenario: ScenarioScale, image: c.ScaleImage, count: k, mode: m, link: l, rep: r})
					}
				}
			}
		}
	}
	// Another stream than the cold runs' (jobs), from the same recorded seed.
	rng := rand.New(rand.NewPCG(seed^0x5ca1ab1e, seed))
	rng.Shuffle(len(js), func(i, j int) { js[i], js[j] = js[j], js[i] })
	for i := range js {
		js[i].order = i
	}
	return js
}

// ScenarioResults are the update and scale scenarios' runs and their summaries; Result
// embeds them.
type ScenarioResults struct {
	Scenarios       []string        `json:"scenarios,omitempty"`
	ScenarioLinks   []Link          `json:"scenario_links,omitempty"`
	ScenarioN       int             `json:"scenario_n,omitempty"`
	UpdateRuns      []UpdateRun     `json:"update_runs,omitempty"`
	UpdateSummaries []UpdateSummary `json:"update_summaries,omitempty"`
	ScaleRuns       []ScaleRun      `json:"scale_runs,omitempty"`
	ScaleSummaries  []ScaleSummary  `json:"scale_summaries,omitempty"`
}

// allImages lists every image to build and push: the cold starts' (when they run), then the
// scenarios', each once.
func (c Config) allImages() []string {
	var out []string
	if c.Scenarios.Has(ScenarioCold) {
		out = append(out, c.Images...)
	}
	for _, im := range c.Scenarios.images() {
		if !slices.Contains(out, im) {
			out = append(out, im)
		}
	}
	return out
}

// allLinks lists every link that needs a proxy: the cold starts' (when they run), then the
// scenarios', each once by name.
func (c Config) allLinks() []Link {
	var out []Link
	if c.Scenarios.Has(ScenarioCold) {
		out = append(out, c.Links...)
	}
	if len(c.Scenarios.extra()) > 0 {
		for _, l := range c.Scenarios.Links {
			if !slices.ContainsFunc(out, func(o Link) bool { return o.Name == l.Name }) {
				out = append(out, l)
			}
		}
	}
	return out
}

// runScenarios runs the update and scale jobs, appending each run to res as it finishes,
// then summarises them. proxies are the links' proxies by name.
func runScenarios(ctx context.Context, cfg Config, res *Result, proxies map[string]*Proxy, pg *progress) error {
	sc := cfg.Scenarios
	res.Scenarios = sc.Run
	if len(sc.extra()) == 0 {
		return nil
	}
	res.ScenarioLinks, res.ScenarioN = sc.Links, sc.N
	js := scenarioJobs(sc, cfg.Modes, cfg.Seed)
	for i, j := range js {
		p := proxies[j.link.Name]
		if p == nil {
			return j.err("start link", fmt.Errorf("no proxy for link %s", j.link.Name))
		}
		pg.prefix = fmt.Sprintf("[%d/%d] %s", i+1, len(js), j)
		var line string
		var err error
		switch j.scenario {
		case ScenarioUpdate:
			var r UpdateRun
			if r, err = updateRun(ctx, cfg, p, j, pg); err == nil {
				res.UpdateRuns, line = append(res.UpdateRuns, r), r.progressLine()
			}
		case ScenarioScale:
			var r ScaleRun
			if r, err = scaleRun(ctx, cfg, p, j, pg); err == nil {
				res.ScaleRuns, line = append(res.ScaleRuns, r), r.progressLine()
			}
		}
		if err != nil {
			return err
		}
		pg.done(fmt.Sprintf("[%d/%d] %s", i+1, len(js), line))
	}
	res.UpdateSummaries = SummarizeUpdates(res.UpdateRuns, sc.Update, sc.Links, cfg.Modes)
	res.ScaleSummaries = SummarizeScale(res.ScaleRuns, sc.ScaleImage, sc.ScaleCounts, sc.Links, cfg.Modes)
	return nil
}

// onFreshNode starts a fresh node for j's mode, has measure work on it and stops it, unless
// measure did (stopMeasured); the stop's error is returned when measure's is nil.
func onFreshNode(ctx context.Context, cfg Config, j scenarioJob, pg *progress, measure func(*node) error) (err error) {
	pg.step("starting a fresh node")
	n, err := startFor(ctx, cfg, j.mode)
	if err != nil {
		return j.err("start node", err)
	}
	defer func() {
		if e := n.stop(); e != nil && err == nil {
			err = j.err("stop node", e)
		}
	}()
	return measure(n)
}

// stopMeasured ends j's measured step, begun at t0 and ready readyAfter seconds later with
// the link's counters at ready: when cfg.LogDir is set, it writes the link's requests since
// t0 into it as NAME.requests, NAME from the job, and has n's stop keep a lazy node's
// snapshotter log as NAME.log, as the cold runs do; then it stops n and returns the bytes
// the link forwarded after ready. prefix starts the name of the keep-logs step in an error.
func stopMeasured(cfg Config, p *Proxy, n *node, j scenarioJob, pg *progress, prefix string, t0 time.Time, readyAfter float64, ready Counters) (int64, error) {
	name := fmt.Sprintf("%s-%s-%s-%s-%d", j.scenario, j.image, j.mode, j.link.Name, j.rep)
	if j.scenario == ScenarioScale {
		name = fmt.Sprintf("%s-%s-x%d-%s-%s-%d", j.scenario, j.image, j.count, j.mode, j.link.Name, j.rep)
	}
	if err := n.keepLogs(cfg.LogDir, name, p, j.mode, t0, "the measured step's start", readyAfter); err != nil {
		return 0, j.err(prefix+"keep logs", err)
	}
	pg.step("stopping the node")
	after, err := n.stopAfterReady(p, ready)
	if err != nil {
		return 0, j.err("stop node", err)
	}
	return after, nil
}
