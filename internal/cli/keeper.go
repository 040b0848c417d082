package cli

import (
	"context"
	"flag"
	"time"

	"lazypull/internal/cmdline"
	"lazypull/internal/keeper"
	"lazypull/internal/service"
)

type keeperFlags struct {
	socket string
	idle   time.Duration
}

func keeperCommand() *command {
	return &command{
		name:    "keeper",
		args:    "--socket PATH [--idle DURATION]",
		summary: "hold the snapshotter's FUSE connections across its restarts (started by it)",
		help: `
Holds the /dev/fuse connections of the layers a lazypull snapshotter mounted, so that the
mounts outlive the snapshotter: while it is down (crashed, killed, restarted) reads in
running containers wait instead of failing, and the next snapshotter takes the mounts back
and answers them. It also keeps, in its memory only, the registry credentials the
snapshotter's CRI proxy got from kubelet, so that the next snapshotter has them too (never
written to a file, never logged; they die with the keeper). The snapshotter starts it
(socket ROOT/keeper.sock, mode 0600, log ROOT/keeper.log, --idle its keeper_idle); it exits
by itself once it has held no connection and had nobody connected for --idle.`,
		flags: func(fs *flag.FlagSet) any {
			f := &keeperFlags{}
			fs.StringVar(&f.socket, "socket", "", "serve on this unix `socket`")
			durationFlag(fs, &f.idle, "idle", service.DefaultKeeperIdle, "exit after `duration` holding nothing with nobody connected")
			return f
		},
		run: typed(func(ctx context.Context, e *env, f *keeperFlags, args []string) error {
			if f.socket == "" || len(args) > 0 {
				return cmdline.Usagef("usage: lazypull keeper --socket PATH [--idle DURATION]")
			}
			if f.idle <= 0 {
				return cmdline.Usagef("--idle must be more than 0")
			}
			return keeper.Serve(ctx, f.socket, f.idle, newLogger(e))
		}),
	}
}
