package record

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

const (
	// runcRuntime is containerd's runc shim, what `ctr run` and CRI use by default.
	runcRuntime = "io.containerd.runc.v2"
	// containerdProbeTimeout bounds how long profile waits for containerd to answer:
	// one local RPC, so a containerd that takes longer is in no state to run the workload.
	containerdProbeTimeout = 5 * time.Second
	// containerCleanupTimeout bounds deleting the workload's task and container, which runs
	// also after ctx is cancelled: long enough for the shim to kill, reap and unmount.
	containerCleanupTimeout = time.Minute
)

// connect returns a client of the containerd at address when the workload is to run in a
// container (Containerd), and nil when it is to run chrooted (Chroot, which is only ever
// what was asked for). It logs which.
func connect(ctx context.Context, log *slog.Logger, mode Runtime, address string) (*containerd.Client, error) {
	switch mode {
	case Chroot:
		log.Info("the workload runs chrooted", "why", "--runtime chroot")
		return nil, nil
	case Containerd:
	default:
		return nil, fmt.Errorf("runtime %q: want %s or %s", mode, Containerd, Chroot)
	}
	client, version, err := dialContainerd(ctx, address)
	if err != nil {
		return nil, fmt.Errorf("--runtime containerd: %w; start containerd, or name its socket with --address; "+
			"--runtime chroot records without it, for an image you trust (its programs then run as root on this host)", err)
	}
	log.Info("the workload runs in a containerd container", "why", "--runtime "+string(mode), "address", address, "containerd", version)
	return client, nil
}

// dialContainerd connects to the containerd at address and asks its version, so that a
// containerd that is not there, or not answering, is found now rather than half-way.
func dialContainerd(ctx context.Context, address string) (*containerd.Client, string, error) {
	// The client dials lazily, and its error for a missing socket is three lines of gRPC.
	if _, err := os.Stat(address); err != nil {
		return nil, "", fmt.Errorf("containerd at %s: %w", address, err)
	}
	client, err := containerd.New(address)
	if err != nil {
		return nil, "", fmt.Errorf("containerd at %s: %w", address, err)
	}
	ctx, cancel := context.WithTimeout(ctx, containerdProbeTimeout)
	defer cancel()
	v, err := client.Version(ctx)
	if err != nil {
		client.Close()
		return nil, "", fmt.Errorf("containerd at %s does not answer: %w", address, err)
	}
	return client, v.Version, nil
}

// runContainer runs argv as a container of client whose root is rootfs (the recording
// overlay; no snapshot), with cfg's environment, working directory and user, until
// watchWorkload stops it; then it deletes the task and the container, also after an error.
// It returns why the workload stopped.
func runContainer(ctx context.Context, opts Options, log *slog.Logger, client *containerd.Client, rootfs string, argv []string, cfg v1.Config) (string, error) {
	return startContainer(ctx, opts, log, client, argv[0], containerd.WithNewSpec(containerSpec(opts, rootfs, argv, cfg)...))
}

// startContainer creates a container of client with runc and newOpts (its spec, its
// snapshot if any), runs it until watchWorkload stops it, then deletes its task and it
// (its snapshot too), also after an error. prog names the program, for messages. It
// returns why the workload stopped.
func startContainer(ctx context.Context, opts Options, log *slog.Logger, client *containerd.Client, prog string, newOpts ...containerd.NewContainerOpts) (reason string, err error) {
	ctx = namespaces.WithNamespace(ctx, opts.Namespace)
	// Cleanup runs after ctx is cancelled too (an interrupt), but not forever.
	cleanupCtx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(ctx), containerCleanupTimeout)
	}
	id := fmt.Sprintf("lazypull-profile-%d-%d", os.Getpid(), time.Now().UnixNano())
	log = log.With("container", id, "namespace", opts.Namespace)

	ctr, err := client.NewContainer(ctx, id, append([]containerd.NewContainerOpts{containerd.WithRuntime(runcRuntime, nil)}, newOpts...)...)
	if err != nil {
		return "", fmt.Errorf("create container %s in containerd: %w", id, err)
	}
	defer func() {
		cctx, cancel := cleanupCtx()
		defer cancel()
		if derr := ctr.Delete(cctx, containerd.WithSnapshotCleanup); derr != nil && !errdefs.IsNotFound(derr) {
			err = errors.Join(err, fmt.Errorf("delete container %s from containerd (namespace %s): %w", id, opts.Namespace, derr))
		}
	}()

	pr, pw, err := os.Pipe()
	if err != nil {
		return "", err
	}
	defer pw.Close()
	task, err := ctr.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, pw, pw)))
	if err != nil {
		pr.Close()
		return "", fmt.Errorf("create task of container %s: %w", id, err)
	}
	defer func() {
		cctx, cancel := cleanupCtx()
		defer cancel()
		// WithProcessKill: after an error the workload may still run.
		if _, derr := task.Delete(cctx, containerd.WithProcessKill); derr != nil && !errdefs.IsNotFound(derr) {
			err = errors.Join(err, fmt.Errorf("delete task of container %s: %w", id, derr))
		}
	}()
	// Wait before Start, or a quick exit is missed.
	statusC, err := task.Wait(ctx)
	if err != nil {
		pr.Close()
		return "", fmt.Errorf("wait for container %s: %w", id, err)
	}
	if err := task.Start(ctx); err != nil {
		pr.Close()
		return "", fmt.Errorf("start %s in container %s: %w", prog, id, err)
	}
	log.Debug("workload started", "pid", task.Pid())

	exited := make(chan error, 1)
	go func() {
		st := <-statusC
		code, _, err := st.Result()
		if err == nil {
			// An exit, not a failed wait: the shim closes the output once the container's
			// processes are gone; let it all through before the reader is told.
			task.IO().Wait()
			pw.Close()
			if code != 0 {
				err = fmt.Errorf("exit status %d", code)
			}
		}
		exited <- err
	}()
	kill := func() {
		kctx, cancel := cleanupCtx()
		defer cancel()
		if err := task.Kill(kctx, syscall.SIGKILL, containerd.WithKillAll); err != nil && !errdefs.IsNotFound(err) {
			log.Warn("kill the workload", "err", err)
		}
	}
	return watchWorkload(ctx, opts.Stderr, pr, exited, kill, opts.Until, opts.Duration)
}

// containerSpec is the spec of the workload's container: built as containerd's
// oci.WithImageConfigArgs builds it from an image, so that the user and group lookups it
// makes in the rootfs (and runc's at start) are the reads a real container create makes,
// and are recorded.
func containerSpec(o Options, rootfs string, argv []string, cfg v1.Config) []oci.SpecOpts {
	opts := []oci.SpecOpts{
		oci.WithDefaultSpec(),
		oci.WithRootFSPath(rootfs),
		oci.WithEnv(cfg.Env),
		oci.WithProcessArgs(argv...),
	}
	if cfg.WorkingDir != "" {
		opts = append(opts, oci.WithProcessCwd(cfg.WorkingDir))
	}
	if cfg.User != "" {
		opts = append(opts, oci.WithUser(cfg.User), withAdditionalGIDsOfUID())
	} else {
		// As containerd does: root's supplementary groups even when the image names no user.
		opts = append(opts, oci.WithAdditionalGIDs("root"))
	}
	if o.NetHost {
		opts = append(opts, oci.WithHostNamespace(specs.NetworkNamespace), oci.WithHostHostsFile, oci.WithHostResolvconf)
	}
	return opts
}

// withAdditionalGIDsOfUID is what containerd does after oci.WithUser for an image's user:
// the supplementary groups of the user it resolved to, looked up by UID.
func withAdditionalGIDsOfUID() oci.SpecOpts {
	return func(ctx context.Context, client oci.Client, c *containers.Container, s *oci.Spec) error {
		return oci.WithAdditionalGIDs(strconv.FormatUint(uint64(s.Process.User.UID), 10))(ctx, client, c, s)
	}
}
