package record

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"lazypull/internal/daemon"
	"lazypull/internal/fusefs"
	"lazypull/internal/profile"
)

// A data image (model weights: files, no program) is recorded as a volume: another image,
// the runner, runs as an ordinary container of containerd (its root from containerd's own
// snapshotter, nothing of it recorded) with the recording view of the data image bind-mounted
// read-only at Options.Volume. The profile is the data image's.

// checkVolume checks the options of a recording with a runner: the runtime is containerd
// (chroot has no container to mount the volume in), and the volume's path is absolute,
// clean, not the root and not where the runtime mounts its own. runc resolves it inside the
// runner's root (symlinks of the runner stay in it) when it mounts.
func checkVolume(opts Options) error {
	if opts.Runner == "" || opts.Volume == "" {
		return fmt.Errorf("%w: a volume needs both its path in the runner and the runner image", ErrVolume)
	}
	if opts.Runtime != Containerd {
		return fmt.Errorf("%w: the runner image runs with --runtime containerd only (chroot runs the image itself)", ErrVolume)
	}
	v := opts.Volume
	if !path.IsAbs(v) || path.Clean(v) != v || v == "/" {
		return fmt.Errorf("%w: path %q: want an absolute, clean path other than /", ErrVolume, v)
	}
	for _, d := range []string{"/proc", "/dev", "/sys"} {
		if v == d || strings.HasPrefix(v, d+"/") {
			return fmt.Errorf("%w: path %s: the runtime mounts its own %s", ErrVolume, v, d)
		}
	}
	return nil
}

// ErrVolume is wrapped by the errors of options that ask for a volume wrongly.
var ErrVolume = errors.New("volume")

// recordVolume runs the runner image with the recording view of im mounted at the volume's
// path until it stops, then makes, writes and pushes the profile of im.
func (r *recording) recordVolume(ctx context.Context, im *daemon.Image, tmp string, argv []string) (Result, error) {
	ctx = namespaces.WithNamespace(ctx, r.opts.Namespace)
	runner, err := r.runnerImage(ctx)
	if err != nil {
		return Result{}, err
	}
	if len(argv) == 0 {
		spec, err := runner.Spec(ctx)
		if err != nil {
			return Result{}, fmt.Errorf("runner image %s: %w", r.opts.Runner, err)
		}
		argv = append(append([]string{}, spec.Config.Entrypoint...), spec.Config.Cmd...)
		if len(argv) == 0 {
			return Result{}, fmt.Errorf("runner image %s has %w: give one after --", r.opts.Runner, ErrNoCommand)
		}
	}
	rec := profile.NewRecorder()
	root, err := fusefs.NewMerged(im.FSLayers(), fusefs.WithLogger(r.log), fusefs.WithRecorder(rec.Record))
	if err != nil {
		return Result{}, fmt.Errorf("image %s: %w", r.ref, err)
	}
	view := filepath.Join(tmp, "volume")
	srv, err := mountView(view, root, r.ref, r.log)
	if err != nil {
		return Result{}, err
	}
	defer func() {
		if err := srv.Unmount(); err != nil {
			r.log.Warn("unmount", "dir", view, "err", err)
		}
	}()
	r.log.Info("the runner image runs with the image as a volume", "runner", r.opts.Runner, "volume", r.opts.Volume)
	snapshot := fmt.Sprintf("lazypull-profile-runner-%d-%d", os.Getpid(), time.Now().UnixNano())
	reason, err := startContainer(ctx, r.opts, r.log, r.client, argv[0],
		containerd.WithImage(runner),
		containerd.WithNewSnapshot(snapshot, runner),
		containerd.WithNewSpec(volumeSpec(r.opts, runner, view, argv)...))
	if err != nil {
		return Result{}, err
	}
	return r.finish(ctx, im, rec, argv, reason)
}

// runnerImage is the runner image in containerd (namespace Options.Namespace), unpacked
// into its default snapshotter. The recorder does not pull it: containerd's own pull does,
// with its own credentials and hosts.
func (r *recording) runnerImage(ctx context.Context) (containerd.Image, error) {
	img, err := r.client.GetImage(ctx, r.opts.Runner)
	if errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("runner image %s is not in containerd (namespace %s): pull it there first (ctr --namespace %s image pull %s)",
			r.opts.Runner, r.opts.Namespace, r.opts.Namespace, r.opts.Runner)
	}
	if err != nil {
		return nil, fmt.Errorf("runner image %s: %w", r.opts.Runner, err)
	}
	unpacked, err := img.IsUnpacked(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("runner image %s: %w", r.opts.Runner, err)
	}
	if !unpacked {
		if err := img.Unpack(ctx, ""); err != nil {
			return nil, fmt.Errorf("unpack runner image %s: %w", r.opts.Runner, err)
		}
	}
	return img, nil
}

// volumeSpec is the spec of the runner's container: the runner image's config (user,
// environment, working directory), argv, and the recording view at view bind-mounted
// read-only at the volume's path.
func volumeSpec(o Options, runner containerd.Image, view string, argv []string) []oci.SpecOpts {
	opts := []oci.SpecOpts{
		oci.WithDefaultSpec(),
		oci.WithImageConfig(runner),
		oci.WithProcessArgs(argv...),
		oci.WithMounts([]specs.Mount{{
			Destination: o.Volume, Type: "bind", Source: view,
			Options: []string{"rbind", "ro", "nosuid", "nodev"},
		}}),
	}
	if o.NetHost {
		opts = append(opts, oci.WithHostNamespace(specs.NetworkNamespace), oci.WithHostHostsFile, oci.WithHostResolvconf)
	}
	return opts
}
