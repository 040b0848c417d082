package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"google.golang.org/grpc"

	"lazypull/internal/daemon"
	"lazypull/internal/keeper"
	"lazypull/internal/snapshot"
	"lazypull/internal/store"
	"lazypull/internal/unixsock"
	"lazypull/internal/warm"
)

// Defaults of `lazypull snapshotter`.
const (
	defaultSnapshotterSocket = "/run/lazypull/snapshotter.sock"
	defaultSnapshotterRoot   = "/var/lib/lazypull/snapshotter"
	defaultConfigFile        = "/etc/lazypull/config.toml"
	defaultContainerdConfig  = "/etc/containerd/config.toml"
)

var snapshotterCommand = &command{
	name:    "snapshotter",
	args:    "[flags]",
	summary: "serve containerd's snapshots API: lazypull layers mounted lazily, others unpacked",
	help: `
Runs a containerd snapshotter (a proxy plugin: gRPC on a unix socket) in the foreground
until SIGINT or SIGTERM. Register it in containerd's config.toml:

  [proxy_plugins.lazypull]
    type = "snapshot"
    address = "/run/lazypull/snapshotter.sock"

and pull with 'lazypull pull REF' (or CRI with snapshotter "lazypull"): each lazypull layer
is then mounted from its registry (FUSE, contents fetched on first read into the node's
store) instead of downloaded; any other layer is downloaded and unpacked as containerd's
overlayfs snapshotter does. Containers get overlayfs over the layers, and run setuid
programs as they do on containerd's overlayfs snapshotter; the layer mounts themselves are
nosuid and nodev, and the socket is mode 0600 whatever the umask (whoever connects can
mount images and read their layers).

Settings come from --config (TOML; the keys are listed below), then from flags given on the
command line. A missing config file at the default path is not an error.`,
	flags: func(fs *flag.FlagSet) any {
		f := &snapshotterFlags{}
		fs.StringVar(&f.config, "config", defaultConfigFile, "TOML `file` of settings")
		fs.StringVar(&f.Address, "address", defaultSnapshotterSocket, "serve on this unix `socket`")
		fs.StringVar(&f.Root, "root", defaultSnapshotterRoot, "snapshots and their metadata in `dir`")
		fs.StringVar(&f.Store, "store", store.DefaultDir, "the node's content store `dir`")
		fs.Int64Var(&f.StoreMaxBytes, "store-max-bytes", 0, "evict least recently used content to keep the store under `n` bytes (0: no bound)")
		fs.BoolVar(&f.PlainHTTP, "plain-http", false, "talk to registries over http instead of https")
		fs.StringVar(&f.HostsDir, "hosts-dir", "", "containerd-style `dir` of HOST/hosts.toml files naming mirrors")
		fs.StringVar(&f.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics on `host:port` at /metrics")
		fs.StringVar(&f.DebugAddr, "debug-addr", "", "serve Go's profiles (pprof) on `host:port` at /debug/pprof/; keep it on loopback")
		fs.StringVar(&f.Platform, "platform", "", "the image for `os/arch[/variant]` of a multi-platform image (default: this machine's)")
		fs.StringVar(&f.ContainerdConfig, "containerd-config", defaultContainerdConfig, "containerd's config `file`, read to warn when containerd will not call this snapshotter (\"\": no check)")
		addPrefetchFlags(fs, &f.prefetchFlags)
		f.fs = fs
		return f
	},
	run: runSnapshotter,
}

type snapshotterFlags struct {
	config        string
	fs            *flag.FlagSet
	Address       string
	Root          string
	Store         string
	StoreMaxBytes int64
	PlainHTTP     bool
	HostsDir      string
	MetricsAddr   string
	DebugAddr     string
	Platform      string
	// ContainerdConfig is checked against containerd's version once it answers.
	ContainerdConfig string
	prefetchFlags
}

func runSnapshotter(ctx context.Context, e *env, vals any, args []string) error {
	f := vals.(*snapshotterFlags)
	if len(args) != 0 {
		return usagef("no arguments expected, got %q", args)
	}
	if err := f.configure(); err != nil {
		return err
	}
	if f.StoreMaxBytes < 0 {
		return usagef("-store-max-bytes must not be negative")
	}
	if err := f.prefetchFlags.check(); err != nil {
		return err
	}
	choice, err := f.prefetchFlags.choice("")
	if err != nil {
		return err
	}
	platform, err := parsePlatform(f.Platform)
	if err != nil {
		return err
	}
	log := newLogger(e)
	st, err := store.Open(f.Store, store.WithMaxBytes(f.StoreMaxBytes), store.WithLogger(log))
	if err != nil {
		return err
	}
	defer st.Close()

	fopts, metrics := fetchOptions(log, f.PlainHTTP, f.HostsDir)
	lfs := daemon.NewSnapshotFS(st, platform, log, fopts...)
	pm := daemon.NewProfileMetrics(lfs.Images)
	if f.prefetch {
		lfs.SetPrefetch(daemon.PrefetchOptions{Wait: f.prefetchWait, Log: log, Metrics: pm})
		lfs.SetProfileChoice(choice)
	}
	if f.backgroundFetch {
		lfs.SetBackgroundFetch(daemon.FillOptions{Rate: f.backgroundFetchRate, Log: log})
	}
	defer func() {
		if err := lfs.Close(); err != nil {
			log.Warn("unmount layers", "err", err)
		}
	}()
	// The keeper holds the layers' FUSE connections, so that running containers survive a
	// crash or restart of this process; the mounts it holds are served again first.
	if err := os.MkdirAll(f.Root, 0o700); err != nil {
		return err
	}
	if exe, err := os.Executable(); err != nil {
		log.Warn("no keeper: lazy layers will end with this process", "err", err)
	} else {
		sock := filepath.Join(f.Root, "keeper.sock")
		kc, err := keeper.Start(sock, exe, []string{"keeper", "--socket", sock}, filepath.Join(f.Root, "keeper.log"))
		if err != nil {
			log.Warn("no keeper: lazy layers will end with this process", "err", err)
		} else {
			lfs.SetKeeper(kc)
			n, err := lfs.Restore(ctx)
			if err != nil {
				log.Warn("keeper: cannot take back the mounts it holds", "err", err)
			} else if n > 0 {
				log.Info("layer mounts restored", "mounts", n)
			}
		}
	}
	sn, err := snapshot.New(f.Root, lfs, snapshot.WithLogger(log))
	if err != nil {
		return err
	}
	defer sn.Close()

	if err := os.MkdirAll(filepath.Dir(f.Address), 0o711); err != nil {
		return err
	}
	if err := os.Remove(f.Address); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	// 0600 from the start, whatever the umask: whoever connects can mount any image, and
	// the warm API is served on the same socket.
	ln, err := unixsock.Listen("unix", f.Address)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	// `lazypull pull` says here that it starts, then hands over the image manifest, before
	// containerd prepares the first layer.
	warm.Register(srv, func(ctx context.Context, r warm.Request) error {
		if r.IsHint() {
			return lfs.Connect(r.Ref)
		}
		return lfs.Warm(ctx, r.Ref, r.Digest, r.MediaType, r.Manifest, r.Profile)
	})

	if f.MetricsAddr != "" {
		stop, err := serveMetrics(f.MetricsAddr, slices.Concat(st.Collectors(), metrics.Collectors(), pm.Collectors()), log)
		if err != nil {
			return err
		}
		defer stop()
	}
	if f.DebugAddr != "" {
		stop, err := serveDebug(f.DebugAddr, log)
		if err != nil {
			return err
		}
		defer stop()
	}
	statsCtx, stopStats := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		daemon.KeepStats(statsCtx, f.Store, 2*time.Second, func() daemon.Stats { return daemon.CollectStats(st, lfs.Images()) })
	})
	if f.ContainerdConfig != "" {
		wg.Go(func() { watchContainerd(statsCtx, log, f.ContainerdConfig, f.Address, containerdCheckEvery) })
	}
	defer func() { stopStats(); wg.Wait() }()

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("serving containerd snapshots API", "address", f.Address, "root", f.Root, "store", f.Store)
	select {
	case <-ctx.Done():
		log.Info("signal: stopping")
	case err := <-served:
		return fmt.Errorf("serve %s: %w", f.Address, err)
	}
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		srv.Stop()
	}
	os.Remove(f.Address)
	return nil
}
