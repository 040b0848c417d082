// Package cli is lazypull's command line: one subcommand per entry of commands, each with its
// own flag.FlagSet. cmd/lazypull only calls Main. A command parses its flags and wires the
// package that does its work (internal/pull, internal/record, internal/convert, ...).
//
// Exit status: 0 on success, 1 when a command fails (one line on stderr naming what failed
// and why), 2 when the command line is wrong.
package cli
