// Command lazypull-bench is lazypull's benchmark harness (internal/bench), kept out of the
// product binary: the cold container starts over emulated links (e2e), and the bars of the
// converter (convert), the lazy mount (mount) and the snapshotter (snapshotter). Each
// starts its own registry, containerd and mounts on loopback and private paths, and stops
// them. Needs root and the packages of scripts/deps.sh; run it from the repository.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"lazypull/internal/cmdline"
)

// env is what a subcommand may touch of the outside world.
type env struct {
	stdout, stderr io.Writer
	// stderrTerminal: stderr is a terminal, so progress can be drawn live.
	stderrTerminal bool
	log            *slog.Logger
}

// subcommand is one benchmark.
type subcommand struct {
	name, summary, help string
	// flags declares the subcommand's flags on fs and returns what run needs from them.
	flags func(fs *flag.FlagSet) any
	run   func(ctx context.Context, e *env, vals any, args []string) error
}

var subcommands = []*subcommand{e2eCommand, convertCommand, mountCommand, snapshotterCommand}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: lazypull-bench BENCHMARK [flags]\n\nBenchmarks:")
	for _, c := range subcommands {
		fmt.Fprintf(w, "  %-12s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'lazypull-bench BENCHMARK -h' for its flags.")
}

// Main runs lazypull-bench with args (without the program name) and returns the exit status.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr, log: slog.New(slog.NewTextHandler(stderr, nil))}
	_, e.stderrTerminal = cmdline.Terminal(stderr)
	if len(args) == 0 {
		printUsage(stderr)
		return cmdline.ExitUsage
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		printUsage(stdout)
		return cmdline.ExitOK
	}
	var cmd *subcommand
	for _, c := range subcommands {
		if c.name == args[0] {
			cmd = c
		}
	}
	if cmd == nil {
		fmt.Fprintf(stderr, "lazypull-bench: unknown benchmark %q\n", args[0])
		printUsage(stderr)
		return cmdline.ExitUsage
	}
	fs := flag.NewFlagSet("lazypull-bench "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: lazypull-bench %s [flags]\n%s\n\nFlags:\n", cmd.name, cmd.help)
		fs.PrintDefaults()
	}
	vals := cmd.flags(fs)
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
			return cmdline.ExitOK
		}
		return cmdline.ExitUsage
	}
	err := cmd.run(ctx, e, vals, fs.Args())
	if err == nil {
		return cmdline.ExitOK
	}
	fmt.Fprintf(stderr, "lazypull-bench %s: %v\n", cmd.name, err)
	var ue *cmdline.UsageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "Run 'lazypull-bench %s -h' for usage.\n", cmd.name)
		return cmdline.ExitUsage
	}
	return cmdline.ExitFailure
}

// commandLine is how the run was asked for, for the reports.
func commandLine() string {
	return strings.Join(append([]string{"lazypull-bench"}, os.Args[1:]...), " ")
}

// splitList splits a comma-separated list, dropping empty fields.
func splitList(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// lazypullBinary is the lazypull binary to measure: flagValue, or the lazypull beside this
// executable (bin/lazypull beside bin/lazypull-bench).
func lazypullBinary(flagValue string) (string, error) {
	p := flagValue
	if p == "" {
		self, err := os.Executable()
		if err != nil {
			return "", err
		}
		p = filepath.Join(filepath.Dir(self), "lazypull")
	}
	p, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("the lazypull binary: %w (make build; or --lazypull)", err)
	}
	return p, nil
}
