package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"lazypull/internal/daemon"
	"lazypull/internal/fetch"
	"lazypull/internal/fusefs"
	"lazypull/internal/store"
)

var mountCommand = &command{
	name:    "mount",
	args:    "[flags] REF DIR [REF DIR ...]",
	summary: "mount images from their registry, fetching file contents on first read",
	help: `
Shows the whole tree of each lazypull image REF at DIR (an empty directory) at once: the
layers merged, whiteouts applied. File contents stay in the registry until read; then
the chunks a read needs are fetched with HTTP Range requests, verified against the
image's digests, and kept in the node's store, which every image shares: nothing is
fetched twice, and a file another image already brought is not fetched at all.

Other users of the host can read DIR too (as the image's file modes allow), but it grants
them nothing: it is mounted nosuid and nodev, so the image's setuid and setgid bits and file
capabilities do nothing and its device nodes do not open. --allow-suid-dev lifts that, for a root file system that root chroots into
and runs setuid programs or devices in; it gives any local user who can reach DIR what the
image grants, a setuid-root program of the image runs as root for them: use it only where
nobody else can reach DIR (a directory of mode 0700), and only with images you trust.

The command stays in the foreground until SIGINT or SIGTERM, or until DIR is unmounted
(lazypull umount DIR), and then unmounts cleanly. A stale mount left at DIR by a crash is
cleaned up first. The store is used by one process at a time: mount several images in
one command to share it between them while they are mounted.`,
	flags: func(fs *flag.FlagSet) any {
		f := &mountFlags{}
		addStoreFlags(fs, &f.storeFlags)
		fs.StringVar(&f.platform, "platform", "", "the image for `os/arch[/variant]` of a multi-platform REF (default: this machine's)")
		fs.BoolVar(&f.plainHTTP, "plain-http", false, "talk to registries over http instead of https")
		fs.StringVar(&f.hostsDir, "hosts-dir", "", "containerd-style `dir` of HOST/hosts.toml files naming mirrors")
		fs.StringVar(&f.metricsAddr, "metrics-addr", "", "serve Prometheus metrics on `host:port` at /metrics")
		fs.IntVar(&f.layer, "layer", -1, "mount only layer `n` (0 is the lowest) as a single-layer view, as the snapshotter does")
		fs.BoolVar(&f.debug, "debug", false, "log every FUSE request")
		fs.BoolVar(&f.allowSuidDev, "allow-suid-dev", false, "mount without nosuid,nodev: the image's setuid programs, file capabilities and devices work for every user who reaches DIR (risky: root for anyone with a setuid-root program of the image)")
		fs.StringVar(&f.profile, "profile", "", "use the prefetch profile of this `digest` (sha256:...), which must refer to the image: one REF only")
		addPrefetchFlags(fs, &f.prefetchFlags)
		return f
	},
	run: runMount,
}

type storeFlags struct {
	dir      string
	maxBytes int64
}

func addStoreFlags(fs *flag.FlagSet, f *storeFlags) {
	fs.StringVar(&f.dir, "store", store.DefaultDir, "the node's content store `dir`")
	fs.Int64Var(&f.maxBytes, "store-max-bytes", 0, "evict least recently used content to keep the store under `n` bytes (0: no bound)")
}

type mountFlags struct {
	storeFlags
	platform     string
	plainHTTP    bool
	hostsDir     string
	metricsAddr  string
	layer        int
	debug        bool
	allowSuidDev bool
	profile      string
	prefetchFlags
}

// prefetchFlags are the prefetch settings of mount and snapshotter.
type prefetchFlags struct {
	prefetch            bool
	prefetchWait        time.Duration
	backgroundFetch     bool
	backgroundFetchRate int64
	profilePolicy       string
	profilePins         profilePins
}

func addPrefetchFlags(fs *flag.FlagSet, f *prefetchFlags) {
	fs.BoolVar(&f.prefetch, "prefetch", true, "look up the image's prefetch profile (lazypull profile) and fetch what it names first")
	fs.DurationVar(&f.prefetchWait, "prefetch-wait", 0, "wait up to `duration` for the profiled content before mounting (0: fetch it in the background)")
	fs.BoolVar(&f.backgroundFetch, "background-fetch", false, "after the prefetch, fetch the rest of each image in the background (rate-bounded; reads go first)")
	fs.Int64Var(&f.backgroundFetchRate, "background-fetch-rate", daemon.DefaultFillRate, "bound the background fetch to `n` compressed bytes per second")
	addProfileFlags(fs, f)
}

// check refuses prefetch settings that make no sense.
func (f *prefetchFlags) check() error {
	if f.prefetchWait < 0 {
		return usagef("-prefetch-wait must not be negative")
	}
	if f.backgroundFetchRate <= 0 {
		return usagef("-background-fetch-rate must be more than 0 bytes per second")
	}
	return f.checkProfile()
}

// start runs the prefetch and the background fill of a newly opened image, as set.
func (f *prefetchFlags) start(ctx context.Context, im *daemon.Image, log *slog.Logger, pm *daemon.ProfileMetrics) error {
	if f.prefetch {
		im.Prefetch(ctx, daemon.PrefetchOptions{Wait: f.prefetchWait, Log: log, Metrics: pm})
	}
	if f.backgroundFetch {
		return im.BackgroundFetch(daemon.FillOptions{Rate: f.backgroundFetchRate, Log: log})
	}
	return nil
}

func newLogger(e *env) *slog.Logger { return newLeveledLogger(e, slog.LevelInfo) }

func newLeveledLogger(e *env, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level}))
}

func runMount(ctx context.Context, e *env, vals any, args []string) error {
	f := vals.(*mountFlags)
	if len(args) == 0 || len(args)%2 != 0 {
		return usagef("want REF DIR pairs, got %d argument(s)", len(args))
	}
	if f.maxBytes < 0 {
		return usagef("-store-max-bytes must not be negative")
	}
	if err := f.prefetchFlags.check(); err != nil {
		return err
	}
	choice, err := f.prefetchFlags.choice(f.profile)
	if err != nil {
		return err
	}
	if f.profile != "" && len(args) != 2 {
		return usagef("-profile pins the profile of one image; got %d", len(args)/2)
	}
	platform, err := parsePlatform(f.platform)
	if err != nil {
		return err
	}
	log := newLogger(e)
	if f.debug {
		log = newLeveledLogger(e, slog.LevelDebug) // go-fuse logs each request at debug
	}
	st, err := store.Open(f.dir, store.WithMaxBytes(f.maxBytes), store.WithLogger(log))
	if err != nil {
		return err
	}
	defer st.Close()

	fopts, metrics := fetchOptions(log, f.plainHTTP, f.hostsDir)
	pm := daemon.NewProfileMetrics(nil)

	var images []*daemon.Image
	var servers []*fusefs.Server
	defer func() {
		for _, s := range servers {
			if err := s.Unmount(); err != nil {
				log.Warn("unmount", "dir", s.Dir(), "err", err)
			}
		}
		for _, im := range images {
			im.Close()
		}
	}()
	for i := 0; i < len(args); i += 2 {
		ref, dir := args[i], args[i+1]
		o := daemon.OpenOptions{Platform: platform, Fetch: fopts, Log: log}
		if f.prefetch {
			o.Profile = &choice
		}
		im, err := daemon.OpenImage(ctx, st, ref, o)
		if err != nil {
			return err
		}
		images = append(images, im)
		if err := f.prefetchFlags.start(ctx, im, log, pm); err != nil {
			return err
		}
		var root *fusefs.Root
		if f.layer >= 0 {
			if f.layer >= len(im.Layers) {
				return fmt.Errorf("image %s has %d layers: no layer %d", ref, len(im.Layers), f.layer)
			}
			l := im.Layers[f.layer]
			root, err = fusefs.NewLayer(l.Index, l, fusefs.WithLogger(log))
		} else {
			root, err = fusefs.NewMerged(im.FSLayers(), fusefs.WithLogger(log))
		}
		if err != nil {
			return fmt.Errorf("image %s: %w", ref, err)
		}
		srv, err := fusefs.Mount(dir, root, fusefs.MountOptions{FSName: "lazypull:" + ref, Logger: log, Debug: f.debug, AllowSuidDev: f.allowSuidDev})
		if err != nil {
			return fmt.Errorf("mount %s at %s: %w", ref, dir, err)
		}
		servers = append(servers, srv)
		log.Info("mounted", "image", im, "dir", srv.Dir(), "passthrough", srv.Passthrough())
	}

	if f.metricsAddr != "" {
		pm.SetImages(func() []*daemon.Image { return images })
		stop, err := serveMetrics(f.metricsAddr, slices.Concat(st.Collectors(), metrics.Collectors(), pm.Collectors()), log)
		if err != nil {
			return err
		}
		defer stop()
	}

	statsCtx, stopStats := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		daemon.KeepStats(statsCtx, f.dir, 2*time.Second, func() daemon.Stats { return daemon.CollectStats(st, images) })
	})
	defer func() { stopStats(); wg.Wait() }()

	// Until a signal, or until any mount goes away (lazypull umount, fusermount -u).
	gone := make(chan string, len(servers))
	for _, s := range servers {
		go func() { s.Wait(); gone <- s.Dir() }()
	}
	select {
	case <-ctx.Done():
		log.Info("signal: unmounting")
	case dir := <-gone:
		log.Info("unmounted from outside: unmounting the rest", "dir", dir)
	}
	return nil
}

// fetchOptions are the registry settings the mount and the snapshotter share; every
// registry reports into the one Metrics returned, so its collectors register once.
func fetchOptions(log *slog.Logger, plainHTTP bool, hostsDir string) ([]fetch.Option, *fetch.Metrics) {
	metrics := fetch.NewMetrics()
	opts := []fetch.Option{fetch.WithLogger(log), fetch.WithMetrics(metrics)}
	if plainHTTP {
		opts = append(opts, fetch.WithPlainHTTP())
	}
	if hostsDir != "" {
		opts = append(opts, fetch.WithHostsDir(hostsDir))
	}
	return opts, metrics
}

// serveMetrics serves Prometheus metrics at addr/metrics until stop is called.
func serveMetrics(addr string, cs []prometheus.Collector, log *slog.Logger) (stop func(), err error) {
	reg := prometheus.NewRegistry()
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics address %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics server", "addr", addr, "err", err)
		}
	}()
	log.Info("serving metrics", "addr", ln.Addr().String())
	return func() { srv.Close() }, nil
}

var umountCommand = &command{
	name:    "umount",
	args:    "DIR",
	summary: "unmount a lazypull mount (also a stale one left by a crash)",
	run: func(_ context.Context, _ *env, _ any, args []string) error {
		if len(args) != 1 {
			return usagef("want DIR")
		}
		return fusefs.Unmount(args[0])
	},
}
