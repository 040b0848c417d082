package cli

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"lazypull/internal/daemon"
	"lazypull/internal/fetch"
	"lazypull/internal/fusefs"
	"lazypull/internal/profile"
	"lazypull/internal/store"
)

var profileCommand = &command{
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

The profile pushed names the program that ran (the first word of CMD, or of the image's
entrypoint and command), never its arguments, which may hold secrets; --output writes the
same document, readable by its owner only (mode 0600).

'lazypull profile show REF' prints the profile REF has, files in first-access order.`,
	flags: profileFlagSet,
	run:   runProfile,
}

// profileFlagSet declares the flags of profile (and of profile-chroot, which is started
// with the same ones).
func profileFlagSet(fs *flag.FlagSet) any {
	f := &profileFlags{set: fs}
	fs.StringVar(&f.platform, "platform", "", "the image for `os/arch[/variant]` of a multi-platform REF (default: this machine's)")
	fs.BoolVar(&f.plainHTTP, "plain-http", false, "talk to registries over http instead of https")
	fs.StringVar(&f.hostsDir, "hosts-dir", "", "containerd-style `dir` of HOST/hosts.toml files naming mirrors")
	fs.StringVar(&f.until, "until", "", "stop recording when a line of the workload's output contains `text`")
	fs.DurationVar(&f.duration, "duration", time.Minute, "stop recording after `duration` at the latest")
	fs.StringVar(&f.output, "output", "", "also write the profile document to `file` (mode 0600)")
	fs.BoolVar(&f.noPush, "no-push", false, "do not push the profile (with --output: record only)")
	fs.BoolVar(&f.noPack, "no-pack", false, "push the profile without its pack (the layer indexes and profiled chunks in one blob, which a mount reads in one request; it costs registry space)")
	fs.StringVar(&f.store, "store", "", "content store `dir` to read through (default: a new temporary one, so that every read is recorded)")
	fs.StringVar(&f.runtime, "runtime", "containerd", "which `runtime` runs the workload: containerd (an error if it does not answer at --address), or chroot (trusted images only: as root on this host)")
	fs.StringVar(&f.address, "address", "/run/containerd/containerd.sock", "containerd's `socket`")
	fs.StringVar(&f.namespace, "namespace", "lazypull-profile", "containerd `namespace` for the workload's container (one of its own: listings of users' containers never show it)")
	fs.BoolVar(&f.netHost, "net-host", false, "with containerd: run the workload in the host's network namespace (chroot always does)")
	return f
}

type profileFlags struct {
	platform, hostsDir, until, output, store string
	runtime, address, namespace              string
	plainHTTP, noPush, noPack, netHost       bool
	duration                                 time.Duration
	// set is the flag set these came from: profile-chroot is started with the flags set on it.
	set *flag.FlagSet
}

func runProfile(ctx context.Context, e *env, vals any, args []string) error {
	f := vals.(*profileFlags)
	if len(args) > 0 && args[0] == "show" {
		if len(args) != 2 {
			return usagef("profile show: want REF")
		}
		return showProfile(ctx, e, f, args[1])
	}
	if len(args) == 0 {
		return usagef("want REF")
	}
	if f.duration <= 0 {
		return usagef("-duration must be positive")
	}
	if _, err := parsePlatform(f.platform); err != nil {
		return err
	}
	switch f.runtime {
	case "containerd":
		return recordProfile(ctx, e, f, args)
	case "chroot":
		return recordInNamespace(ctx, e, f, args)
	case "auto":
		return usagef("-runtime auto is no more (it ran the image chrooted, as root on this host, whenever containerd did not answer): want containerd (the default) or chroot")
	default:
		return usagef("-runtime %q: want containerd or chroot", f.runtime)
	}
}

// recordProfile records and pushes the profile of args[0] running args[1:] (the image's
// entrypoint and command if none), as f says; with --runtime chroot it runs in
// profile-chroot, in a mount namespace of its own.
func recordProfile(ctx context.Context, e *env, f *profileFlags, args []string) error {
	platform, err := parsePlatform(f.platform)
	if err != nil {
		return err
	}
	ref, argv := args[0], args[1:]
	log := newLogger(e)
	client, err := profileRuntime(ctx, log, f.runtime, f.address)
	if err != nil {
		return err
	}
	if client != nil {
		defer client.Close()
	}
	tmp, err := os.MkdirTemp("", "lazypull-profile-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	storeDir := f.store
	if storeDir == "" {
		storeDir = filepath.Join(tmp, "store")
	}
	st, err := store.Open(storeDir, store.WithLogger(log))
	if err != nil {
		return err
	}
	defer st.Close()
	fopts, _ := fetchOptions(log, f.plainHTTP, f.hostsDir)
	im, err := daemon.OpenImage(ctx, st, ref, daemon.OpenOptions{Platform: platform, Fetch: fopts, Log: log})
	if err != nil {
		return err
	}
	defer im.Close()
	cfgDesc := im.Image.Manifest.Config
	cfgRaw, err := im.Registry.Blob(cfgDesc.Digest, cfgDesc.Size).ReadAll(ctx)
	if err != nil {
		return fmt.Errorf("image %s: config: %w", ref, err)
	}
	cfg, err := v1.ParseConfigFile(strings.NewReader(string(cfgRaw)))
	if err != nil {
		return fmt.Errorf("image %s: config %s: %w", ref, cfgDesc.Digest, err)
	}
	if len(argv) == 0 {
		argv = append(append([]string{}, cfg.Config.Entrypoint...), cfg.Config.Cmd...)
		if len(argv) == 0 {
			return usagef("image %s has no entrypoint or command: give one after --", ref)
		}
	}

	rec := profile.NewRecorder()
	root, err := fusefs.NewMerged(im.FSLayers(), fusefs.WithLogger(log), fusefs.WithRecorder(rec.Record))
	if err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	// runc mounts /proc, /dev and /sys in a container itself; chroot needs them mounted.
	rootfs, cleanup, err := profileRootfs(tmp, root, ref, client == nil, log)
	defer cleanup()
	if err != nil {
		return err
	}
	var reason string
	if client != nil {
		if err := checkRuntimeFiles(rootfs); err != nil {
			return fmt.Errorf("image %s: %w", ref, err)
		}
		reason, err = runContainer(ctx, e, log, client, f, rootfs, argv, cfg.Config)
	} else {
		runtimeReads(rootfs, log)
		reason, err = runWorkload(ctx, e, log, rootfs, argv, cfg.Config.Env, cfg.Config.WorkingDir, f.until, f.duration)
	}
	if err != nil {
		return err
	}
	layers := make([]string, len(im.Layers))
	for i, l := range im.Layers {
		layers[i] = l.Desc.Digest.String()
	}
	p, truncated, err := rec.Profile(im.Image.Descriptor.Digest.String(), layers, argv)
	if err != nil {
		return err
	}
	if truncated {
		log.Warn("the workload read more files than a profile holds; the later ones are left out", "max", profile.MaxFiles)
	}
	log.Info("recorded", "stopped", reason, "files", len(p.Files), "bytes", p.Bytes())
	doc, err := p.Marshal()
	if err != nil {
		return err
	}
	if f.output != "" {
		if err := writePrivate(f.output, doc); err != nil {
			return fmt.Errorf("write profile: %w", err)
		}
	}
	if f.noPush {
		return nil
	}
	repo, err := name.NewRepository(im.Registry.Host()+"/"+im.Registry.Repository(), nameOpts(f.plainHTTP)...)
	if err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	var pack []byte
	if !f.noPack {
		if pack, err = im.Pack(ctx, p); err != nil {
			return fmt.Errorf("image %s: profile %w", ref, err)
		}
		log.Info("packed", "bytes", len(pack))
	}
	subject := im.Image.Descriptor
	desc, err := profile.Push(repo, v1.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size}, doc, pack,
		remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain), remote.WithUserAgent("lazypull"))
	if err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, desc.Digest)
	return nil
}

// nameOpts: plain HTTP for any host with --plain-http (go-containerregistry already uses
// it for loopback and private addresses).
func nameOpts(plainHTTP bool) []name.Option {
	if plainHTTP {
		return []name.Option{name.Insecure}
	}
	return nil
}

// profileRootfs mounts the recording view and, over it, the root file system the workload
// runs in: overlayfs with a tmpfs upper directory (the lazy view is read-only), and with
// procDev /proc and /dev. cleanup undoes what was done, in reverse, also after an error.
func profileRootfs(tmp string, root *fusefs.Root, ref string, procDev bool, log *slog.Logger) (string, func(), error) {
	var undo []func()
	cleanup := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	umount := func(dir string) func() {
		return func() {
			if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
				log.Warn("unmount", "dir", dir, "err", err)
			}
		}
	}
	lower, rw, rootfs := filepath.Join(tmp, "lower"), filepath.Join(tmp, "rw"), filepath.Join(tmp, "root")
	for _, d := range []string{lower, rw, rootfs} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return "", cleanup, err
		}
	}
	srv, err := fusefs.Mount(lower, root, fusefs.MountOptions{FSName: "lazypull:" + ref, Logger: log})
	if err != nil {
		return "", cleanup, fmt.Errorf("mount %s: %w", ref, err)
	}
	undo = append(undo, func() {
		if err := srv.Unmount(); err != nil {
			log.Warn("unmount", "dir", lower, "err", err)
		}
	})
	if err := syscall.Mount("tmpfs", rw, "tmpfs", 0, "mode=0755"); err != nil {
		return "", cleanup, fmt.Errorf("mount tmpfs at %s: %w", rw, err)
	}
	undo = append(undo, umount(rw))
	upper, work := filepath.Join(rw, "upper"), filepath.Join(rw, "work")
	for _, d := range []string{upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return "", cleanup, err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work)
	if err := syscall.Mount("overlay", rootfs, "overlay", 0, opts); err != nil {
		return "", cleanup, fmt.Errorf("mount overlay at %s: %w", rootfs, err)
	}
	undo = append(undo, umount(rootfs)) // with what is mounted in it: MNT_DETACH takes the tree
	if !procDev {
		return rootfs, cleanup, nil
	}
	// The image's /proc and /dev, resolved in the image, whatever symlinks it has there.
	rd, err := openRoot(rootfs)
	if err != nil {
		return "", cleanup, err
	}
	defer rd.Close()
	for _, m := range []struct {
		src, dir, fstype string
		flags            uintptr
	}{{"proc", "proc", "proc", 0}, {"/dev", "dev", "", syscall.MS_BIND | syscall.MS_REC}} {
		if err := rd.mountOn(m.dir, m.src, m.fstype, m.flags); err != nil {
			return "", cleanup, fmt.Errorf("image %s: %w", ref, err)
		}
	}
	return rootfs, cleanup, nil
}

// runtimeFiles are what the container runtime reads in the rootfs to create a container,
// before the workload starts: containerd resolves the user and, by default, its additional
// groups (oci.WithAdditionalGIDs) from these. A profile recorded with chroot would miss
// them, and each would cost a round trip at every container create.
var runtimeFiles = []string{"etc/passwd", "etc/group"}

// runtimeReads reads runtimeFiles through rootfs, so that the recording has them first.
// A file the image lacks is no error: the runtime does without it too; nor is one that is
// no regular file (a fifo, a symlink to /dev/zero), which is not read, nor more than
// maxRuntimeFile of one.
func runtimeReads(rootfs string, log *slog.Logger) {
	rd, err := openRoot(rootfs)
	if err != nil {
		log.Warn("read what the runtime reads at create", "err", err)
		return
	}
	defer rd.Close()
	for _, f := range runtimeFiles {
		if err := rd.readAll(f, maxRuntimeFile); err != nil {
			log.Warn("read what the runtime reads at create", "file", "/"+f, "err", err)
		}
	}
}

// checkRuntimeFiles checks, before containerd builds the container's spec, that the files
// it and runc read in rootfs to look the user and groups up are absent or plain (see
// rootDir.checkRuntimeFile): neither bounds its reads of them.
func checkRuntimeFiles(rootfs string) error {
	rd, err := openRoot(rootfs)
	if err != nil {
		return err
	}
	defer rd.Close()
	for _, f := range runtimeFiles {
		if err := rd.checkRuntimeFile(f, maxRuntimeFile); err != nil {
			return fmt.Errorf("the runtime looks the user up in it: %w", err)
		}
	}
	return nil
}

// writePrivate writes data to file, readable by its owner only (0600, whatever was there):
// a new file beside it, renamed over it.
func writePrivate(file string, data []byte) error {
	t, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(t.Name()) // after the rename: nothing
	if _, err := t.Write(data); err != nil {
		t.Close()
		return err
	}
	if err := t.Chmod(0o600); err != nil {
		t.Close()
		return err
	}
	if err := t.Close(); err != nil {
		return err
	}
	return os.Rename(t.Name(), file)
}

// runWorkload runs argv chrooted in rootfs until a line of its output contains until,
// until d passes, or until it exits; then kills what is left of it. It returns why it
// stopped.
func runWorkload(ctx context.Context, e *env, log *slog.Logger, rootfs string, argv, env []string, wd, until string, d time.Duration) (string, error) {
	if !hasVar(env, "PATH") {
		env = append(env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	prog, err := lookPathIn(rootfs, argv[0], env)
	if err != nil {
		return "", err
	}
	if wd == "" {
		wd = "/"
	}
	// Not chrooted and exec'ed from here: this process serves the FUSE mount the program
	// is read from, and the forked child's execve would wait for a read that this process
	// cannot serve while the fork holds one of its threads (with a garbage collection
	// stopping the world, nothing runs). A helper of our own binary, read from the host's
	// file system, chroots and execs instead.
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("run the workload: %w", err)
	}
	cmd := &exec.Cmd{Path: self, Args: append([]string{self, "profile-exec", "--", rootfs, wd, prog}, argv...), Env: env,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true}}
	pr, pw, err := os.Pipe()
	if err != nil {
		return "", err
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return "", fmt.Errorf("run %s in the image: %w", argv[0], err)
	}
	pw.Close()
	log.Info("workload started", "pid", cmd.Process.Pid)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	return watchWorkload(ctx, e.stderr, pr, exited, func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }, until, d)
}

// watchWorkload passes a started workload's output on to stderr, line by line, until a line
// contains until, until d passes, or until the workload exits; then it kills what is left of
// it and returns why it stopped. out is the read end of the pipe the workload's stdout and
// stderr go to, closed here; exited receives once, when the workload has exited, after
// which out must come to its end (the ready line may be among the last lines, which are
// waited for); kill kills it and whatever it started, and may be called after the exit.
func watchWorkload(ctx context.Context, stderr io.Writer, out *os.File, exited <-chan error, kill func(), until string, d time.Duration) (string, error) {
	ready := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	wg.Go(func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			fmt.Fprintln(stderr, sc.Text())
			if until != "" && strings.Contains(sc.Text(), until) {
				once.Do(func() { close(ready) })
			}
		}
		_, _ = io.Copy(io.Discard, out) // a line too long: keep draining
	})
	t := time.NewTimer(d)
	defer t.Stop()
	var reason string
	var werr error
	gone := false
	select {
	case <-ready:
		reason = "ready line seen"
	case <-t.C:
		reason = "duration reached"
		if until != "" {
			werr = fmt.Errorf("the workload printed no line containing %q within %s", until, d)
		}
	case err := <-exited:
		gone = true
		reason = "workload exited"
		if until != "" {
			// The line may be in the last output: let the reader finish.
			wg.Wait()
			select {
			case <-ready:
				reason = "ready line seen"
			default:
				werr = fmt.Errorf("the workload exited (%v) without printing a line containing %q", err, until)
			}
		}
	case <-ctx.Done():
		werr = ctx.Err()
	}
	kill()
	if !gone {
		<-exited
	}
	out.Close()
	wg.Wait()
	return reason, werr
}

func hasVar(env []string, k string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, k+"=") {
			return true
		}
	}
	return false
}

// lookPathIn finds a program as the image's PATH would, inside rootfs (symlinks resolved
// in it); the path returned is inside the chroot.
func lookPathIn(rootfs, prog string, env []string) (string, error) {
	if strings.Contains(prog, "/") {
		return prog, nil
	}
	rd, err := openRoot(rootfs)
	if err != nil {
		return "", err
	}
	defer rd.Close()
	for _, kv := range env {
		if p, ok := strings.CutPrefix(kv, "PATH="); ok {
			for _, dir := range filepath.SplitList(p) {
				cand := path.Join("/", dir, prog)
				if st, err := rd.stat(cand); err == nil && st.Mode&syscall.S_IFMT == syscall.S_IFREG && st.Mode&0o111 != 0 {
					return cand, nil
				}
			}
		}
	}
	return "", fmt.Errorf("%q: not found in the image's PATH", prog)
}

// showProfile prints the profile of REF.
func showProfile(ctx context.Context, e *env, f *profileFlags, ref string) error {
	platform, err := parsePlatform(f.platform)
	if err != nil {
		return err
	}
	fopts, _ := fetchOptions(newLogger(e), f.plainHTTP, f.hostsDir)
	reg, err := fetch.New(ref, fopts...)
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
	p, desc := found.Profile, found.Desc
	if p == nil {
		return fmt.Errorf("image %s (%s) has no profile: record one with 'lazypull profile %s'", ref, img.Descriptor.Digest, ref)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "profile\t%s\n", desc.Digest)
	fmt.Fprintf(w, "image\t%s\n", p.Subject)
	fmt.Fprintf(w, "created\t%s\n", p.Created.Format(time.RFC3339))
	if len(p.Command) > 0 {
		fmt.Fprintf(w, "command\t%q\n", p.Command)
	}
	fmt.Fprintf(w, "files\t%d, %d bytes\n", len(p.Files), p.Bytes())
	if found.Pack != nil {
		fmt.Fprintf(w, "pack\t%s, %d bytes\n", found.Pack.Digest, found.Pack.Size)
	} else {
		fmt.Fprintf(w, "pack\tnone\n")
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "AT (ms)\tLAYER\tBYTES\tRANGES\tPATH")
	for _, fl := range p.Files {
		var n int64
		for _, r := range fl.Ranges {
			n += r.Len
		}
		fmt.Fprintf(w, "%.1f\t%d\t%d\t%d\t%s\n", float64(fl.AtUS)/1000, fl.Layer, n, len(fl.Ranges), printablePath(fl.Path))
	}
	return w.Flush()
}

// printablePath is how profile show prints a path of a profile (which comes from the
// registry): as /PATH, quoted if it holds anything but printable characters, so that no
// name sends the terminal control sequences, nor breaks the table.
func printablePath(p string) string {
	if strings.ContainsFunc(p, func(r rune) bool { return !unicode.IsPrint(r) || r == '\t' }) {
		return strconv.Quote("/" + p)
	}
	return "/" + p
}

var profileExecCommand = &command{
	name:    "profile-exec",
	args:    "-- ROOTFS DIR PROG ARGV0 [ARGS...]",
	summary: "run a workload chrooted for lazypull profile (started by it)",
	run: func(_ context.Context, _ *env, _ any, args []string) error {
		if len(args) < 4 {
			return usagef("want ROOTFS DIR PROG ARGV0 [ARGS...]")
		}
		rootfs, dir, prog, argv := args[0], args[1], args[2], args[3:]
		if err := syscall.Chroot(rootfs); err != nil {
			return fmt.Errorf("chroot %s: %w", rootfs, err)
		}
		if err := syscall.Chdir(dir); err != nil {
			return fmt.Errorf("working directory %s in the image: %w", dir, err)
		}
		err := syscall.Exec(prog, argv, os.Environ())
		return fmt.Errorf("exec %s in the image: %w", prog, err)
	},
}
