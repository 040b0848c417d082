package cli

import (
	"context"
	"flag"
	"log/slog"

	"lazypull/internal/cmdline"
	"lazypull/internal/service"
)

func mountCommand() *command {
	return &command{
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
			c := &service.MountConfig{NodeConfig: service.DefaultNodeConfig()}
			addNodeFlags(fs, &c.NodeConfig, "REF")
			fs.IntVar(&c.Layer, "layer", -1, "mount only layer `n` (0 is the lowest) as a single-layer view, as the snapshotter does")
			fs.BoolVar(&c.Debug, "debug", false, "log every FUSE request")
			fs.StringVar(&c.DebugAddr, "debug-addr", "", "serve Go's profiles (pprof) on `host:port` at /debug/pprof/; keep it on loopback")
			fs.BoolVar(&c.AllowSuidDev, "allow-suid-dev", false, "mount without nosuid,nodev: the image's setuid programs, file capabilities and devices work for every user who reaches DIR (risky: root for anyone with a setuid-root program of the image)")
			fs.StringVar(&c.Profile, "profile", "", "use the prefetch profile of this `digest` (sha256:...), which must refer to the image: one REF only")
			return c
		},
		run: typed(runMount),
	}
}

// addNodeFlags adds the settings mount and the snapshotter share (service.NodeConfig), at
// c's values; what names the image a -platform picks from ("REF", "image").
func addNodeFlags(fs *flag.FlagSet, c *service.NodeConfig, what string) {
	fs.StringVar(&c.Store, "store", c.Store, "the node's content store `dir`")
	fs.Var(&c.StoreMaxBytes, "store-max-bytes", "evict least recently used content to keep the store under `size`: bytes, or with a unit (10G, 512MiB; K, M, G, T are powers of 1024); 0: no bound; auto: a quarter of the file system holding the store")
	fs.StringVar(&c.Platform, "platform", "", "the image for `os/arch[/variant]` of a multi-platform "+what+" (default: this machine's)")
	fs.BoolVar(&c.PlainHTTP, "plain-http", false, "talk to registries over http instead of https")
	fs.StringVar(&c.HostsDir, "hosts-dir", "", "containerd-style `dir` of HOST/hosts.toml files naming mirrors")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics on `host:port` at /metrics")
	fs.Var(&c.LogLevel, "log-level", "log at `level` and above: debug, info, warn or error")
	fs.BoolVar(&c.Prefetch, "prefetch", c.Prefetch, "look up the image's prefetch profile (lazypull profile) and fetch what it names first")
	durationFlag(fs, &c.PrefetchWait, "prefetch-wait", 0, "wait up to `duration` for the profiled content before mounting (0: fetch it in the background)")
	fs.BoolVar(&c.BackgroundFetch, "background-fetch", false, "after the prefetch, fetch the rest of each image in the background (rate-bounded; reads go first)")
	fs.Int64Var(&c.BackgroundFetchRate, "background-fetch-rate", c.BackgroundFetchRate, "bound the background fetch to `n` compressed bytes per second")
	fs.BoolVar(&c.Speculate, "speculate", c.Speculate, "on a read that misses, also fetch the rest of a file of up to 8 MiB, and the other files of a small directory")
	durationFlag(fs, &c.SpeculateMinRTT, "speculate-min-rtt", c.SpeculateMinRTT, "speculate only while the registry's round trip is at least `duration` (0: always)")

	fs.StringVar(&c.ParallelFetch, "parallel-fetch", c.ParallelFetch, "when to fetch the rest of each image at line rate, after the prefetch: `policy` "+
		"auto (once it fetches at -parallel-fetch-min-rate and has fetched a quarter of its bytes: a fast link, a workload reading much of it), on or off")
	fs.IntVar(&c.ParallelFetchStreams, "parallel-fetch-streams", c.ParallelFetchStreams, "the node's parallel fetch requests in flight at once, across images (`n`, below the 8 of the registry client: reads keep the rest)")
	fs.Int64Var(&c.ParallelFetchMinRate, "parallel-fetch-min-rate", c.ParallelFetchMinRate, "a fast link for -parallel-fetch auto: `n` compressed bytes per second over a second")
	fs.StringVar(&c.ProfilePolicy, "profile-policy", c.ProfilePolicy,
		"where a prefetch profile may come from: `policy` referrers (one pinned, else found among the image's referrers), "+
			"pinned (only one pinned, by -profile-pin or a pull's --profile) or off (none; the registry is not asked)")
	fs.Var(&c.ProfilePins, "profile-pin", "pin a prefetch profile as `image=profile`: the image manifest's digest and the "+
		"profile's (sha256:...=sha256:...); repeat, or separate with commas")
	fs.BoolVar(&c.AutoProfile, "auto-profile", c.AutoProfile, "record the start of an image with no published profile (policy referrers), keep it in the store as this node's profile, and prefetch by it next time (or by that of another version from the same repository)")
	fs.BoolVar(&c.AutoProfilePush, "auto-profile-push", c.AutoProfilePush, "push the profiles recorded with -auto-profile, with their packs, as referrers of their images, with the node's credentials")
	durationFlag(fs, &c.AutoProfileQuiet, "auto-profile-quiet", c.AutoProfileQuiet, "a recording ends once nothing new was read for `duration`")
	durationFlag(fs, &c.AutoProfileMaxTime, "auto-profile-max-time", c.AutoProfileMaxTime, "a recording ends `duration` after its first read")
	fs.IntVar(&c.AutoProfileMaxFiles, "auto-profile-max-files", c.AutoProfileMaxFiles, "record at most `n` files of a start")
	fs.Int64Var(&c.AutoProfileMaxBytes, "auto-profile-max-bytes", c.AutoProfileMaxBytes, "record at most `n` bytes of a start")
	fs.Int64Var(&c.AutoProfileDeltaBytes, "auto-profile-delta-bytes", c.AutoProfileDeltaBytes, "prefetching by the profile of another version of an image, also fetch the files the image added and those they name, up to `n` compressed bytes (0: none)")
}

func runMount(ctx context.Context, e *env, c *service.MountConfig, args []string) error {
	if len(args) == 0 || len(args)%2 != 0 {
		return cmdline.Usagef("want REF DIR pairs, got %d argument(s)", len(args))
	}
	var mounts []service.MountPoint
	for i := 0; i < len(args); i += 2 {
		mounts = append(mounts, service.MountPoint{Ref: args[i], Dir: args[i+1]})
	}
	if err := c.Check(mounts); err != nil {
		return cmdline.Usagef("%v", err)
	}
	level := c.LogLevel.Level()
	if c.Debug {
		level = slog.LevelDebug // go-fuse logs each request at debug
	}
	log := newLeveledLogger(e, level)
	return service.Mount(ctx, *c, mounts, log)
}

func umountCommand() *command {
	return &command{
		name:    "umount",
		args:    "DIR",
		summary: "unmount a lazypull mount (also a stale one left by a crash)",
		run: func(_ context.Context, _ *env, _ any, args []string) error {
			if len(args) != 1 {
				return cmdline.Usagef("want DIR")
			}
			return service.Unmount(args[0])
		},
	}
}

// mountProbeCommand probes a new mount for poll, in a process of its own: lazypull starts
// it for each mount it makes (fusefs.MountOptions.Probe).
func mountProbeCommand() *command {
	return &command{
		name:    service.ProbeCommand,
		args:    "DIR",
		summary: "probe a new mount for poll (started by lazypull for each mount it makes)",
		run: func(_ context.Context, _ *env, _ any, args []string) error {
			if len(args) != 1 {
				return cmdline.Usagef("want DIR")
			}
			service.Probe(args[0])
			return nil
		},
	}
}
