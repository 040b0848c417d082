// Command lazypull is the lazypull command line; see internal/cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"lazypull/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
