package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"

	"lazypull/internal/service"
)

func statsCommand() *command {
	return &command{
		name:    "stats",
		args:    "[flags]",
		summary: "show what the node's store holds and what it fetched",
		help: `
Objects and bytes in the store, and the hits, misses and bytes fetched since the process
that holds the store (a mount, the snapshotter) started. When no process holds the store,
the store is opened to count what it holds.`,
		flags: func(fs *flag.FlagSet) any {
			f := &statsFlags{}
			fs.StringVar(&f.dir, "store", service.DefaultStoreDir, "the node's content store `dir`")
			fs.BoolVar(&f.json, "json", false, "print JSON")
			return f
		},
		run: runStats,
	}
}

type statsFlags struct {
	dir  string
	json bool
}

func runStats(_ context.Context, e *env, vals any, args []string) error {
	f := vals.(*statsFlags)
	if len(args) != 0 {
		return usagef("takes no arguments")
	}
	s, err := service.Stats(f.dir, newLogger(e))
	if err != nil {
		return err
	}
	if f.json {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	}
	service.WriteStats(e.stdout, f.dir, s)
	return nil
}

func pruneCommand() *command {
	return &command{
		name:    "prune",
		args:    "[flags]",
		summary: "remove content from the node's store that no mount uses",
		flags: func(fs *flag.FlagSet) any {
			f := &pruneFlags{}
			fs.StringVar(&f.dir, "store", service.DefaultStoreDir, "the node's content store `dir`")
			fs.Int64Var(&f.target, "to", 0, "prune down to `n` bytes (0: everything)")
			return f
		},
		run: func(ctx context.Context, e *env, vals any, args []string) error {
			f := vals.(*pruneFlags)
			if len(args) != 0 {
				return usagef("takes no arguments")
			}
			if f.target < 0 {
				return usagef("-to must not be negative")
			}
			r, err := service.Prune(ctx, f.dir, f.target, newLogger(e))
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "pruned %d objects, %s\n", r.Objects, humanBytes(r.Bytes))
			return nil
		},
	}
}

type pruneFlags struct {
	dir    string
	target int64
}
