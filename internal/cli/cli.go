package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/internal/cmdline"
	"lazypull/internal/fetch"
	"lazypull/internal/service"
)

// command is one subcommand. Adding one (mount, pull, snapshotter, stats) means
// writing its run function and listing it in commands.
type command struct {
	name    string
	args    string // synopsis after the name, e.g. "[flags] SRC DST"
	summary string // one line for `lazypull help`
	help    string // paragraphs for `lazypull CMD -h`, before the flags
	// flags declares the command's flags on fs and returns what run needs from them.
	flags func(fs *flag.FlagSet) any
	// run does the work; positional are the arguments after the flags.
	run func(ctx context.Context, e *env, vals any, positional []string) error
}

// typed makes a command's run from one that takes what its flags returned, a *T.
func typed[T any](run func(ctx context.Context, e *env, f *T, positional []string) error) func(context.Context, *env, any, []string) error {
	return func(ctx context.Context, e *env, vals any, positional []string) error {
		return run(ctx, e, vals.(*T), positional)
	}
}

// commands lists the subcommands in the order `lazypull help` shows them.
func commands() []*command {
	return []*command{convertCommand(), mountCommand(), umountCommand(), pullCommand(), profileCommand(), profileChrootCommand(),
		profileExecCommand(), mountProbeCommand(), snapshotterCommand(), keeperCommand(), statsCommand(), pruneCommand(), verifyCommand(), indexCommand(), versionCommand()}
}

// env is what a command may touch of the outside world.
type env struct {
	stdout, stderr io.Writer
	// stderrTerminal: stderr is a terminal, so progress can be drawn live.
	stderrTerminal bool
	stderrFd       int
}

// exitError ends the command with its status and says nothing more: a process it ran (with
// the same stderr) has said why already.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// Main runs lazypull with args (without the program name) and returns the exit status.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr}
	e.stderrFd, e.stderrTerminal = cmdline.Terminal(stderr)

	if len(args) == 0 {
		printUsage(stderr)
		return cmdline.ExitUsage
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		if len(args) > 1 {
			if cmd := lookup(args[1]); cmd != nil {
				printCommandUsage(stdout, cmd)
				return cmdline.ExitOK
			}
			fmt.Fprintf(stderr, "lazypull: unknown command %q\nRun 'lazypull help' for the list of commands.\n", args[1])
			return cmdline.ExitUsage
		}
		printUsage(stdout)
		return cmdline.ExitOK
	}
	cmd := lookup(args[0])
	if cmd == nil {
		fmt.Fprintf(stderr, "lazypull: unknown command %q\nRun 'lazypull help' for the list of commands.\n", args[0])
		return cmdline.ExitUsage
	}

	fs := newFlagSet(cmd)
	var vals any
	if cmd.flags != nil {
		vals = cmd.flags(fs)
	}
	positional, err := parseInterspersed(fs, args[1:])
	if errors.Is(err, flag.ErrHelp) {
		printCommandUsage(stdout, cmd)
		return cmdline.ExitOK
	}
	if err == nil {
		err = cmd.run(ctx, e, vals, positional)
	}
	var ue *cmdline.UsageError
	var ee exitError
	switch {
	case err == nil:
		return cmdline.ExitOK
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "lazypull %s: %s\nusage: lazypull %s %s\nRun 'lazypull %s -h' for details.\n", cmd.name, ue.Msg, cmd.name, cmd.args, cmd.name)
		return cmdline.ExitUsage
	default:
		fmt.Fprintf(stderr, "lazypull: %s\n", oneLine(err.Error()))
		return cmdline.ExitFailure
	}
}

func lookup(name string) *command {
	for _, c := range commands() {
		if c.name == name {
			return c
		}
	}
	return nil
}

func newFlagSet(cmd *command) *flag.FlagSet {
	fs := flag.NewFlagSet("lazypull "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported by Main, usage on -h only
	return fs
}

// parseInterspersed parses flags wherever they stand among the positional arguments (the
// standard flag package stops at the first positional one). "--" ends the flags.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, cmdline.Usagef("%v", err)
		}
		rest := fs.Args()
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" {
			return append(positional, rest...), nil
		}
		if len(rest) == 0 {
			return positional, nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

func printUsage(w io.Writer) {
	fmt.Fprintf(w, "lazypull: lazy-pulling container images\n\nusage: lazypull COMMAND [flags] [args]\n\ncommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "  %-10s %s\n", "help", "show this, or the usage of a command: lazypull help COMMAND")
	fmt.Fprintf(w, "\nRun 'lazypull COMMAND -h' for the flags of a command.\n")
}

func printCommandUsage(w io.Writer, cmd *command) {
	fmt.Fprintf(w, "usage: lazypull %s %s\n\n%s\n", cmd.name, cmd.args, cmd.summary)
	if cmd.help != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(cmd.help))
	}
	fs := newFlagSet(cmd)
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	hasFlags := false
	fs.VisitAll(func(*flag.Flag) { hasFlags = true })
	if hasFlags {
		fmt.Fprintf(w, "\nflags:\n")
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
}

// oneLine folds a multi-line error (some registries send them) into the one line it is
// reported on.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}

// parsePlatform parses the -platform flag: nil (this machine's) when empty.
func parsePlatform(s string) (*v1.Platform, error) {
	p, err := service.ParsePlatform(s)
	if err != nil {
		return nil, cmdline.Usagef("%v", err)
	}
	return p, nil
}

func newLogger(e *env) *slog.Logger { return newLeveledLogger(e, slog.LevelInfo) }

func newLeveledLogger(e *env, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level}))
}

// reachFlags are how a command reaches registries: over plain http or not, and where
// containerd-style hosts.toml files name each registry's servers.
type reachFlags struct {
	plainHTTP bool
	hostsDir  string
}

func (r *reachFlags) add(fs *flag.FlagSet) {
	fs.BoolVar(&r.plainHTTP, "plain-http", false, "talk to registries over http instead of https")
	fs.StringVar(&r.hostsDir, "hosts-dir", "", "containerd-style `dir` of HOST/hosts.toml files naming each registry's servers")
}

// client makes the command's registry client, where every one is made: in service. The
// caller closes it.
func (r *reachFlags) client(log *slog.Logger) (*fetch.Client, error) {
	return service.NewClient(log, r.plainHTTP, r.hostsDir)
}

// registryFlags are the flags of a command that reads an image from a registry: which
// image of an index, and how the registry is reached.
type registryFlags struct {
	platform string
	reach    reachFlags
}

func (r *registryFlags) add(fs *flag.FlagSet) {
	fs.StringVar(&r.platform, "platform", "", "the image for `os/arch[/variant]` of a multi-platform REF (default: this machine's)")
	r.reach.add(fs)
}

// open parses the platform and makes the registry client, which the caller closes.
func (r *registryFlags) open(log *slog.Logger) (*v1.Platform, *fetch.Client, error) {
	platform, err := parsePlatform(r.platform)
	if err != nil {
		return nil, nil, err
	}
	client, err := r.reach.client(log)
	if err != nil {
		return nil, nil, err
	}
	return platform, client, nil
}
