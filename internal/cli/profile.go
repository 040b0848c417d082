package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os/exec"
	"time"

	"lazypull/internal/cmdline"
	"lazypull/internal/daemon"
	"lazypull/internal/profile"
	"lazypull/internal/record"
)

// profileCommand is `lazypull profile`: flags over record.Record (run with --runtime chroot
// in profile-chroot), and `profile show`.
func profileCommand() *command {
	return &command{
		name:    "profile",
		args:    "[flags] REF [-- CMD ARGS...] | show [flags] REF",
		summary: "record what an image reads at start and push it beside the image, for prefetch",
		help: `
Runs the lazypull image REF once and records which files it reads, in which order, when,
and which bytes of them; then pushes that profile to REF's repository as an OCI artifact
whose subject is the image manifest (the referrers API, or the referrers tag schema where
the registry has none), and prints its digest. Mounts of the image (lazypull mount, the
snapshotter) then fetch the profiled bytes first, in a few large requests. No image is
rebuilt, and a profile can be recorded again at any time (the newest wins).

The workload runs on a lazy mount of the image (every read recorded), under an overlay
with a tmpfs upper directory, with the image config's environment and working directory;
it runs CMD ARGS if given, else the image's entrypoint and command. Its output goes to
stderr. Recording stops when a line of its output contains --until, after --duration, or
when it exits, whichever comes first; it is then killed.

--runtime says what runs it. containerd (the default): a container of the containerd at
--address (namespace --namespace, runtime io.containerd.runc.v2, no snapshot: its root is
that overlay), with the image config's user, in a network namespace of its own unless
--net-host; what containerd and runc read in the image to create it is recorded too. A
containerd that does not answer at --address is an error: nothing falls back to chroot.
chroot: only when asked for, and only for images you trust. The recorder then runs in a
mount namespace of its own (every mount it makes, the lazy view, the overlay, /proc and
/dev, is private to it and goes away with it; none is made through a symlink of the
image), and the workload runs chrooted in it, with /proc and the host's /dev, as root, in
the host's network namespace: chroot keeps the image's files from the host's paths, it
does not contain what the image's programs do. The files containerd reads at create
(/etc/passwd, /etc/group) are read first so that the profile has them.

--volume PATH --runner-image RUNNER records a data image (model weights: files, no
program): RUNNER, an image in containerd (namespace --namespace; pull it there first),
runs CMD ARGS (or its own entrypoint and command) as an ordinary container, its root from
containerd's snapshotter, with REF's recording view mounted read-only at PATH (resolved in
RUNNER's root). Only REF's reads are recorded, and the profile is REF's. containerd only.

The profile pushed names the program that ran (the first word of CMD, or of the image's
entrypoint and command), never its arguments, which may hold secrets; --output writes the
same document, readable by its owner only (mode 0600).

'lazypull profile show REF' prints the profile REF has, files in first-access order.`,
		flags: profileFlagSet,
		run:   typed(runProfile),
	}
}

// profileFlagSet declares the flags of profile (and of profile-chroot, which is started
// with the same ones).
func profileFlagSet(fs *flag.FlagSet) any {
	f := &profileFlags{set: fs}
	f.registry.add(fs)
	fs.StringVar(&f.until, "until", "", "stop recording when a line of the workload's output contains `text`")
	fs.DurationVar(&f.duration, "duration", time.Minute, "stop recording after `duration` at the latest")
	fs.StringVar(&f.output, "output", "", "also write the profile document to `file` (mode 0600)")
	fs.BoolVar(&f.noPush, "no-push", false, "do not push the profile (with --output: record only)")
	fs.BoolVar(&f.noPack, "no-pack", false, "push the profile without its pack (the layer indexes and profiled chunks in one blob, which a mount reads in one request; it costs registry space)")
	fs.StringVar(&f.store, "store", "", "content store `dir` to read through (default: a new temporary one, so that every read is recorded)")
	fs.StringVar(&f.runtime, "runtime", "containerd", "which `runtime` runs the workload: containerd (an error if it does not answer at --address), or chroot (trusted images only: as root on this host)")
	fs.StringVar(&f.address, "address", "/run/containerd/containerd.sock", "containerd's `socket`")
	fs.StringVar(&f.namespace, "namespace", "lazypull-profile", "containerd `namespace` for the workload's container (one of its own: listings of users' containers never show it)")
	fs.StringVar(&f.volume, "volume", "", "run --runner-image, not REF, with REF mounted read-only at `path` in it: how a data image (model weights, no program) is recorded")
	fs.StringVar(&f.runner, "runner-image", "", "with --volume: the `image` in containerd (namespace --namespace) whose program reads the volume")
	fs.BoolVar(&f.netHost, "net-host", false, "with containerd: run the workload in the host's network namespace (chroot always does)")
	return f
}

type profileFlags struct {
	registry                    registryFlags
	until, output, store        string
	runtime, address, namespace string
	volume, runner              string
	noPush, noPack, netHost     bool
	duration                    time.Duration
	// set is the flag set these came from: profile-chroot is started with the flags set on it.
	set *flag.FlagSet
}

func runProfile(ctx context.Context, e *env, f *profileFlags, args []string) error {
	if len(args) > 0 && args[0] == "show" {
		if len(args) != 2 {
			return cmdline.Usagef("profile show: want REF")
		}
		return showProfile(ctx, e, f, args[1])
	}
	if len(args) == 0 {
		return cmdline.Usagef("want REF")
	}
	if f.duration <= 0 {
		return cmdline.Usagef("-duration must be positive")
	}
	if _, err := parsePlatform(f.registry.platform); err != nil {
		return err
	}
	if (f.volume != "") != (f.runner != "") {
		return cmdline.Usagef("-volume and -runner-image go together")
	}
	if f.volume != "" && f.runtime != "containerd" {
		return cmdline.Usagef("-volume: the runner image runs with -runtime containerd only")
	}
	switch f.runtime {
	case "containerd":
		return recordProfile(ctx, e, f, args)
	case "chroot":
		return recordInNamespace(ctx, e, f, args)
	case "auto":
		return cmdline.Usagef("-runtime auto is no more (it ran the image chrooted, as root on this host, whenever containerd did not answer): want containerd (the default) or chroot")
	default:
		return cmdline.Usagef("-runtime %q: want containerd or chroot", f.runtime)
	}
}

// recordProfile records and pushes the profile of args[0] running args[1:] (the image's
// entrypoint and command if none), as f says.
func recordProfile(ctx context.Context, e *env, f *profileFlags, args []string) error {
	log := newLogger(e)
	platform, client, err := f.registry.open(log)
	if err != nil {
		return err
	}
	defer client.Close()
	res, err := record.Record(ctx, args[0], args[1:], record.Options{
		Runtime: record.Runtime(f.runtime), Address: f.address, Namespace: f.namespace, NetHost: f.netHost,
		ChrootHelper: []string{profileExecName, "--"},
		Platform:     platform, Client: client, StoreDir: f.store,
		Until: f.until, Duration: f.duration,
		Runner: f.runner, Volume: f.volume,
		Output: f.output, NoPush: f.noPush, NoPack: f.noPack, PlainHTTP: f.registry.reach.plainHTTP,
		Log: log, Stderr: e.stderr,
	})
	if errors.Is(err, record.ErrNoCommand) || errors.Is(err, record.ErrVolume) {
		return cmdline.Usagef("%v", err)
	}
	if err != nil {
		return err
	}
	if res.Pushed != nil {
		fmt.Fprintln(e.stdout, res.Pushed.Digest)
	}
	return nil
}

// showProfile prints the profile of REF.
func showProfile(ctx context.Context, e *env, f *profileFlags, ref string) error {
	platform, client, err := f.registry.open(newLogger(e))
	if err != nil {
		return err
	}
	defer client.Close()
	reg, err := client.Open(ref)
	if err != nil {
		return err
	}
	img, err := reg.Resolve(ctx, "", platform)
	if err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	found, err := daemon.LookupProfile(ctx, reg, img.Descriptor.Digest)
	if err != nil {
		return err
	}
	if found.Profile == nil {
		return fmt.Errorf("image %s (%s) has no profile: record one with 'lazypull profile %s'", ref, img.Descriptor.Digest, ref)
	}
	return profile.Print(e.stdout, found.Profile, found.Desc, found.Pack)
}

// The commands `lazypull profile` starts itself as.
const (
	profileChrootName = "profile-chroot"
	profileExecName   = "profile-exec"
)

// profileChrootCommand records a profile with --runtime chroot. `lazypull profile` starts it
// in a mount namespace of its own (record.InOwnMountNamespace). It refuses to run in its
// parent's mount namespace or in one with shared mounts (record.CheckPrivateMountNS).
func profileChrootCommand() *command {
	return &command{
		name:    profileChrootName,
		args:    "[flags] -- REF [CMD ARGS...]",
		summary: "record a profile chrooted, in a mount namespace of its own (started by lazypull profile --runtime chroot)",
		flags:   profileFlagSet,
		run: typed(func(ctx context.Context, e *env, f *profileFlags, args []string) error {
			if len(args) == 0 || f.runtime != "chroot" {
				return cmdline.Usagef("started by lazypull profile --runtime chroot only")
			}
			if err := record.CheckPrivateMountNS(); err != nil {
				return fmt.Errorf("%s (started by lazypull profile --runtime chroot in one of its own): %w", profileChrootName, err)
			}
			return recordProfile(ctx, e, f, args)
		}),
	}
}

// recordInNamespace runs profile-chroot with the flags set on f and args, in a mount
// namespace of its own, its output passed on; it returns its exit status as an exitError
// (profile-chroot has said why on stderr). Cancelling ctx asks it to stop.
func recordInNamespace(ctx context.Context, e *env, f *profileFlags, args []string) error {
	err := record.InOwnMountNamespace(ctx, f.childArgs(profileChrootName, args), e.stdout, e.stderr)
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.Exited() {
		return exitError{ee.ExitCode()}
	}
	if err != nil {
		return fmt.Errorf("record chrooted (%s in a mount namespace of its own): %w", profileChrootName, err)
	}
	return nil
}

// childArgs is the command line of cmd with the flags set on f, then args after "--".
func (f *profileFlags) childArgs(cmd string, args []string) []string {
	out := []string{cmd}
	f.set.Visit(func(fl *flag.Flag) { out = append(out, "-"+fl.Name+"="+fl.Value.String()) })
	return append(append(out, "--"), args...)
}

// profileExecCommand chroots and execs the workload for profile --runtime chroot
// (record.Options.ChrootHelper).
func profileExecCommand() *command {
	return &command{
		name:    profileExecName,
		args:    "-- ROOTFS DIR PROG ARGV0 [ARGS...]",
		summary: "run a workload chrooted for lazypull profile (started by it)",
		run: func(_ context.Context, _ *env, _ any, args []string) error {
			if len(args) < 4 {
				return cmdline.Usagef("want ROOTFS DIR PROG ARGV0 [ARGS...]")
			}
			return record.ExecChrooted(args[0], args[1], args[2], args[3:])
		},
	}
}
