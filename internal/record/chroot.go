package record

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// runWorkload runs argv chrooted in rootfs (through opts.ChrootHelper) until a line of its
// output contains opts.Until, until opts.Duration passes, or until it exits; then kills
// what is left of it. It returns why it stopped.
func runWorkload(ctx context.Context, opts Options, log *slog.Logger, rootfs string, argv, env []string, wd string) (string, error) {
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
	args := append(append(append([]string{self}, opts.ChrootHelper...), rootfs, wd, prog), argv...)
	cmd := &exec.Cmd{Path: self, Args: args, Env: env,
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
	return watchWorkload(ctx, opts.Stderr, pr, exited, func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }, opts.Until, opts.Duration)
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

// ExecChrooted chroots to rootfs, changes to dir there and execs prog with argv and this
// process's environment: what the helper of Options.ChrootHelper does. It returns only on
// failure.
func ExecChrooted(rootfs, dir, prog string, argv []string) error {
	if err := syscall.Chroot(rootfs); err != nil {
		return fmt.Errorf("chroot %s: %w", rootfs, err)
	}
	if err := syscall.Chdir(dir); err != nil {
		return fmt.Errorf("working directory %s in the image: %w", dir, err)
	}
	err := syscall.Exec(prog, argv, os.Environ())
	return fmt.Errorf("exec %s in the image: %w", prog, err)
}
