package record

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/internal/daemon"
	"lazypull/internal/fetch"
	"lazypull/internal/fusefs"
	"lazypull/internal/profile"
	"lazypull/internal/store"
)

// Runtime is what runs the workload.
type Runtime string

const (
	// Containerd runs it as a runc container of a containerd (Options.Address): an error if
	// none answers there, never a fall-back to Chroot.
	Containerd Runtime = "containerd"
	// Chroot runs it chrooted, as root on this host: for images one trusts, and only in a
	// mount namespace of the recorder's own (CheckPrivateMountNS).
	Chroot Runtime = "chroot"
)

// ErrNoCommand: there is nothing to run, neither a command given nor the image's
// entrypoint and command.
var ErrNoCommand = errors.New("no entrypoint or command")

// Options is how Record records.
type Options struct {
	Runtime Runtime
	// Address is containerd's socket; Namespace the containerd namespace of the workload's
	// container; NetHost runs it in the host's network namespace (Containerd only:
	// chroot always does).
	Address, Namespace string
	NetHost            bool
	// ChrootHelper are the arguments this program is started again with (os.Executable) to
	// chroot and exec the workload (Chroot only), followed by ROOTFS DIR PROG ARGV0
	// [ARGS...]: the helper calls ExecChrooted with them.
	ChrootHelper []string

	// Platform picks the image of an index (nil: this machine's); Client is how its
	// registry is reached, and the profile pushed.
	Platform *v1.Platform
	Client   *fetch.Client
	// StoreDir is the content store read through; "": a new temporary one, so that every
	// read is recorded.
	StoreDir string

	// Recording stops when a line of the workload's output contains Until (when not ""),
	// after Duration, or when the workload exits.
	Until    string
	Duration time.Duration

	// Output, when not "", is a file the profile document is also written to (mode 0600).
	Output string
	// NoPush: the profile is not pushed; NoPack: it is pushed without its pack.
	NoPush, NoPack bool
	// Runner, when not "", is an image in containerd (namespace Namespace) that runs argv
	// (its entrypoint and command if empty) instead of the recorded image, which is mounted
	// read-only at Volume in it (an absolute path, resolved in the runner's root): how a
	// data image (files, no program) is recorded. Containerd only.
	Runner, Volume string

	// PlainHTTP pushes over plain http to any host (loopback and private ones always are).
	PlainHTTP bool

	// Log gets the recorder's progress (nil: nothing); Stderr the workload's output (nil:
	// discarded).
	Log    *slog.Logger
	Stderr io.Writer
}

// Result is what Record recorded, and where it pushed it.
type Result struct {
	Profile *profile.Profile
	// Pushed is the profile artifact's manifest as pushed; nil with Options.NoPush.
	Pushed *v1.Descriptor
}

// recording is one Record: what every step of it needs.
type recording struct {
	opts   Options
	log    *slog.Logger
	ref    string
	client *containerd.Client // nil: chrooted
}

// Record runs the image ref once, argv (the image's entrypoint and command if empty) on a
// lazy view of it that records every read, as opts say (or the runner image with that view
// as a volume: Options.Runner); then makes the profile of what was
// read and, unless opts.NoPush, pushes it to ref's repository with its pack.
func Record(ctx context.Context, ref string, argv []string, opts Options) (Result, error) {
	r := &recording{opts: opts, log: opts.Log, ref: ref}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.opts.Stderr == nil {
		r.opts.Stderr = io.Discard
	}
	if opts.Runner != "" || opts.Volume != "" {
		if err := checkVolume(opts); err != nil {
			return Result{}, err
		}
	}
	client, err := connect(ctx, r.log, opts.Runtime, opts.Address)
	if err != nil {
		return Result{}, err
	}
	if client != nil {
		r.client = client
		defer client.Close()
	}
	tmp, err := os.MkdirTemp("", "lazypull-profile-")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(tmp)
	storeDir := opts.StoreDir
	if storeDir == "" {
		storeDir = filepath.Join(tmp, "store")
	}
	st, err := store.Open(storeDir, store.WithLogger(r.log))
	if err != nil {
		return Result{}, err
	}
	defer st.Close()
	im, err := daemon.OpenImage(ctx, st, ref, daemon.OpenOptions{Platform: opts.Platform, Client: opts.Client, Log: r.log})
	if err != nil {
		return Result{}, err
	}
	defer im.Close()
	if opts.Runner != "" {
		return r.recordVolume(ctx, im, tmp, argv)
	}
	cfg, err := r.config(ctx, im)
	if err != nil {
		return Result{}, err
	}
	if len(argv) == 0 {
		argv = append(append([]string{}, cfg.Config.Entrypoint...), cfg.Config.Cmd...)
		if len(argv) == 0 {
			return Result{}, fmt.Errorf("image %s has %w: give one after --, or, for a data image, a runner image that reads it (--volume, --runner-image)", ref, ErrNoCommand)
		}
	}
	rec := profile.NewRecorder()
	reason, err := r.run(ctx, im, rec, tmp, argv, cfg.Config)
	if err != nil {
		return Result{}, err
	}
	return r.finish(ctx, im, rec, argv, reason)
}

// config reads and parses the image config of im.
func (r *recording) config(ctx context.Context, im *daemon.Image) (*v1.ConfigFile, error) {
	d := im.Image.Manifest.Config
	raw, err := im.Registry.Blob(d.Digest, d.Size).ReadAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("image %s: config: %w", r.ref, err)
	}
	cfg, err := v1.ParseConfigFile(strings.NewReader(string(raw)))
	if err != nil {
		return nil, fmt.Errorf("image %s: config %s: %w", r.ref, d.Digest, err)
	}
	return cfg, nil
}

// run mounts the recording view of im under tmp, the root file system over it, and runs
// argv in it until it stops; it returns why it stopped.
func (r *recording) run(ctx context.Context, im *daemon.Image, rec *profile.Recorder, tmp string, argv []string, cfg v1.Config) (string, error) {
	root, err := fusefs.NewMerged(im.FSLayers(), fusefs.WithLogger(r.log), fusefs.WithRecorder(rec.Record))
	if err != nil {
		return "", fmt.Errorf("image %s: %w", r.ref, err)
	}
	// runc mounts /proc, /dev and /sys in a container itself; chroot needs them mounted.
	rootfs, cleanup, err := profileRootfs(tmp, root, r.ref, r.client == nil, r.log)
	defer cleanup()
	if err != nil {
		return "", err
	}
	if r.client != nil {
		if err := checkRuntimeFiles(rootfs); err != nil {
			return "", fmt.Errorf("image %s: %w", r.ref, err)
		}
		return runContainer(ctx, r.opts, r.log, r.client, rootfs, argv, cfg)
	}
	runtimeReads(rootfs, r.log)
	return runWorkload(ctx, r.opts, r.log, rootfs, argv, cfg.Env, cfg.WorkingDir)
}

// finish makes the profile of what rec recorded, writes it to opts.Output and pushes it.
func (r *recording) finish(ctx context.Context, im *daemon.Image, rec *profile.Recorder, argv []string, reason string) (Result, error) {
	p, truncated, err := rec.Profile(im.Image.Descriptor.Digest.String(), im.LayerDigests(), argv)
	if err != nil {
		return Result{}, err
	}
	if truncated {
		r.log.Warn("the workload read more files than a profile holds; the later ones are left out", "max", profile.MaxFiles)
	}
	r.log.Info("recorded", "stopped", reason, "files", len(p.Files), "bytes", p.Bytes())
	doc, err := p.Marshal()
	if err != nil {
		return Result{}, err
	}
	if r.opts.Output != "" {
		if err := writePrivate(r.opts.Output, doc); err != nil {
			return Result{}, fmt.Errorf("write profile: %w", err)
		}
	}
	if r.opts.NoPush {
		return Result{Profile: p}, nil
	}
	desc, err := r.push(ctx, im, p, doc)
	if err != nil {
		return Result{}, err
	}
	return Result{Profile: p, Pushed: desc}, nil
}

// maxPackedProfile bounds the file bytes of a profile pushed with a pack: a pack is built
// in memory, and for more its single request saves little over the prefetch's large
// ranges of the layer blobs (an ML image's weights).
const maxPackedProfile = 256 << 20

// push pushes the profile p (its document doc) and, unless opts.NoPack, its pack to im's
// repository, with im's manifest as subject.
func (r *recording) push(ctx context.Context, im *daemon.Image, p *profile.Profile, doc []byte) (*v1.Descriptor, error) {
	noPack := r.opts.NoPack
	if !noPack && p.Bytes() > maxPackedProfile {
		r.log.Info("the profile names too many bytes for a pack; pushed without one (mounts prefetch from the layer blobs, in large ranges)",
			"bytes", p.Bytes(), "max", maxPackedProfile)
		noPack = true
	}
	desc, err := daemon.PushProfile(ctx, r.opts.Client, im, p, doc, noPack, r.opts.PlainHTTP)
	if err != nil {
		return nil, err
	}
	return &desc, nil
}
