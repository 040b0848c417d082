package bench

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"lazypull/internal/fusefs"
)

// Image is one workload: an image built by scripts/build-bench-images.sh whose Cmd prints a
// readiness line, or a user's image (ParseUserImage).
type Image struct {
	Name string `json:"name"`
	// Ready is the readiness line: the run is ready when a line of the container's output
	// (stdout or stderr) contains it. Empty: when the command exits with status 0.
	Ready string `json:"ready,omitempty"`
	// Server: the workload keeps running once ready; the harness kills it then.
	Server bool `json:"server,omitempty"`
	// Source, a user's image only: where skopeo copies it from (oci:DIR[:TAG],
	// docker://REF), instead of the layout the image builder made.
	Source string `json:"source,omitempty"`
	// Cmd, when set, is run instead of the image's entrypoint and command.
	Cmd []string `json:"cmd,omitempty"`
}

// Workloads are the images the harness knows, by name; their Cmd is in
// scripts/build-bench-images.sh.
var Workloads = map[string]Image{
	"python":   {Name: "python", Ready: "hello from python"},
	"node":     {Name: "node", Ready: "hello from node"},
	"gcc":      {Name: "gcc", Ready: "hello from gcc"},
	"postgres": {Name: "postgres", Ready: "ready to accept connections", Server: true},
	"jdk":      {Name: "jdk", Ready: "hello from java"},
	"big":      {Name: "big", Ready: "hello from big"},
	// ML-sized, opt-in: 3 GiB of weights, 1.5 GiB read at start.
	"ml": {Name: "ml", Ready: "weights loaded"},

	// python's next version, for the update scenario (Updates).
	"python-v2": {Name: "python-v2", Ready: "hello from python v2"},
}

// command runs name with args, returning its combined output, or an error that carries the
// tail of that output.
func command(ctx context.Context, extraEnv []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), extraEnv...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// The process group gets the kill on a timeout, so that a script's children go too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, tail(out.String(), 20))
	}
	return out.String(), nil
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// registry is a docker-registry started with scripts/registry.sh.
type registry struct {
	scripts, dir, addr string
}

func startRegistry(ctx context.Context, scripts, dir string) (*registry, error) {
	var last error
	// A random port: other engineers' registries run on this machine; registry.sh refuses
	// a port in use, and then another is tried.
	for range 5 {
		addr := "127.0.0.1:" + strconv.Itoa(20000+rand.IntN(10000))
		if _, err := command(ctx, nil, filepath.Join(scripts, "registry.sh"), "start", dir, addr); err != nil {
			last = err
			continue
		}
		return &registry{scripts: scripts, dir: dir, addr: addr}, nil
	}
	return nil, fmt.Errorf("start the registry: %w", last)
}

func (r *registry) stop() error {
	if r == nil {
		return nil
	}
	_, err := command(context.Background(), nil, filepath.Join(r.scripts, "registry.sh"), "stop", r.dir)
	return err
}

// node is one cold node for one run: a containerd on a fresh root and, for lazypull, a
// `lazypull snapshotter` on a fresh root and store that containerd has as proxy plugin.
type node struct {
	scripts, lazypull string
	dir               string // everything of this node; removed by stop
	ctd               string // containerd's dir (scripts/containerd.sh)
	snSock, snRoot    string
	snStore           string
	sn                *exec.Cmd
	snDone            chan error
	snLog             *os.File
	keepLog           string // where stop copies the snapshotter's log to, if set
}

const namespace = "lazypull-bench"

// startNode starts containerd, with the lazypull snapshotter for the lazypull modes (looking
// up prefetch profiles in ModeProfile only), under a new directory in work.
func startNode(ctx context.Context, scripts, lazypull, work string, mode Mode) (n *node, err error) {
	return startNodeWith(ctx, scripts, lazypull, work, mode, fmt.Sprintf("prefetch = %t\n", prefetches(mode)))
}

// startNodeWith is startNode with snConf as the snapshotter's config (lazy modes).
func startNodeWith(ctx context.Context, scripts, lazypull, work string, mode Mode, snConf string) (n *node, err error) {
	dir, err := os.MkdirTemp(work, "n") // short: unix socket paths are limited to 108 bytes
	if err != nil {
		return nil, err
	}
	n = &node{scripts: scripts, lazypull: lazypull, dir: dir, ctd: filepath.Join(dir, "ctd")}
	defer func() {
		if err != nil {
			n.stop()
		}
	}()
	var env []string
	if mode.lazy() {
		if err := n.startSnapshotterWith(snConf); err != nil {
			return n, err
		}
		env = append(env, "CONTAINERD_PROXY_SNAPSHOTTER="+n.snSock)
	}
	if _, err := command(ctx, env, filepath.Join(scripts, "containerd.sh"), "start", n.ctd); err != nil {
		return n, fmt.Errorf("start containerd: %w", err)
	}
	return n, nil
}

// startSnapshotterWith starts `lazypull snapshotter` on a fresh root and store in the node's
// directory, with conf appended to its config file, and args after its own.
func (n *node) startSnapshotterWith(conf string, args ...string) error {
	n.snSock = filepath.Join(n.dir, "sn.sock")
	n.snRoot = filepath.Join(n.dir, "sn")
	n.snStore = filepath.Join(n.dir, "store")
	// A config file of our own: the node's /etc/lazypull/config.toml must not change the run.
	config := filepath.Join(n.dir, "sn.toml")
	full := fmt.Sprintf("root = %q\nstore = %q\nplain_http = true\n", n.snRoot, n.snStore) + conf
	if err := os.WriteFile(config, []byte(full), 0o644); err != nil {
		return err
	}
	log, err := os.Create(filepath.Join(n.dir, "snapshotter.log"))
	if err != nil {
		return err
	}
	n.snLog = log
	n.sn = exec.Command(n.lazypull, append([]string{"snapshotter", "--config", config, "--address", n.snSock}, args...)...)
	n.sn.Stdout, n.sn.Stderr = log, log
	if err := n.sn.Start(); err != nil {
		return fmt.Errorf("start the snapshotter: %w", err)
	}
	done := make(chan error, 1)
	n.snDone = done
	go func() { done <- n.sn.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(n.snSock); err == nil {
			return nil
		}
		select {
		case err := <-done:
			done <- err
			return fmt.Errorf("the snapshotter exited at start (%v):\n%s", err, n.snapshotterLog())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the snapshotter has no socket after 30 s:\n%s", n.snapshotterLog())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (n *node) snapshotterLog() string {
	if n.snLog == nil {
		return ""
	}
	b, _ := os.ReadFile(n.snLog.Name())
	return tail(string(b), 20)
}

func (n *node) sock() string { return filepath.Join(n.ctd, "containerd.sock") }

func (n *node) ctr(args ...string) []string {
	return append([]string{"--address", n.sock(), "--namespace", namespace}, args...)
}

// stop stops containerd (its tasks first, unmounting what is under its dir), then the
// snapshotter with SIGTERM, which leaves its lazy layer mounts to its keeper; those are
// unmounted, and the keeper, with nothing left to keep, exits by itself. Then the node's
// directory is removed, unless something is still mounted in it.
func (n *node) stop() error {
	var errs []error
	if _, err := os.Stat(n.ctd); err == nil {
		if _, err := command(context.Background(), nil, filepath.Join(n.scripts, "containerd.sh"), "stop", n.ctd); err != nil {
			errs = append(errs, fmt.Errorf("stop containerd: %w", err))
		}
	}
	if n.sn != nil {
		select {
		case err := <-n.snDone:
			errs = append(errs, fmt.Errorf("the snapshotter had exited (%v):\n%s", err, n.snapshotterLog()))
		default:
			n.sn.Process.Signal(syscall.SIGTERM)
			select {
			case err := <-n.snDone:
				if err != nil {
					errs = append(errs, fmt.Errorf("the snapshotter ended with %v:\n%s", err, n.snapshotterLog()))
				}
			case <-time.After(30 * time.Second):
				n.sn.Process.Kill()
				<-n.snDone
				errs = append(errs, fmt.Errorf("the snapshotter did not stop on SIGTERM in 30 s:\n%s", n.snapshotterLog()))
			}
		}
		n.snLog.Close()
		if n.keepLog != "" {
			if err := copyFile(n.snLog.Name(), n.keepLog); err != nil {
				errs = append(errs, fmt.Errorf("keep the snapshotter's log: %w", err))
			}
		}
	}
	left := mountsUnder(n.dir)
	for i := len(left) - 1; i >= 0; i-- {
		if err := exec.Command("umount", "-l", left[i]).Run(); err != nil {
			errs = append(errs, fmt.Errorf("umount %s: %w", left[i], err))
		}
	}
	if left := mountsUnder(n.dir); len(left) > 0 {
		errs = append(errs, fmt.Errorf("still mounted, %s not removed: %v", n.dir, left))
	} else if err := os.RemoveAll(n.dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// keepLogs keeps what the run on n did in logDir under name: the link's requests from
// since on, as name.requests (from says what since is, for the header), and, for the lazy
// and stargz modes, the snapshotter's log as name.log once the node stops. No logDir: none.
func (n *node) keepLogs(logDir, name string, p *Proxy, mode Mode, since time.Time, from string, readyAfter float64) error {
	if logDir == "" {
		return nil
	}
	base := filepath.Join(logDir, strings.NewReplacer("/", "_").Replace(name))
	if mode.lazy() || isStargz(mode) || isSoci(mode) {
		n.keepLog = base + ".log"
	}
	reqs := fmt.Sprintf("# the link's requests from %s (%s), ready at +%.3fs\n%s\n",
		from, since.UTC().Format(time.RFC3339Nano), readyAfter, strings.Join(p.RequestLog(since), "\n"))
	if err := os.WriteFile(base+".requests", []byte(reqs), 0o644); err != nil {
		return fmt.Errorf("keep the request log: %w", err)
	}
	return nil
}

// stopAfterReady stops the node of a measured run and returns the bytes the link forwarded
// since ready (the counters then), a background fetch's, say.
func (n *node) stopAfterReady(p *Proxy, ready Counters) (int64, error) {
	if err := n.stop(); err != nil {
		return 0, err
	}
	n.ctd, n.sn = "", nil // stopped; the deferred stop has nothing left to do
	return p.Counters().Sub(ready).Down, nil
}

// copyFile copies the file src to dst, making dst's directory.
func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}

// mountsUnder lists the mount points below dir, in mount order.
func mountsUnder(dir string) []string {
	mps, _ := fusefs.MountsUnder(dir)
	return mps
}

// nodePrograms are the programs a run of mode starts or talks to on the node: they are
// read back into the page cache after it is dropped (dropCaches).
func nodePrograms(cfg Config, mode Mode) []string {
	progs := []string{"containerd", "ctr", "containerd-shim-runc-v2", "runc"}
	switch {
	case mode.lazy():
		progs = append(progs, cfg.Lazypull)
	case isStargz(mode):
		progs = append(progs, cfg.Stargz, "ctr-remote")
	case isSoci(mode):
		progs = append(progs, findSoci(cfg.Scripts))
	}
	return progs
}

// dropCaches writes dirty pages out and drops the page cache, dentries and inodes, so that
// the run reads the registry's blobs from the disk; then it reads programs (and the shared
// libraries they load) back in. A node that starts containers has its runtime in memory:
// a run that paged in containerd, runc and the snapshotter from the disk measured the
// disk, not the image's absence, and charged the modes that run more daemons for it. The
// warm start the limit is built on has them in memory too.
func dropCaches(programs ...string) error {
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		return fmt.Errorf("drop the page cache: %w", err)
	}
	seen := map[string]bool{}
	for _, p := range programs {
		if err := readIn(p, seen); err != nil {
			return fmt.Errorf("read %s back into the page cache: %w", p, err)
		}
	}
	return nil
}

// libDirs are where readIn looks for the shared libraries a program needs.
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}

// readIn reads program (a path, or a name looked up in PATH) and, when it is a dynamically
// linked ELF file, its interpreter and the libraries it needs, so that they are in the page
// cache. seen holds the files read already.
func readIn(program string, seen map[string]bool) error {
	p := program
	if !strings.Contains(p, "/") {
		var err error
		if p, err = exec.LookPath(program); err != nil {
			return err
		}
	}
	if seen[p] {
		return nil
	}
	seen[p] = true
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.Copy(io.Discard, f); err != nil {
		return err
	}
	ef, err := elf.NewFile(f)
	if err != nil {
		return nil // not ELF (a script): read, and that is all
	}
	defer ef.Close()
	var deps []string
	for _, pr := range ef.Progs {
		if pr.Type == elf.PT_INTERP {
			b, err := io.ReadAll(pr.Open())
			if err == nil {
				deps = append(deps, strings.TrimRight(string(b), "\x00"))
			}
		}
	}
	libs, _ := ef.ImportedLibraries()
	for _, lib := range libs {
		for _, d := range libDirs {
			if _, err := os.Stat(filepath.Join(d, lib)); err == nil {
				deps = append(deps, filepath.Join(d, lib))
				break
			}
		}
	}
	for _, d := range deps {
		if err := readIn(d, seen); err != nil {
			return err
		}
	}
	return nil
}

// outputTail keeps the last lines a container printed, for error messages.
type outputTail struct {
	mu    sync.Mutex
	lines []string
}

func (t *outputTail) add(s string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lines = append(t.lines, s)
	if len(t.lines) > 30 {
		t.lines = t.lines[len(t.lines)-30:]
	}
}

func (t *outputTail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, "\n")
}

// runToReady runs `ctr run` with args (the image's reference last), as container id running
// im's Cmd when it has one, and returns when a line of its output contains im.Ready (or, when
// im.Ready is empty, when it exits with status 0), with the time that took. A server (keeps
// running) is then killed; a one-shot command must exit with status 0. Either way it
// returns only once ctr has exited.
func (n *node) runToReady(ctx context.Context, id string, im Image, args ...string) (time.Duration, error) {
	return n.runToReadyThen(ctx, id, im, nil, args...)
}

// runToReadyThen is runToReady, calling atReady (when not nil) as soon as the readiness line
// is seen, before the container is stopped or waited for: what is measured "before ready"
// (the link's counters) is read there, not after the container's exit.
func (n *node) runToReadyThen(ctx context.Context, id string, im Image, atReady func(), args ...string) (time.Duration, error) {
	ready, server := im.Ready, im.Server
	// runc's state directory is per namespace, not per containerd: another bench on the
	// machine runs containers of the same names.
	id = fmt.Sprintf("%s-%d", id, os.Getpid())
	args = append(append(append([]string{"run", "--rm"}, args...), id), im.Cmd...)
	cmd := exec.Command("ctr", n.ctr(args...)...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	var out outputTail
	readyCh := make(chan time.Time, 1)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		seen := false
		for sc.Scan() {
			if !seen && ready != "" && strings.Contains(sc.Text(), ready) {
				readyCh <- time.Now()
				seen = true
			}
			out.add(sc.Text())
		}
		io.Copy(io.Discard, pr)
	}()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		pw.Close()
		return 0, fmt.Errorf("ctr run: %w", err)
	}
	exited := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		pw.Close()
		<-scanned
		exited <- err
	}()

	var readyAt time.Time
	var exitErr error
	ended := false
	select {
	case readyAt = <-readyCh:
	case exitErr = <-exited:
		ended = true
		select {
		case readyAt = <-readyCh:
		default:
			if ready == "" && exitErr == nil {
				readyAt = time.Now() // ready on exit 0
			}
		}
	case <-ctx.Done():
	}
	if !readyAt.IsZero() && atReady != nil {
		atReady()
	}
	if readyAt.IsZero() {
		if !ended {
			n.killTask(id)
			cmd.Process.Kill()
			exitErr = <-exited
		}
		if ctx.Err() != nil {
			return 0, fmt.Errorf("not ready after %v (%w); output:\n%s", time.Since(start).Round(time.Millisecond), ctx.Err(), out.String())
		}
		if ready == "" {
			return 0, fmt.Errorf("ctr run: %w; output:\n%s", exitErr, out.String())
		}
		return 0, fmt.Errorf("ctr run exited (%v) without the readiness line %q; output:\n%s", exitErr, ready, out.String())
	}
	took := readyAt.Sub(start)
	if server && !ended {
		n.killTask(id)
	}
	if !ended {
		select {
		case exitErr = <-exited:
		case <-time.After(time.Minute):
			cmd.Process.Kill()
			<-exited
			return took, fmt.Errorf("ctr run did not exit within a minute after ready; output:\n%s", out.String())
		}
	}
	if exitErr != nil && !server {
		return took, fmt.Errorf("ctr run: %w; output:\n%s", exitErr, out.String())
	}
	return took, nil
}

func (n *node) killTask(id string) {
	exec.Command("ctr", n.ctr("task", "kill", "--signal", "SIGKILL", id)...).Run()
}
