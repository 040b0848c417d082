package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"lazypull/internal/bench"
	"lazypull/internal/cmdline"
)

// The default set: sized to run unattended in under 30 minutes on a 2-CPU machine.
const (
	defaultBenchImages = "python,node,gcc"
	defaultBenchLinks  = "1G/2ms,100M/20ms,20M/50ms"
	// Plain eStargz (estargz) is left to --modes: optimized eStargz is stargz-snapshotter
	// at its best, the one to beat, and a fifth mode would take the set past 30 minutes.
	defaultBenchModes = "plain,lazypull,lazypull-profile,estargz-opt"
	defaultBenchN     = 3
	// The update and scale scenarios on one link, once each: with the three default modes
	// they took 1 min 49 s on top of the cold set (python-v2 pushed, converted, profiled;
	// 6 runs). --scale 1,10,50 took 6 min 45 s for both, 40-60 s for one run of 50 pythons
	// on 2 busy CPUs. 1 at once is the cold start again; 10 is the default.
	defaultBenchScenarios     = "cold,update,scale"
	defaultBenchUpdate        = "python"
	defaultBenchScaleImage    = "python"
	defaultBenchScale         = "10"
	defaultBenchScenarioLinks = "100M/20ms"
	defaultBenchScenarioN     = 1
)

var e2eCommand = &subcommand{
	name:    "e2e",
	summary: "time cold container starts, plain containerd vs lazypull (vs stargz), over emulated links",
	help: `
A HelloBench-like benchmark: for every image, link and mode, N cold starts (containerd and
the snapshotter restarted on fresh roots, the page cache dropped, in random order), timed
from the pull's start to the container's readiness line, with the bytes and requests the
link forwarded until then. Needs root, and the packages of scripts/deps.sh.

The images are built from Debian packages by scripts/build-bench-images.sh (cached), pushed
to a private registry on loopback as the original gzip image (mode plain: ctr image pull +
ctr run) and converted with lazypull convert (mode lazypull: lazypull pull + ctr run
--snapshotter lazypull, prefetch off). With mode lazypull-profile, a prefetch profile of
each image is recorded first (lazypull profile, until the readiness line) and pushed beside
it, and the snapshotter fetches what it names first. With mode lazypull-auto, the image is
converted into a repository of its own and run once on a first node whose snapshotter
records the start and pushes it (auto_profile_push); the runs find that profile instead. Modes estargz and estargz-opt convert
it with ctr-remote (image convert --estargz; image optimize, which runs the image's
command) and run it on stargz-snapshotter: bin/tools/containerd-stargz-grpc (make deps
builds it), ctr-remote image rpull, ctr run --snapshotter stargz; the conversions are cached
beside --images-dir's layouts and never timed. Mode soci runs AWS's SOCI snapshotter on the
original gzip layers: bin/tools/soci-grpc (make deps builds it from tools/soci-grpc) makes
and pushes its SOCI index (soci-grpc create, never timed), soci-grpc rpull, ctr run
--snapshotter soci. Modes lazypull-index and lazypull-index-profile run the original gzip
image, unconverted, in a repository of its own with an index artifact pushed beside it by
lazypull index (never timed; --index-span is its --span), on the lazypull snapshotter as modes lazypull and
lazypull-profile do (the profile recorded with lazypull profile on the indexed image).
Each link is a shaping proxy in front of the
registry: RATE/RTT,
bandwidth in bits/s shared by the link's connections, plus the round trip.

At the end it prints one table per link (medians, min-max), the physical limit per image
(warm local start + bytes read at start / bandwidth + one round trip) and writes
results.json, chart.png and report.html into --out. A failure stops it with the image, mode,
link and step named; the results so far are written, marked incomplete, and no table is.

--scenarios adds two more measurements, on --scenario-links, --scenario-n times each:
  update  v1 of an image (--update) pulled and started on a fresh node, then its v2 (same base
          layer, a few packages and app files changed): the v2 step's time, bytes and
          requests, and lazypull's bytes against the bar of 10% of plain's.
  scale   one pull, then N containers of --scale-image started at once, for each N of --scale:
          the time until all are ready and the registry's egress.
--scenarios update,scale runs them without the cold starts.

--user-image benches an image of yours instead of (or, with --images, beside) the built ones:
an OCI layout directory, oci:DIR:TAG, docker://REF or a registry reference (a registry on
loopback is read over plain HTTP). It is copied into the private registry as it is (skopeo),
converted with lazypull convert, profiled when lazypull-profile runs, and started cold like
the others, in the same modes, links and report, as --user-name. It runs --user-cmd if given,
else its own entrypoint and command, and is ready at the first output line containing
--user-ready, or, without --user-ready, when the command exits with status 0 (the time then
includes ctr's removal of the container). With --user-image the scenarios default to cold.`,
	flags: func(fs *flag.FlagSet) any {
		f := &benchFlags{}
		fs.StringVar(&f.images, "images", defaultBenchImages, "comma-separated `images`: python, node, gcc, postgres, jdk, big, ml (3 GiB)")
		fs.StringVar(&f.links, "links", defaultBenchLinks, "comma-separated `links`, RATE/RTT each (bits/s with K, M, G)")
		fs.StringVar(&f.modes, "modes", defaultBenchModes, "comma-separated `modes`: plain, lazypull, lazypull-profile, lazypull-auto, lazypull-index, lazypull-index-profile, estargz, estargz-opt, soci")
		fs.IntVar(&f.n, "n", defaultBenchN, "cold runs per image, link and mode")
		fs.Int64Var(&f.indexSpan, "index-span", 0, "`bytes` between checkpoints of the indexed modes' index (lazypull index --span; 0: its default)")
		fs.IntVar(&f.warm, "warm", 3, "warm local starts per image (for the limit)")
		fs.Uint64Var(&f.seed, "seed", 0, "order the runs with this `seed` (0: a random one, recorded)")
		fs.StringVar(&f.out, "out", "", "write results.json, chart.png, report.html into `dir` (default bench-results/DATE)")
		fs.StringVar(&f.scripts, "scripts", "scripts", "the project's scripts `dir` (registry, containerd, image builder)")
		fs.StringVar(&f.lazypull, "lazypull", "", "the lazypull `binary` measured (default: lazypull beside lazypull-bench, i.e. bin/lazypull)")
		fs.StringVar(&f.imagesDir, "images-dir", "/var/cache/lazypull-bench/images", "where the image builder keeps the OCI layouts")
		fs.DurationVar(&f.timeout, "step-timeout", 10*time.Minute, "fail a pull or a run to ready that takes longer")
		fs.StringVar(&f.scenarios, "scenarios", defaultBenchScenarios, "comma-separated `scenarios`: cold, update, scale")
		fs.StringVar(&f.update, "update", defaultBenchUpdate, "comma-separated `images` updated to their v2 in the update scenario: python")
		fs.StringVar(&f.scaleImage, "scale-image", defaultBenchScaleImage, "the `image` of the scale scenario")
		fs.StringVar(&f.scale, "scale", defaultBenchScale, "comma-separated container `counts` started at once in the scale scenario")
		fs.StringVar(&f.scenarioLinks, "scenario-links", defaultBenchScenarioLinks, "comma-separated `links` of the update and scale scenarios")
		fs.IntVar(&f.scenarioN, "scenario-n", defaultBenchScenarioN, "runs per update or scale case, link and mode")
		fs.StringVar(&f.userImage, "user-image", "", "an `image` of yours to bench: OCI layout dir, oci:DIR:TAG, docker://REF or a registry reference")
		fs.StringVar(&f.userName, "user-name", "user", "the user image's `name` in the report")
		fs.StringVar(&f.userCmd, "user-cmd", "", "the `command` the user image runs (JSON array or words; default: its own)")
		fs.StringVar(&f.userReady, "user-ready", "", "the user image's readiness `line` (default: ready when the command exits with status 0)")
		fs.BoolVar(&f.userServer, "user-server", false, "the user image keeps running once ready (killed then; needs --user-ready)")
		f.fs = fs
		return f
	},
	run: runE2E,
}

type benchFlags struct {
	images, links, modes string
	n, warm              int
	indexSpan            int64
	seed                 uint64
	out, scripts         string
	lazypull             string
	imagesDir            string
	timeout              time.Duration
	// The update and scale scenarios.
	scenarios, update, scaleImage, scale string
	scenarioLinks                        string
	scenarioN                            int
	// A user's image.
	userImage, userName, userCmd, userReady string
	userServer                              bool
	fs                                      *flag.FlagSet // to tell the flags given from defaults
}

// given says whether flag name was on the command line.
func (f *benchFlags) given(name string) bool {
	found := false
	f.fs.Visit(func(fl *flag.Flag) { found = found || fl.Name == name })
	return found
}

// userImage adds the user's image, when one is given, to cfg: alone unless --images is given
// too, and in the cold starts only unless --scenarios is given.
func (f *benchFlags) addUserImage(cfg *bench.Config) error {
	if f.userImage == "" {
		for _, n := range []string{"user-name", "user-cmd", "user-ready", "user-server"} {
			if f.given(n) {
				return fmt.Errorf("--%s without --user-image", n)
			}
		}
		return nil
	}
	im, err := bench.ParseUserImage(f.userName, f.userImage, f.userCmd, f.userReady, f.userServer)
	if err != nil {
		return fmt.Errorf("--user-image: %w", err)
	}
	cfg.User = append(cfg.User, im)
	if !f.given("images") {
		cfg.Images = nil
	}
	cfg.Images = append(cfg.Images, im.Name)
	if !f.given("scenarios") {
		cfg.Scenarios.Run = []string{bench.ScenarioCold}
	}
	return nil
}

func runE2E(ctx context.Context, e *env, vals any, args []string) error {
	f := vals.(*benchFlags)
	if len(args) != 0 {
		return cmdline.Usagef("no arguments expected, got %q", args)
	}
	cfg := bench.Config{Images: splitList(f.images), N: f.n, Warm: f.warm, Seed: f.seed,
		ImagesDir: f.imagesDir, IndexSpan: f.indexSpan, StepTimeout: f.timeout, Progress: e.stderr, Terminal: e.stderrTerminal,
		Log: e.log, Command: commandLine()}
	for _, l := range splitList(f.links) {
		link, err := bench.ParseLink(l)
		if err != nil {
			return cmdline.Usagef("%v", err)
		}
		cfg.Links = append(cfg.Links, link)
	}
	for _, m := range splitList(f.modes) {
		cfg.Modes = append(cfg.Modes, bench.Mode(m))
	}
	sc, err := scenarioConfig(f)
	if err != nil {
		return cmdline.Usagef("%v", err)
	}
	cfg.Scenarios = sc
	if err := f.addUserImage(&cfg); err != nil {
		return cmdline.Usagef("%v", err)
	}
	sc = cfg.Scenarios
	if cfg.Seed == 0 {
		cfg.Seed = rand.Uint64()
	}
	if err := cfg.Validate(); err != nil {
		return cmdline.Usagef("%v", err)
	}
	if os.Geteuid() != 0 {
		return errors.New("must run as root (containerd, mounts, drop_caches)")
	}
	if cfg.Scripts, err = filepath.Abs(f.scripts); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(cfg.Scripts, "build-bench-images.sh")); err != nil {
		return fmt.Errorf("--scripts %s: %w (run from the repository, or point --scripts at its scripts/)", f.scripts, err)
	}
	if cfg.Lazypull, err = lazypullBinary(f.lazypull); err != nil {
		return err
	}
	cfg.Stargz = bench.FindStargz(cfg.Scripts)
	out := f.out
	if out == "" {
		out = filepath.Join("bench-results", time.Now().UTC().Format("20060102-150405"))
	}
	// Short: unix sockets of containerd and the snapshotter live under it.
	cfg.LogDir = filepath.Join(out, "logs")
	if cfg.WorkDir, err = os.MkdirTemp("", "lzb-"); err != nil {
		return err
	}
	defer os.RemoveAll(cfg.WorkDir)

	fmt.Fprintf(e.stderr, "lazypull-bench e2e: modes %s, seed %d\n", f.modes, cfg.Seed)
	if sc.Has(bench.ScenarioCold) {
		fmt.Fprintf(e.stderr, "  cold: images %s; links %s; %d cold runs each\n", strings.Join(cfg.Images, " "), f.links, cfg.N)
	}
	if sc.Has(bench.ScenarioUpdate) {
		fmt.Fprintf(e.stderr, "  update: %s; links %s; %d runs each\n", strings.Join(sc.Update, " "), f.scenarioLinks, sc.N)
	}
	if sc.Has(bench.ScenarioScale) {
		fmt.Fprintf(e.stderr, "  scale: %s x %s at once; links %s; %d runs each\n", sc.ScaleImage, f.scale, f.scenarioLinks, sc.N)
	}
	fmt.Fprintln(e.stderr, bench.StargzNote(cfg.Stargz))
	res, berr := bench.Bench(ctx, cfg)
	if res == nil {
		return berr
	}
	paths, werr := bench.WriteAll(out, res)
	bench.WriteTables(e.stdout, res)
	fmt.Fprintf(e.stdout, "\nwritten: %s\n", strings.Join(paths, " "))
	return errors.Join(berr, werr)
}

// scenarioConfig reads the scenario flags. The flags of a scenario that does not run are not
// checked beyond their syntax.
func scenarioConfig(f *benchFlags) (bench.ScenarioConfig, error) {
	sc := bench.ScenarioConfig{Run: splitList(f.scenarios), Update: splitList(f.update),
		ScaleImage: strings.TrimSpace(f.scaleImage), N: f.scenarioN}
	if len(sc.Run) == 0 {
		return sc, fmt.Errorf("--scenarios: none given (known: %s)", strings.Join(bench.Scenarios, ", "))
	}
	counts, err := bench.ParseCounts(f.scale)
	if err != nil {
		return sc, fmt.Errorf("--scale: %w", err)
	}
	sc.ScaleCounts = counts
	for _, l := range splitList(f.scenarioLinks) {
		link, err := bench.ParseLink(l)
		if err != nil {
			return sc, fmt.Errorf("--scenario-links: %w", err)
		}
		sc.Links = append(sc.Links, link)
	}
	return sc, nil
}
