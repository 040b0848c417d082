package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"lazypull/internal/profile"
)

// Config is what Bench measures and where.
type Config struct {
	Images []string // names of Workloads or of User's images
	// User are the user's images (ParseUserImage), benched like the built ones.
	User  []Image
	Links []Link
	Modes []Mode
	// N is the cold runs per image, mode and link; Warm the warm starts per image.
	N, Warm int
	// Seed orders the runs; it is recorded so that an order can be replayed.
	Seed uint64
	// Lazypull is the lazypull binary; Scripts the project's scripts/ directory (registry,
	// containerd, image builder); ImagesDir where the OCI layouts are built and kept.
	Lazypull, Scripts, ImagesDir string
	// WorkDir holds the registry and the nodes (removed at the end); keep its path short,
	// unix socket paths live in it.
	WorkDir string
	// LogDir, when set, keeps each run's requests through the link as
	// IMAGE-MODE-LINK-REP.requests and each lazy or stargz run's snapshotter log as ….log.
	LogDir string
	// Stargz is the containerd-stargz-grpc of the stargz modes (FindStargz); "" skips them.
	Stargz string
	// StepTimeout bounds each pull and each run to ready.
	StepTimeout time.Duration
	// Progress gets one line per run (and live steps when Terminal).
	Progress io.Writer
	Terminal bool
	Log      *slog.Logger
	// Command is the command line, for the report.
	Command string
	// Scenarios: which scenarios run (the cold starts alone when empty), and the update and
	// scale scenarios' sizes (scenario.go).
	Scenarios ScenarioConfig
	// IndexSpan is `lazypull index --span` for the indexed modes (0: its default).
	IndexSpan int64
}

// Result is everything one `lazypull-bench e2e` measured. Complete is false when it stopped on
// a failure; then Failure says where, and the runs so far are kept but summarised nowhere.
type Result struct {
	Complete  bool        `json:"complete"`
	Failure   *StepError  `json:"failure,omitempty"`
	Command   string      `json:"command"`
	Started   time.Time   `json:"started"`
	Finished  time.Time   `json:"finished"`
	Machine   Machine     `json:"machine"`
	Seed      uint64      `json:"seed"`
	N         int         `json:"n"`
	Links     []Link      `json:"links"`
	Modes     []Mode      `json:"modes"`
	Skipped   []string    `json:"skipped,omitempty"`
	Images    []ImageInfo `json:"images"`
	Runs      []Run       `json:"runs"`
	Warm      []Warm      `json:"warm"`
	Limits    []Limit     `json:"limits,omitempty"`
	Summaries []Summary   `json:"summaries,omitempty"`
	ScenarioResults
}

// ImageInfo describes one workload's image as pushed.
type ImageInfo struct {
	Image
	// Layers and Bytes: the original (gzip) image's layers and their total size; LazyBytes the
	// converted image's layers.
	Layers    int   `json:"layers"`
	Bytes     int64 `json:"bytes"`
	LazyBytes int64 `json:"lazy_bytes"`
	// Profile is the prefetch profile recorded for ModeProfile, when that mode runs.
	Profile *ProfileInfo `json:"profile,omitempty"`
	// Auto is the automatic profile a first node pushed for ModeAuto, when that mode runs
	// and the image starts cold (not for an update's v2, which uses v1's).
	Auto *ProfileInfo `json:"auto_profile,omitempty"`
	// EstargzBytes and EstargzOptBytes: the eStargz images' layers (stargz modes only).
	EstargzBytes    int64 `json:"estargz_bytes,omitempty"`
	EstargzOptBytes int64 `json:"estargz_opt_bytes,omitempty"`
	// Indexed: the indexed copy of the original image (indexed modes only).
	Indexed *IndexedInfo `json:"indexed,omitempty"`
}

// ProfileInfo describes the prefetch profile recorded for an image.
type ProfileInfo struct {
	Digest string `json:"digest"`
	Files  int    `json:"files"`
	// Bytes is the file bytes the profile names (uncompressed).
	Bytes int64 `json:"bytes"`
}

// Machine is where the run happened.
type Machine struct {
	CPUs      int    `json:"cpus"`
	CPU       string `json:"cpu"`
	Kernel    string `json:"kernel"`
	Go        string `json:"go"`
	LoadStart string `json:"loadavg_start"`
	LoadEnd   string `json:"loadavg_end"`
}

// StepError is a failed step: which image, mode, link and repetition, and which step.
type StepError struct {
	Image string `json:"image,omitempty"`
	Mode  Mode   `json:"mode,omitempty"`
	Link  string `json:"link,omitempty"`
	Rep   int    `json:"rep,omitempty"`
	Step  string `json:"step"`
	Err   error  `json:"-"`
	Msg   string `json:"error"`
}

func (e *StepError) Error() string {
	var where []string
	if e.Image != "" {
		where = append(where, "image "+e.Image)
	}
	if e.Mode != "" {
		where = append(where, "mode "+string(e.Mode))
	}
	if e.Link != "" {
		where = append(where, "link "+e.Link)
	}
	if e.Rep > 0 {
		where = append(where, fmt.Sprintf("run %d", e.Rep))
	}
	return fmt.Sprintf("bench failed: %s: step %q: %v", strings.Join(where, ", "), e.Step, e.Err)
}

func (e *StepError) Unwrap() error { return e.Err }

func stepErr(j job, step string, err error) *StepError {
	return &StepError{Image: j.image.Name, Mode: j.mode, Link: j.link.Name, Rep: j.rep, Step: step, Err: err, Msg: err.Error()}
}

// job is one cold run to do.
type job struct {
	image Image
	mode  Mode
	link  Link
	rep   int // from 1
	order int
}

// Validate checks cfg and fills defaults.
func (c *Config) Validate() error {
	cold := c.Scenarios.Has(ScenarioCold)
	if len(c.Modes) == 0 || cold && (len(c.Images) == 0 || len(c.Links) == 0) {
		return errors.New("need at least one image, link and mode")
	}
	for _, im := range c.Images {
		if _, ok := c.workload(im); !ok {
			return fmt.Errorf("unknown image %q (known: %s)", im, strings.Join(slices.Sorted(maps.Keys(Workloads)), ", "))
		}
	}
	for _, m := range c.Modes {
		if m != ModePlain && !m.lazy() && !isStargz(m) && !isSoci(m) {
			return fmt.Errorf("unknown mode %q (known: plain, lazypull, lazypull-profile, lazypull-auto, lazypull-index, lazypull-index-profile, estargz, estargz-opt, soci)", m)
		}
	}
	if cold && c.N < 1 {
		return fmt.Errorf("need at least 1 run per image, link and mode, not %d", c.N)
	}
	if err := c.Scenarios.validate(c.Modes); err != nil {
		return err
	}
	if c.Warm < 1 {
		c.Warm = 1
	}
	if c.StepTimeout <= 0 {
		c.StepTimeout = 10 * time.Minute
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	return nil
}

// jobs lists every cold run, N of each image, mode and link, in an order shuffled by seed.
func jobs(images []Image, links []Link, modes []Mode, n int, seed uint64) []job {
	var js []job
	for _, im := range images {
		for _, l := range links {
			for _, m := range modes {
				for r := 1; r <= n; r++ {
					js = append(js, job{image: im, mode: m, link: l, rep: r})
				}
			}
		}
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	rng.Shuffle(len(js), func(i, j int) { js[i], js[j] = js[j], js[i] })
	for i := range js {
		js[i].order = i
	}
	return js
}

// Bench builds and pushes the images, then runs every cold run and the warm starts, and
// returns the result. On a failure it returns the result so far (Complete false, Failure
// set) together with the *StepError.
func Bench(ctx context.Context, cfg Config) (res *Result, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	note, err := stargzSkip(&cfg)
	if err != nil {
		return nil, err
	}
	sociNote, err := sociSkip(&cfg)
	if err != nil {
		return nil, err
	}
	res = &Result{Command: cfg.Command, Started: time.Now().UTC(), Machine: machine(), Seed: cfg.Seed,
		N: cfg.N, Links: cfg.Links, Modes: cfg.Modes}
	for _, n := range []string{note, sociNote} {
		if n != "" {
			res.Skipped = append(res.Skipped, n)
		}
	}
	fail := func(err error) (*Result, error) {
		var e *StepError
		if !errors.As(err, &e) {
			e = &StepError{Step: "unknown", Err: err, Msg: err.Error()}
		}
		res.Failure = e
		res.Finished = time.Now().UTC()
		res.Machine.LoadEnd = loadavg()
		return res, e
	}
	pg := &progress{w: cfg.Progress, term: cfg.Terminal}
	cold := cfg.Scenarios.Has(ScenarioCold)
	var images []Image
	if cold {
		for _, n := range cfg.Images {
			im, _ := cfg.workload(n)
			images = append(images, im)
		}
	}
	build := cfg.allImages()

	// Images: built (cached) by the script from Debian packages; the user's are not built.
	if b := cfg.toBuild(build); len(b) > 0 {
		pg.step("building images " + strings.Join(b, " ") + " (cached after the first time)")
		if _, err := command(ctx, nil, filepath.Join(cfg.Scripts, "build-bench-images.sh"), append([]string{cfg.ImagesDir}, b...)...); err != nil {
			return fail(&StepError{Step: "build images", Err: err, Msg: err.Error()})
		}
	}

	for _, d := range []string{cfg.WorkDir, cfg.LogDir} {
		if d == "" {
			continue
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	reg, err := startRegistry(ctx, cfg.Scripts, filepath.Join(cfg.WorkDir, "registry"))
	if err != nil {
		return fail(&StepError{Step: "start registry", Err: err, Msg: err.Error()})
	}
	defer func() {
		if e := reg.stop(); e != nil {
			cfg.Log.Warn("stop the registry", "err", e)
		}
	}()

	if res.Images, err = pushImages(ctx, cfg, reg.addr, build, pg); err != nil {
		return fail(err)
	}
	if err := pushStargzImages(ctx, cfg, reg.addr, res.Images, pg); err != nil {
		return fail(err)
	}
	if err := pushSociImages(ctx, cfg, reg.addr, res.Images, pg); err != nil {
		return fail(err)
	}
	if err := pushIndexedImages(ctx, cfg, reg.addr, res.Images, pg); err != nil {
		return fail(err)
	}

	proxies, closeProxies, err := startProxies(cfg, reg.addr)
	defer closeProxies()
	if err != nil {
		return fail(err)
	}
	if err := startRounds(ctx, cfg, res, proxies, images, pg); err != nil {
		return fail(err)
	}

	if cold {
		res.Limits = Limits(res.Runs, res.Warm, cfg.Images, cfg.Links)
		res.Summaries = Summarize(res.Runs, cfg.Images, cfg.Links, cfg.Modes, res.Limits)
	}
	if err := runScenarios(ctx, cfg, res, proxies, pg); err != nil {
		return fail(err)
	}
	res.Complete = true
	res.Finished = time.Now().UTC()
	res.Machine.LoadEnd = loadavg()
	return res, nil
}

// pushImages pushes and converts each image of build into the registry at reg, recording
// its prefetch profile too when the profile mode runs.
func pushImages(ctx context.Context, cfg Config, reg string, build []string, pg *progress) ([]ImageInfo, error) {
	var infos []ImageInfo
	for _, name := range build {
		im, _ := cfg.workload(name)
		pg.step("pushing and converting " + im.Name)
		info, err := pushImage(ctx, cfg, reg, im)
		if err != nil {
			return infos, &StepError{Image: im.Name, Step: "push and convert", Err: err, Msg: err.Error()}
		}
		if slices.Contains(cfg.Modes, ModeProfile) {
			pg.step("recording the prefetch profile of " + im.Name)
			if info.Profile, err = recordProfile(ctx, cfg, im, reg+"/bench/"+im.Name+":lazy", im.Name+".profile.json"); err != nil {
				return infos, &StepError{Image: im.Name, Mode: ModeProfile, Step: "record profile", Err: err, Msg: err.Error()}
			}
		}
		if slices.Contains(cfg.Modes, ModeAuto) {
			pg.step("converting " + im.Name + " for the automatic profile mode")
			if info.Auto, err = pushAuto(ctx, cfg, reg, im); err != nil {
				return infos, &StepError{Image: im.Name, Mode: ModeAuto, Step: "record the automatic profile", Err: err, Msg: err.Error()}
			}
		}
		infos = append(infos, info)
	}
	return infos, nil
}

// startProxies starts one emulated link in front of the registry at reg for each link the
// run uses, by link name; closeAll closes those started, also when err is not nil.
func startProxies(cfg Config, reg string) (proxies map[string]*Proxy, closeAll func(), err error) {
	proxies = map[string]*Proxy{}
	closeAll = func() {
		for _, p := range proxies {
			p.Close()
		}
	}
	for _, l := range cfg.allLinks() {
		p, err := NewProxy(reg, l, cfg.Log)
		if err != nil {
			return proxies, closeAll, &StepError{Link: l.Name, Step: "start link", Err: err, Msg: err.Error()}
		}
		proxies[l.Name] = p
	}
	return proxies, closeAll, nil
}

// startRounds runs the warm local starts of images over the fastest link, then the cold
// starts of every job, in the jobs' shuffled order, into res.
func startRounds(ctx context.Context, cfg Config, res *Result, proxies map[string]*Proxy, images []Image, pg *progress) error {
	var fastest Link // none when the cold starts do not run
	for i, l := range cfg.Links {
		if i == 0 || l.Rate > fastest.Rate {
			fastest = l
		}
	}

	js := jobs(images, cfg.Links, cfg.Modes, cfg.N, cfg.Seed)
	total := len(js) + len(images)
	for i, im := range images {
		pg.prefix = fmt.Sprintf("[%d/%d] %s warm", i+1, total, im.Name)
		w, err := warmStarts(ctx, cfg, proxies[fastest.Name], im, pg)
		if err != nil {
			return err
		}
		res.Warm = append(res.Warm, w...)
		var ws []float64
		for _, x := range w {
			ws = append(ws, x.Ready)
		}
		pg.done(fmt.Sprintf("[%d/%d] %-8s warm local start (%d): ready %s s", i+1, total, im.Name, len(w), NewStat(ws).Format(2)))
	}
	for i, j := range js {
		pg.prefix = fmt.Sprintf("[%d/%d] %s %s %s #%d", len(images)+i+1, total, j.image.Name, j.mode, j.link.Name, j.rep)
		r, err := coldRun(ctx, cfg, proxies[j.link.Name], j, pg)
		if err != nil {
			return err
		}
		res.Runs = append(res.Runs, r)
		pg.done(fmt.Sprintf("[%d/%d] %-8s %-8s %-9s #%d: pull %6.2f s, to ready %6.2f s, total %6.2f s, %7.2f MB in %d requests",
			len(images)+i+1, total, j.image.Name, j.mode, j.link.Name, j.rep, r.Pull, r.Ready, r.Total, float64(r.Bytes)/1e6, r.Requests))
	}
	return nil
}

// pushImage pushes im (the builder's OCI layout, or a user's image from its source) to the
// registry as REG/bench/NAME:orig (skopeo) and converts it to REG/bench/NAME:lazy (lazypull
// convert).
func pushImage(ctx context.Context, cfg Config, reg string, im Image) (ImageInfo, error) {
	info := ImageInfo{Image: im}
	orig, lazy := reg+"/bench/"+im.Name+":orig", reg+"/bench/"+im.Name+":lazy"
	src := im.source(cfg.ImagesDir)
	args := append(append([]string{"copy", "--quiet", "--dest-tls-verify=false"}, skopeoSourceArgs(src)...), src, "docker://"+orig)
	if _, err := command(ctx, nil, "skopeo", args...); err != nil {
		return info, err
	}
	if _, err := command(ctx, nil, cfg.Lazypull, "convert", orig, lazy); err != nil {
		return info, err
	}
	for i, ref := range []string{orig, lazy} {
		r, err := name.ParseReference(ref, name.Insecure)
		if err != nil {
			return info, err
		}
		img, err := remote.Image(r, remote.WithContext(ctx))
		if err != nil {
			return info, fmt.Errorf("read back %s: %w", ref, err)
		}
		m, err := img.Manifest()
		if err != nil {
			return info, fmt.Errorf("read back %s: %w", ref, err)
		}
		var sum int64
		for _, l := range m.Layers {
			sum += l.Size
		}
		if i == 0 {
			info.Layers, info.Bytes = len(m.Layers), sum
		} else {
			info.LazyBytes = sum
		}
	}
	return info, nil
}

// recordProfile runs `lazypull profile` on the image ref (converted, or indexed), into the
// file doc of the log directory, straight from the registry
// (not through a link: the profile is made once, before the runs, like a CI job would),
// until its readiness line, and pushes the profile beside the image. The workload runs as
// the runs run it, a containerd container (a node of its own): what a container reads at
// start is not quite what a chrooted process reads (a JVM, clang), and every read the
// profile misses is a request before ready.
func recordProfile(ctx context.Context, cfg Config, im Image, ref, doc string) (_ *ProfileInfo, err error) {
	dir := cfg.WorkDir
	if cfg.LogDir != "" {
		dir = cfg.LogDir // kept with the runs' logs
	}
	n, err := startNode(ctx, cfg.Scripts, cfg.Lazypull, cfg.WorkDir, ModePlain)
	if err != nil {
		return nil, fmt.Errorf("start a node to record on: %w", err)
	}
	defer func() {
		if e := n.stop(); e != nil && err == nil {
			err = fmt.Errorf("stop the node recorded on: %w", e)
		}
	}()
	doc = filepath.Join(dir, doc)
	args := []string{"profile", "--plain-http", "--runtime", "containerd", "--address", n.sock(), "--duration", "5m", "--output", doc}
	if im.Ready != "" { // else until it exits
		args = append(args, "--until", im.Ready)
	}
	args = append(args, ref)
	if len(im.Cmd) > 0 {
		args = append(append(args, "--"), im.Cmd...)
	}
	out, err := command(ctx, nil, cfg.Lazypull, args...)
	if err != nil {
		return nil, err
	}
	// The digest is the last line on stdout; the workload's output went to stderr, before.
	var dgst string
	for line := range strings.SplitSeq(out, "\n") {
		if strings.HasPrefix(line, "sha256:") {
			dgst = strings.TrimSpace(line)
		}
	}
	if dgst == "" {
		return nil, fmt.Errorf("lazypull profile printed no digest:\n%s", tail(out, 20))
	}
	p, err := profile.ReadFile(doc)
	if err != nil {
		return nil, fmt.Errorf("read back the profile: %w", err)
	}
	return &ProfileInfo{Digest: dgst, Files: len(p.Files), Bytes: p.Bytes()}, nil
}

// ref is the image's reference through the link's proxy, in mode m.
func ref(p *Proxy, im Image, m Mode) string {
	tag := "orig"
	if m == ModeAuto {
		return p.Addr() + "/" + autoRepo + ":" + im.Name
	}
	if isIndexed(m) {
		return p.Addr() + "/" + indexRepo + ":" + im.Name
	}
	if m.lazy() {
		tag = "lazy"
	} else if isStargz(m) {
		tag = stargzTag(m)
	} else if isSoci(m) {
		tag = sociTag
	}
	return p.Addr() + "/bench/" + im.Name + ":" + tag
}

// coldRun is one run: a fresh node, the page cache dropped, then pull and run to ready,
// timed, with the link's counters read at the start and at ready.
func coldRun(ctx context.Context, cfg Config, p *Proxy, j job, pg *progress) (run Run, err error) {
	run = Run{Image: j.image.Name, Mode: j.mode, Link: j.link.Name, Rep: j.rep, Order: j.order}
	lazy := j.mode.lazy()
	pg.step("starting a fresh node")
	var n *node
	if isStargz(j.mode) {
		n, err = startStargzNode(ctx, cfg)
	} else if isSoci(j.mode) {
		n, err = startSociNode(ctx, cfg)
	} else {
		n, err = startNode(ctx, cfg.Scripts, cfg.Lazypull, cfg.WorkDir, j.mode)
	}
	if err != nil {
		return run, stepErr(j, "start node", err)
	}
	defer func() {
		if e := n.stop(); e != nil && err == nil {
			err = stepErr(j, "stop node", e)
		}
	}()
	if err := dropCaches(nodePrograms(cfg, j.mode)...); err != nil {
		return run, stepErr(j, "drop caches", err)
	}
	r := ref(p, j.image, j.mode)
	c0 := p.Counters()
	pg.step("pulling " + r)
	sctx, cancel := context.WithTimeout(ctx, cfg.StepTimeout)
	t0 := time.Now()
	if lazy {
		_, err = command(sctx, nil, cfg.Lazypull, "pull", "--address", n.sock(), "--snapshotter-address", n.snSock, "--namespace", namespace, "--plain-http", r)
	} else if isStargz(j.mode) {
		err = stargzPull(sctx, n, r)
	} else if isSoci(j.mode) {
		err = sociPull(sctx, cfg, n, r)
	} else {
		_, err = command(sctx, nil, "ctr", n.ctr("image", "pull", "--plain-http", r)...)
	}
	cancel()
	if err != nil {
		return run, stepErr(j, "pull", err)
	}
	run.Pull = time.Since(t0).Seconds()
	pg.step("running to ready")
	sctx, cancel = context.WithTimeout(ctx, cfg.StepTimeout)
	var args []string
	if lazy {
		args = append(args, "--snapshotter", "lazypull")
	} else if isStargz(j.mode) {
		args = append(args, stargzArgs()...)
	} else if isSoci(j.mode) {
		args = append(args, sociArgs()...)
	}
	var c1 Counters
	took, err := n.runToReadyThen(sctx, fmt.Sprintf("bench-%d", j.order), j.image,
		func() { c1 = p.Counters() }, append(args, r)...)
	cancel()
	if err != nil {
		return run, stepErr(j, "run to ready", err)
	}
	run.Ready = took.Seconds()
	run.Total = run.Pull + run.Ready
	d := c1.Sub(c0)
	run.Bytes, run.Requests = d.Down, d.Requests
	pg.step("stopping the node")
	name := fmt.Sprintf("%s-%s-%s-%d", j.image.Name, j.mode, j.link.Name, j.rep)
	if err := n.keepLogs(cfg.LogDir, name, p, j.mode, t0, "the pull's start", run.Total); err != nil {
		return run, stepErr(j, "keep the request log", err)
	}
	if run.BytesAfter, err = n.stopAfterReady(p, c1); err != nil {
		return run, stepErr(j, "stop node", err)
	}
	return run, nil
}

// warmStarts measures cfg.Warm warm local starts of im with plain containerd: pulled and run
// once (untimed), then run again, timed, with everything local and in the page cache.
func warmStarts(ctx context.Context, cfg Config, p *Proxy, im Image, pg *progress) ([]Warm, error) {
	j := job{image: im, mode: ModePlain, link: p.Link()}
	pg.step("starting a node")
	n, err := startNode(ctx, cfg.Scripts, cfg.Lazypull, cfg.WorkDir, ModePlain)
	if err != nil {
		return nil, stepErr(j, "warm: start node", err)
	}
	defer n.stop()
	r := ref(p, im, ModePlain)
	sctx, cancel := context.WithTimeout(ctx, cfg.StepTimeout)
	defer cancel()
	pg.step("pulling " + r)
	if _, err := command(sctx, nil, "ctr", n.ctr("image", "pull", "--plain-http", r)...); err != nil {
		return nil, stepErr(j, "warm: pull", err)
	}
	var out []Warm
	for i := 0; i <= cfg.Warm; i++ {
		pg.step(fmt.Sprintf("run %d of %d", i, cfg.Warm))
		took, err := n.runToReady(sctx, fmt.Sprintf("warm-%d", i), im, r)
		if err != nil {
			return nil, stepErr(j, "warm: run to ready", err)
		}
		if i > 0 { // the first run warms the page cache
			out = append(out, Warm{Image: im.Name, Rep: i, Ready: took.Seconds()})
		}
	}
	if err := n.stop(); err != nil {
		return nil, stepErr(j, "warm: stop node", err)
	}
	n.ctd = ""
	return out, nil
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), LoadStart: loadavg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// progress prints one line per finished run; on a terminal it also shows the current step
// of the run in progress on a live line.
type progress struct {
	w      io.Writer
	term   bool
	prefix string
}

func (p *progress) step(s string) {
	if p.term {
		fmt.Fprintf(p.w, "\r\033[K%s: %s", p.prefix, s)
	}
}

func (p *progress) done(line string) {
	if p.term {
		fmt.Fprint(p.w, "\r\033[K")
	}
	fmt.Fprintln(p.w, line)
}
