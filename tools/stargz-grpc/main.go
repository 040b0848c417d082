// Command containerd-stargz-grpc serves stargz-snapshotter's remote snapshotter over
// containerd's snapshots gRPC API on a unix socket, for containerd's proxy_plugins:
//
//	containerd-stargz-grpc --address /run/sgz.sock --root /var/lib/sgz [--config FILE] [--log-level info]
//
//	[proxy_plugins.stargz]
//	  type = "snapshot"
//	  address = "/run/sgz.sock"
//
// then `ctr-remote image rpull REF` and `ctr run --snapshotter stargz REF ID`.
//
// It exists because Debian packages ctr-remote but not this daemon, and upstream's daemon
// lives in a module (cmd/) that is not published; this is a small daemon of lazypull's own
// over the published library (its service package), so that `lazypull-bench e2e` can run
// eStargz side by side with lazypull. It is a separate Go module: none of the library's
// dependencies reach lazypull's go.mod.
//
// What it leaves out of upstream's daemon: the CRI and kubeconfig keychains, the detached
// FUSE manager, IPFS, metrics and debug listeners, and the persistent (bolt) metadata store.
// Registry credentials come from the Docker config; loopback registries speak plain HTTP.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	ctdlog "github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/service"
	"github.com/containerd/stargz-snapshotter/service/keychain/dockerconfig"
	"google.golang.org/grpc"
)

const (
	defaultAddress    = "/run/containerd-stargz-grpc/containerd-stargz-grpc.sock"
	defaultRoot       = "/var/lib/containerd-stargz-grpc"
	defaultConfigPath = "/etc/containerd-stargz-grpc/config.toml"
	// stopGrace bounds how long in-flight gRPC calls may finish on SIGTERM before the
	// server is stopped hard and the layers are unmounted.
	stopGrace = 10 * time.Second
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		slog.Error("containerd-stargz-grpc: " + err.Error())
		os.Exit(1)
	}
}

type flags struct {
	address, root, config, logLevel string
	configGiven                     bool
}

func parseFlags(args []string) (flags, error) {
	var f flags
	fs := flag.NewFlagSet("containerd-stargz-grpc", flag.ContinueOnError)
	fs.StringVar(&f.address, "address", defaultAddress, "unix socket `path` to serve containerd's snapshots API on")
	fs.StringVar(&f.root, "root", defaultRoot, "`dir` for snapshots, layer caches and FUSE mounts")
	fs.StringVar(&f.config, "config", defaultConfigPath, "TOML configuration `file` (stargz-snapshotter's format); the default path may be absent")
	fs.StringVar(&f.logLevel, "log-level", "info", "log `level`: trace, debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	if fs.NArg() > 0 {
		return f, fmt.Errorf("no arguments expected, got %q", fs.Args())
	}
	fs.Visit(func(fl *flag.Flag) {
		if fl.Name == "config" {
			f.configGiven = true
		}
	})
	if f.address == "" || f.root == "" {
		return f, errors.New("--address and --root must not be empty")
	}
	return f, nil
}

// setupLogging sends our own logs and the library's (containerd/log, logrus) to one slog
// text handler on stderr at the given level.
func setupLogging(level string) error {
	var lv slog.Level
	switch strings.ToLower(level) {
	case "trace", "debug":
		lv = slog.LevelDebug
	case "info":
		lv = slog.LevelInfo
	case "warn", "warning":
		lv = slog.LevelWarn
	case "error":
		lv = slog.LevelError
	default:
		return fmt.Errorf("--log-level %q: want trace, debug, info, warn or error", level)
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lv})))
	ctdlog.UseSlog()
	if err := ctdlog.SetLevel(strings.ToLower(level)); err != nil {
		return fmt.Errorf("--log-level %q: %w", level, err)
	}
	return nil
}

func run(args []string) error {
	f, err := parseFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := setupLogging(f.logLevel); err != nil {
		return err
	}
	cfg, err := loadConfig(f.config, f.configGiven)
	if err != nil {
		return err
	}
	root, err := filepath.Abs(f.root)
	if err != nil {
		return fmt.Errorf("--root %s: %w", f.root, err)
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("create root: %w", err)
	}
	// Fail here, naming the cause, rather than on the first Prepare.
	if err := service.Supported(root); err != nil {
		return fmt.Errorf("root %s cannot hold overlayfs snapshots: %w", root, err)
	}
	ctx := ctdlog.WithLogger(context.Background(), ctdlog.L)
	sn, err := service.NewStargzSnapshotterService(ctx, root, cfg,
		service.WithCredsFuncs(dockerconfig.NewDockerconfigKeychain(ctx)))
	if err != nil {
		return fmt.Errorf("start the stargz snapshotter in %s: %w", root, err)
	}
	// The socket appears only once the snapshotter is ready: whoever waits for it (a script,
	// containerd) can use it at once.
	l, err := listen(f.address)
	if err != nil {
		return errors.Join(err, sn.Close())
	}
	defer os.Remove(f.address)

	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	slog.Info("serving", "address", f.address, "root", root, "config", f.config)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	var serveErr error
	select {
	case s := <-sigs:
		slog.Info("stopping", "signal", s.String())
		stopped := make(chan struct{})
		go func() { srv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(stopGrace):
			srv.Stop()
		}
	case serveErr = <-served:
		serveErr = fmt.Errorf("serve on %s: %w", f.address, serveErr)
	}
	// Close unmounts every layer's FUSE mount: nothing of ours stays mounted under root.
	if err := sn.Close(); err != nil {
		return errors.Join(serveErr, fmt.Errorf("close the snapshotter: %w", err))
	}
	return serveErr
}

// listen listens on the unix socket at path, removing a stale socket left by a daemon that
// died, but never one that another process still serves on.
func listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("socket dir: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("socket %s: something else than a socket is there", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("socket %s: another process serves on it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	return l, nil
}
