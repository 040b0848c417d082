package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"google.golang.org/grpc"

	"lazypull/internal/criproxy"
	"lazypull/internal/daemon"
	"lazypull/internal/fetch"
	"lazypull/internal/keeper"
	"lazypull/internal/snapshot"
	"lazypull/internal/unixsock"
	"lazypull/internal/warm"
)

// Serve runs the snapshotter of cfg: containerd's snapshots API and lazypull's warm-up API
// on cfg.Address, lazypull layers mounted from their registries, until ctx is done. The
// caller checks cfg first (CheckSocketPath, NodeConfig.Check), to refuse a mistake before
// anything is opened; Serve checks the node's settings again.
func Serve(ctx context.Context, cfg Config, log *slog.Logger) error {
	choice, err := cfg.Choice("")
	if err != nil {
		return err
	}
	var creds *criproxy.Store
	var more []fetch.Option
	if cfg.CRIProxyAddress != "" {
		creds = criproxy.NewStore(0)
		more = append(more, fetch.WithCredentials(criCredentials{creds}))
	}
	n, err := openNode(cfg.NodeConfig, log, more...)
	if err != nil {
		return err
	}
	defer n.close()

	lfs := daemon.NewSnapshotFS(n.store, n.platform, log, n.client)
	lfs.SetFallbackMetrics(n.fallbacks)
	lfs.SetSpeculation(n.cfg.Speculate)
	lfs.SetSpeculationMinRTT(n.cfg.SpeculateMinRTT)
	lfs.SetMountProbe(n.probe)
	lfs.OnChange(n.statsChanged)
	p, fill := n.prefetchOptions()
	if p != nil {
		lfs.SetPrefetch(*p)
		lfs.SetProfileChoice(choice)
	}
	if fill != nil {
		lfs.SetBackgroundFetch(*fill)
	}
	n.onClose(func() {
		if err := lfs.Close(); err != nil {
			log.Warn("unmount layers", "err", err)
		}
	})
	if err := os.MkdirAll(cfg.Root, 0o700); err != nil {
		return err
	}
	kc := startKeeper(cfg.Root, cfg.KeeperIdle, log)
	if kc != nil {
		lfs.SetKeeper(kc) // lfs.Close closes it
	}
	// The credentials first: the mounts restored read with them.
	if creds != nil {
		if err := serveCRICredentials(n, cfg.CRIProxy, creds, kc, log); err != nil {
			return err
		}
	}
	if kc != nil {
		restoreMounts(ctx, lfs, log)
	}
	sn, err := snapshot.New(cfg.Root, lfs, snapshot.WithLogger(log))
	if err != nil {
		return err
	}
	n.onClose(func() { sn.Close() })

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
	n.failed = lfs.FailedImages
	if err := n.serve(lfs.Images, sn.Remote); err != nil {
		return err
	}
	if err := n.serveDebug(cfg.DebugAddr); err != nil {
		return err
	}
	if cfg.ContainerdConfig != "" {
		n.goUntilClose(func(ctx context.Context) {
			watchContainerd(ctx, log, cfg.ContainerdConfig, cfg.Address, containerdCheckEvery)
		})
	}
	return serveGRPC(ctx, srv, cfg, log)
}

// startKeeper starts the keeper process, or connects to the one running, and returns its
// client; nil when there is none, the snapshotter running on, its mounts ending with it.
// The keeper exits once it has held nothing and had no client for idle.
func startKeeper(root string, idle time.Duration, log *slog.Logger) *keeper.Client {
	exe, err := os.Executable()
	if err != nil {
		log.Warn("no keeper: lazy layers will end with this process", "err", err)
		return nil
	}
	sock := filepath.Join(root, "keeper.sock")
	kc, err := keeper.Start(sock, exe, []string{"keeper", "--socket", sock, "--idle", idle.String()}, filepath.Join(root, "keeper.log"))
	if err != nil {
		log.Warn("no keeper: lazy layers will end with this process", "err", err)
		return nil
	}
	return kc
}

// restoreMounts serves again the mounts an earlier snapshotter left to lfs's keeper, which
// holds the layers' FUSE connections so that running containers survive a crash or
// restart of this process.
func restoreMounts(ctx context.Context, lfs *daemon.SnapshotFS, log *slog.Logger) {
	n, err := lfs.Restore(ctx)
	if err != nil {
		log.Warn("keeper: cannot take back the mounts it holds", "err", err)
	} else if n > 0 {
		log.Info("layer mounts restored", "mounts", n)
	}
}

// serveGRPC serves srv on cfg.Address until ctx is done, then stops it, gracefully for up
// to 10 seconds.
func serveGRPC(ctx context.Context, srv *grpc.Server, cfg Config, log *slog.Logger) error {
	if err := os.MkdirAll(filepath.Dir(cfg.Address), 0o711); err != nil {
		return err
	}
	if err := os.Remove(cfg.Address); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	// 0600 from the start, whatever the umask: whoever connects can mount any image, and
	// the warm API is served on the same socket.
	ln, err := unixsock.Listen("unix", cfg.Address)
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("serving containerd snapshots API", "address", cfg.Address, "root", cfg.Root, "store", cfg.Store)
	select {
	case <-ctx.Done():
		log.Info("signal: stopping")
	case err := <-served:
		return fmt.Errorf("serve %s: %w", cfg.Address, err)
	}
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		srv.Stop()
	}
	os.Remove(cfg.Address)
	return nil
}
