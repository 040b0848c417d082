package cli

import (
	"context"
	"flag"
	"time"

	"lazypull/internal/keeper"
)

// keeperIdle is how long a keeper with nothing to hold and no client waits before exiting.
const keeperIdle = 10 * time.Second

func keeperCommand() *command {
	return &command{
		name:    "keeper",
		args:    "--socket PATH",
		summary: "hold the snapshotter's FUSE connections across its restarts (started by it)",
		help: `
Holds the /dev/fuse connections of the layers a lazypull snapshotter mounted, so that the
mounts outlive the snapshotter: while it is down (crashed, killed, restarted) reads in
running containers wait instead of failing, and the next snapshotter takes the mounts back
and answers them. The snapshotter starts it (socket ROOT/keeper.sock, log ROOT/keeper.log);
it exits by itself once it holds nothing and nobody is connected.`,
		flags: func(fs *flag.FlagSet) any { return fs.String("socket", "", "serve on this unix `socket`") },
		run: func(ctx context.Context, e *env, vals any, args []string) error {
			sock := *vals.(*string)
			if sock == "" || len(args) > 0 {
				return usagef("usage: lazypull keeper --socket PATH")
			}
			return keeper.Serve(ctx, sock, keeperIdle, newLogger(e))
		},
	}
}
