// Package cmdline is what lazypull's two binaries, lazypull (internal/cli) and
// lazypull-bench, share of their command lines: the exit statuses, the usage error, and
// whether stderr is a terminal that progress can be drawn on.
package cmdline

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/term"
)

// Exit statuses.
const (
	ExitOK      = 0
	ExitFailure = 1 // the command ran and failed
	ExitUsage   = 2 // the command line was wrong
)

// UsageError is a wrong command line: reported with a pointer to the usage, exit status
// ExitUsage.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

// Usagef returns a UsageError saying what is wrong.
func Usagef(format string, args ...any) error { return &UsageError{fmt.Sprintf(format, args...)} }

// Terminal returns w's file descriptor, and whether w is a terminal.
func Terminal(w io.Writer) (fd int, ok bool) {
	f, isFile := w.(*os.File)
	if !isFile || !term.IsTerminal(int(f.Fd())) {
		return 0, false
	}
	return int(f.Fd()), true
}
