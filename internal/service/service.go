package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"slices"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"lazypull/internal/daemon"
	"lazypull/internal/fetch"
	"lazypull/internal/fusefs"
	"lazypull/internal/store"
)

// statsEvery is how often a process holding the store writes its figures for `lazypull stats`.
const statsEvery = 2 * time.Second

// NewClient makes the registry client of a command that reads registries: one per
// process, so that every image's registry shares its connections, its bound on requests in
// flight, its credentials and its metrics. It is the one place registry settings are
// turned into a client.
func NewClient(log *slog.Logger, plainHTTP bool, hostsDir string, more ...fetch.Option) (*fetch.Client, error) {
	opts := []fetch.Option{fetch.WithLogger(log)}
	if plainHTTP {
		opts = append(opts, fetch.WithPlainHTTP())
	}
	if hostsDir != "" {
		opts = append(opts, fetch.WithHostsDir(hostsDir))
	}
	return fetch.NewClient(append(opts, more...)...)
}

// node is what the snapshotter and a mount share: the store, the registry options, the
// metrics, the platform and the prefetch settings.
type node struct {
	cfg      NodeConfig
	log      *slog.Logger
	store    *store.Store
	client   *fetch.Client
	profiles *daemon.ProfileMetrics
	// fallbacks counts the snapshotter's layers downloaded whole (no mount falls back).
	fallbacks *daemon.FallbackMetrics
	// statsKick asks for the stats file to be written now (statsChanged); failed lists
	// the images that failed to open, for the stats file (nil: none).
	statsKick chan struct{}
	failed    func() []daemon.ImageStats
	platform  *v1.Platform
	// fillSlots bound the parallel fills' batches in flight, across the node's images.
	fillSlots *daemon.FillSlots
	// probe is how a new mount is probed for poll: this program started again as
	// ProbeCommand (fusefs.MountOptions.Probe); nil when its path is unknown.
	probe []string
	stops []func() // run by close, last first
}

// ProbeCommand is the command of this program that probes a new mount for poll
// (fusefs.PollProbe), in a process of its own: the command line registers it, the node
// starts it for each mount it makes.
const ProbeCommand = "mount-probe"

// Probe is ProbeCommand: it probes the mount at dir for poll (fusefs.PollProbe).
func Probe(dir string) { fusefs.PollProbe(dir) }

// openNode checks cfg and opens the store; more are options of the registry client.
func openNode(cfg NodeConfig, log *slog.Logger, more ...fetch.Option) (*node, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	platform, err := ParsePlatform(cfg.Platform)
	if err != nil {
		return nil, err
	}
	bound, err := cfg.StoreMaxBytes.Bytes(cfg.Store)
	if err != nil {
		return nil, err
	}
	st, err := store.Open(cfg.Store, store.WithMaxBytes(bound), store.WithLogger(log))
	if err != nil {
		return nil, err
	}
	if cfg.StoreMaxBytes == SizeAuto {
		log.Info("store bound auto: a quarter of its file system", "store", cfg.Store, "max_bytes", bound)
	}
	client, err := NewClient(log, cfg.PlainHTTP, cfg.HostsDir, more...)
	if err != nil {
		st.Close()
		return nil, err
	}
	n := &node{cfg: cfg, log: log, store: st, client: client, platform: platform, profiles: daemon.NewProfileMetrics(nil),
		fallbacks: daemon.NewFallbackMetrics(), statsKick: make(chan struct{}, 1), fillSlots: daemon.NewFillSlots(cfg.ParallelFetchStreams)}
	if exe, err := os.Executable(); err == nil {
		n.probe = []string{exe, ProbeCommand}
	} else {
		log.Warn("this program's path is unknown: new mounts are probed for poll in this process", "err", err)
	}
	return n, nil
}

func (n *node) close() {
	for _, stop := range slices.Backward(n.stops) {
		stop()
	}
	n.client.Close()
	n.store.Close()
}

// prefetchOptions are the prefetch and background fill, as set; nil when off.
func (n *node) prefetchOptions() (*daemon.PrefetchOptions, *daemon.FillOptions) {
	var p *daemon.PrefetchOptions
	var f *daemon.FillOptions
	if n.cfg.Prefetch {
		p = &daemon.PrefetchOptions{Wait: n.cfg.PrefetchWait, Log: n.log, Metrics: n.profiles, Auto: n.cfg.Auto(n.client, n.cfg.PlainHTTP)}
	}
	parallel := daemon.ParallelPolicy(n.cfg.ParallelFetch)
	if n.cfg.BackgroundFetch || parallel != daemon.ParallelOff {
		f = &daemon.FillOptions{Rate: n.cfg.BackgroundFetchRate, NoTrickle: !n.cfg.BackgroundFetch, Parallel: parallel,
			FastRate: n.cfg.ParallelFetchMinRate, Slots: n.fillSlots, Log: n.log}
	}
	return p, f
}

// statsChanged has the stats file written now rather than at its next tick: an image
// opened, a layer mounted.
func (n *node) statsChanged() {
	select {
	case n.statsKick <- struct{}{}:
	default: // a write is due already
	}
}

// serve starts what reports on the images open (listed by images; n.failed, when set,
// lists those that failed to open): the metrics, when set, and the stats file; and the
// admin socket, whose prunes keep what the images and the remote snapshots (labels listed
// by remote; nil: none) use. Close stops them.
func (n *node) serve(images func() []*daemon.Image, remote func() []map[string]string) error {
	err := n.serveAdmin(func() ([]daemon.LayerUse, []*daemon.Image, []string) {
		var labels []map[string]string
		if remote != nil {
			labels = remote()
		}
		uses, problems := remoteUses(labels)
		return uses, images(), problems
	})
	if err != nil {
		return err
	}
	n.profiles.SetImages(images)
	if n.cfg.MetricsAddr != "" {
		stop, err := serveMetrics(n.cfg.MetricsAddr, slices.Concat(n.store.Collectors(), n.client.Collectors(), n.profiles.Collectors(),
			n.fallbacks.Collectors()), n.log)
		if err != nil {
			return err
		}
		n.onClose(stop)
	}
	n.goUntilClose(func(ctx context.Context) {
		daemon.KeepStats(ctx, n.cfg.Store, statsEvery, n.statsKick, func() daemon.Stats {
			s := daemon.CollectStats(n.store, images())
			if n.failed != nil {
				s.Open = append(s.Open, n.failed()...)
			}
			return s
		})
	})
	return nil
}

// serveDebug serves Go's profiles at addr until close; "" serves nothing.
func (n *node) serveDebug(addr string) error {
	if addr == "" {
		return nil
	}
	stop, err := serveDebug(addr, n.log)
	if err != nil {
		return err
	}
	n.onClose(stop)
	return nil
}

// goUntilClose runs fn in a goroutine until close, which cancels its context and waits.
func (n *node) goUntilClose(fn func(ctx context.Context)) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { fn(ctx) })
	n.onClose(func() { cancel(); wg.Wait() })
}

// onClose has close run stop, before what was added earlier and before the store closes.
func (n *node) onClose(stop func()) { n.stops = append(n.stops, stop) }

// serveMetrics serves Prometheus metrics at addr/metrics until stop is called.
func serveMetrics(addr string, cs []prometheus.Collector, log *slog.Logger) (stop func(), err error) {
	reg := prometheus.NewRegistry()
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	stop, bound, err := serveHTTP("metrics", addr, mux, log)
	if err == nil {
		log.Info("serving metrics", "addr", bound)
	}
	return stop, err
}

// serveDebug serves Go's runtime profiles (net/http/pprof) at addr/debug/pprof/ until stop
// is called: `go tool pprof http://ADDR/debug/pprof/heap` shows where a daemon's memory
// goes. A mux of its own, never http.DefaultServeMux, so that nothing else registered
// there is exposed; keep addr on loopback (profiles name the code and its call stacks).
func serveDebug(addr string, log *slog.Logger) (stop func(), err error) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index) // heap, goroutine, allocs, ... by name
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	stop, bound, err := serveHTTP("debug", addr, mux, log)
	if err == nil {
		log.Info("serving Go profiles", "addr", bound, "path", "/debug/pprof/")
	}
	return stop, err
}

// serveHTTP serves h on addr (what: "metrics", "debug") until stop is called; bound is
// the address it listens on.
func serveHTTP(what, addr string, h http.Handler, log *slog.Logger) (stop func(), bound string, err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("%s address %s: %w", what, addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn(what+" server", "addr", addr, "err", err)
		}
	}()
	return func() { srv.Close() }, ln.Addr().String(), nil
}
