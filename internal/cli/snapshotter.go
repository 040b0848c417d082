package cli

import (
	"context"
	"flag"

	"lazypull/internal/cmdline"
	"lazypull/internal/service"
)

// defaultSnapshotterSocket is where the snapshotter serves unless told otherwise.
const defaultSnapshotterSocket = service.DefaultAddress

func snapshotterCommand() *command {
	c := &command{
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
		flags: bindSnapshotterFlags,
		run:   typed(runSnapshotter),
	}
	// The reference of the config file follows the help; it is made from the flags.
	c.help += "\n\n" + configDoc(c.flags, service.DefaultConfigFile)
	return c
}

// snapshotterFlags are the snapshotter's settings (service.Config) and where they come from.
type snapshotterFlags struct {
	config string
	fs     *flag.FlagSet
	service.Config
}

func bindSnapshotterFlags(fs *flag.FlagSet) any {
	f := &snapshotterFlags{fs: fs, Config: service.DefaultConfig()}
	c := &f.Config
	fs.StringVar(&f.config, "config", service.DefaultConfigFile, "TOML `file` of settings")
	fs.StringVar(&c.Address, "address", c.Address, "serve on this unix `socket`")
	fs.StringVar(&c.Root, "root", c.Root, "snapshots and their metadata in `dir`")
	durationFlag(fs, &c.KeeperIdle, "keeper-idle", c.KeeperIdle, "the keeper process exits once it has held no mount and had no client for `duration`")
	fs.StringVar(&c.DebugAddr, "debug-addr", "", "serve Go's profiles (pprof) on `host:port` at /debug/pprof/; keep it on loopback")
	fs.StringVar(&c.ContainerdConfig, "containerd-config", c.ContainerdConfig, "containerd's config `file`, read to warn when containerd will not call this snapshotter (\"\": no check)")
	fs.StringVar(&c.CRIProxyAddress, "cri-proxy-address", c.CRIProxyAddress, "serve CRI's image service on this unix `socket` (kubelet's --image-service-endpoint), forwarded to --cri-proxy-upstream, and read images with the credentials their pulls came with, kept in memory only (\"\": off)")
	fs.StringVar(&c.CRIProxyUpstream, "cri-proxy-upstream", c.CRIProxyUpstream, "containerd's CRI unix `socket`, which the CRI proxy forwards to")
	addNodeFlags(fs, &c.NodeConfig, "image")
	return f
}

func runSnapshotter(ctx context.Context, e *env, f *snapshotterFlags, args []string) error {
	if len(args) != 0 {
		return cmdline.Usagef("no arguments expected, got %q", args)
	}
	// The file at the default path is optional; one named with --config is not. A mistake
	// is refused before anything is opened or mounted.
	if err := f.load(f.config, setFlags(f.fs)["config"]); err != nil {
		return err
	}
	if err := service.CheckSocketPath(f.Address); err != nil {
		return err
	}
	if err := f.Config.Check(); err != nil {
		return cmdline.Usagef("%v", err)
	}
	return service.Serve(ctx, f.Config, newLeveledLogger(e, f.LogLevel.Level()))
}
