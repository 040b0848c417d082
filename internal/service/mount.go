package service

import (
	"context"
	"fmt"
	"log/slog"

	"lazypull/internal/daemon"
	"lazypull/internal/fusefs"
)

// MountConfig is the settings of `lazypull mount`: the node's, and how each image is shown.
type MountConfig struct {
	NodeConfig
	Layer        int    // >= 0: only this layer (0 the lowest), a single-layer view
	Debug        bool   // log every FUSE request (log at debug level)
	AllowSuidDev bool   // mount without nosuid,nodev
	Profile      string // the digest of the prefetch profile to use: one image only
	DebugAddr    string // Go's profiles at /debug/pprof/ ("": none), as the snapshotter's
}

// Unmount unmounts what `lazypull mount` mounted at dir (`lazypull umount`).
func Unmount(dir string) error { return fusefs.Unmount(dir) }

// MountPoint is one image shown at one directory.
type MountPoint struct{ Ref, Dir string }

// Check refuses settings that make no sense for mounts, before anything is opened.
func (c *MountConfig) Check(mounts []MountPoint) error {
	if err := c.NodeConfig.Check(); err != nil {
		return err
	}
	if _, err := c.Choice(c.Profile); err != nil {
		return err
	}
	if c.Profile != "" && len(mounts) != 1 {
		return fmt.Errorf("-profile pins the profile of one image; got %d", len(mounts))
	}
	return nil
}

// Mount shows each image of mounts, whole (its layers merged) or one layer, at its
// directory, until ctx is done or any of them is unmounted from outside; then it unmounts
// the rest.
func Mount(ctx context.Context, cfg MountConfig, mounts []MountPoint, log *slog.Logger) error {
	if err := cfg.Check(mounts); err != nil {
		return err
	}
	choice, err := cfg.Choice(cfg.Profile)
	if err != nil {
		return err
	}
	n, err := openNode(cfg.NodeConfig, log)
	if err != nil {
		return err
	}
	defer n.close()

	var images []*daemon.Image
	var servers []*fusefs.Server
	n.onClose(func() {
		for _, s := range servers {
			if err := s.Unmount(); err != nil {
				log.Warn("unmount", "dir", s.Dir(), "err", err)
			}
		}
		for _, im := range images {
			im.Close()
		}
	})
	for _, m := range mounts {
		im, srv, err := n.mount(ctx, cfg, m, choice)
		if im != nil {
			images = append(images, im)
		}
		if err != nil {
			return err
		}
		servers = append(servers, srv)
	}
	if err := n.serve(func() []*daemon.Image { return images }, nil); err != nil {
		return err
	}
	if err := n.serveDebug(cfg.DebugAddr); err != nil {
		return err
	}

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

// mount opens the image of m, starts its prefetch, and mounts it. The image is returned
// (to be closed) even when its mount fails.
func (n *node) mount(ctx context.Context, cfg MountConfig, m MountPoint, choice daemon.ProfileChoice) (*daemon.Image, *fusefs.Server, error) {
	o := daemon.OpenOptions{Platform: n.platform, Client: n.client, Log: n.log, IndexPolicy: choice.Policy, NoSpeculation: !n.cfg.Speculate,
		SpeculateMinRTT: n.cfg.SpeculateMinRTT}
	if cfg.Prefetch {
		o.Profile = &choice
	}
	im, err := daemon.OpenImage(ctx, n.store, m.Ref, o)
	if err != nil {
		return nil, nil, credentialsHint(err)
	}
	p, fill := n.prefetchOptions()
	if p != nil {
		im.Prefetch(ctx, *p)
	} else {
		im.WalkCommand()
	}
	if fill != nil {
		if err := im.BackgroundFetch(*fill); err != nil {
			return im, nil, err
		}
	}
	var root *fusefs.Root
	if cfg.Layer >= 0 {
		l, ok := im.FSLayer(cfg.Layer)
		if !ok {
			return im, nil, fmt.Errorf("image %s has %d layers: no layer %d", m.Ref, im.NumLayers(), cfg.Layer)
		}
		root, err = fusefs.NewLayer(l.Index, l.Content, fusefs.WithLogger(n.log))
	} else {
		root, err = fusefs.NewMerged(im.FSLayers(), fusefs.WithLogger(n.log))
	}
	if err != nil {
		return im, nil, fmt.Errorf("image %s: %w", m.Ref, err)
	}
	srv, err := fusefs.Mount(m.Dir, root, fusefs.MountOptions{FSName: "lazypull:" + m.Ref, Logger: n.log, Debug: cfg.Debug, AllowSuidDev: cfg.AllowSuidDev,
		Probe: n.probe})
	if err != nil {
		return im, nil, fmt.Errorf("mount %s at %s: %w", m.Ref, m.Dir, err)
	}
	n.log.Info("mounted", "image", im, "dir", srv.Dir(), "passthrough", srv.Passthrough())
	return im, srv, nil
}
