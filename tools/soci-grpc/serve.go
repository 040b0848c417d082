package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/awslabs/soci-snapshotter/config"
	socifs "github.com/awslabs/soci-snapshotter/fs"
	"github.com/awslabs/soci-snapshotter/metadata"
	"github.com/awslabs/soci-snapshotter/service"
	"github.com/awslabs/soci-snapshotter/service/keychain/dockerconfig"
	"github.com/awslabs/soci-snapshotter/ztoc"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	ctdlog "github.com/containerd/log"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc"
)

const (
	defaultAddress = "/run/soci-snapshotter-grpc/soci-snapshotter-grpc.sock"
	defaultRoot    = "/var/lib/soci-snapshotter-grpc"
	// stopGrace bounds how long in-flight gRPC calls may finish on SIGTERM before the
	// server is stopped hard and the layers are unmounted.
	stopGrace = 10 * time.Second
)

type serveFlags struct {
	address, root, config, logLevel, namespace string
	configGiven                                bool
}

func parseServeFlags(args []string) (serveFlags, error) {
	var f serveFlags
	fs := flag.NewFlagSet("soci-grpc serve", flag.ContinueOnError)
	fs.StringVar(&f.address, "address", defaultAddress, "unix socket `path` to serve containerd's snapshots API on")
	fs.StringVar(&f.root, "root", defaultRoot, "`dir` for snapshots, SOCI artifacts and FUSE mounts")
	fs.StringVar(&f.config, "config", config.DefaultConfigPath, "TOML configuration `file` (the SOCI snapshotter's format); the default path may be absent")
	fs.StringVar(&f.namespace, "namespace", namespaces.Default, "containerd `namespace` of calls that carry none (containerd 1.6 sends none to proxy plugins)")
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
	if f.address == "" || f.root == "" || f.namespace == "" {
		return f, errors.New("--address, --root and --namespace must not be empty")
	}
	return f, nil
}

func serve(args []string) error {
	f, err := parseServeFlags(args)
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
	mt, closeMeta, err := metadataStore(root, cfg)
	if err != nil {
		return err
	}
	defer closeMeta()
	sn, err := service.NewSociSnapshotterService(ctx, root, &cfg.ServiceConfig,
		service.WithCredsFuncs(dockerconfig.NewDockerConfigKeychain(ctx)),
		service.WithFilesystemOptions(socifs.WithMetadataStore(mt)))
	if err != nil {
		return fmt.Errorf("start the SOCI snapshotter in %s: %w", root, err)
	}
	// The socket appears only once the snapshotter is ready: whoever waits for it (a script,
	// containerd) can use it at once.
	l, err := listen(f.address)
	if err != nil {
		return errors.Join(err, sn.Close())
	}
	defer os.Remove(f.address)

	srv := grpc.NewServer(namespaceInterceptors(f.namespace)...)
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

// metadataStore opens the store of the layers' file metadata that cfg names, as upstream's
// daemon does: "db", one bbolt file under root shared by every layer, or "db-multi", one per
// layer. The returned func closes what was opened.
func metadataStore(root string, cfg *config.Config) (metadata.Store, func(), error) {
	switch cfg.MetadataStore {
	case "", "db":
		db, err := bolt.Open(filepath.Join(root, "metadata.db"), 0o600, &bolt.Options{
			NoFreelistSync:  true,
			NoSync:          cfg.MetadataDBNoSync,
			InitialMmapSize: 64 << 20,
			FreelistType:    bolt.FreelistMapType,
		})
		if err != nil {
			return nil, nil, fmt.Errorf("metadata store %s: %w", filepath.Join(root, "metadata.db"), err)
		}
		open := func(sr *io.SectionReader, toc ztoc.TOC, opts ...metadata.Option) (metadata.Reader, error) {
			return metadata.NewReader(db, sr, toc, opts...)
		}
		return open, func() { db.Close() }, nil
	case "db-multi":
		open := metadata.NewMultiReader(filepath.Join(root, "metadata"), metadata.DBMultiOptions{
			BoltOptions: &bolt.Options{NoFreelistSync: true, NoSync: cfg.MetadataDBNoSync, FreelistType: bolt.FreelistMapType},
		})
		return open, func() {}, nil
	default:
		return nil, nil, fmt.Errorf("metadata_store %q: want db or db-multi", cfg.MetadataStore)
	}
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
