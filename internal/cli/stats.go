package cli

import (
	"context"
	"encoding/json"
	"flag"
	"io"

	"lazypull/internal/cmdline"
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
		run: typed(runStats),
	}
}

type statsFlags struct {
	dir  string
	json bool
}

func runStats(_ context.Context, e *env, f *statsFlags, args []string) error {
	if len(args) != 0 {
		return cmdline.Usagef("takes no arguments")
	}
	s, err := service.Stats(f.dir, newLogger(e))
	if err != nil {
		return err
	}
	return report(e.stdout, f.json, s, func(w io.Writer) { service.WriteStats(w, f.dir, s) })
}

func pruneCommand() *command {
	return &command{
		name:    "prune",
		args:    "[flags]",
		summary: "remove content from the node's store that no image in use needs",
		help: `
Removes, least recently used first, what the store holds for images that are no longer
in use (removed from containerd: crictl rmi, kubelet's image GC), down to --to. It keeps
the manifests, layer indexes and content of every layer a snapshot of the snapshotter
holds (what its containers read, and what a restart needs while the registry is down),
and of every image a mount or the snapshotter has open.

While the snapshotter (or a mount) runs, it holds the store: prune asks it, on the socket
` + service.AdminSocket + ` in the store's directory, and it prunes under its own lock. With
none running, prune opens the store itself and reads the snapshotter's metadata (--root)
for what is in use; when it cannot, it keeps every manifest and index, and says so.`,
		flags: func(fs *flag.FlagSet) any {
			f := &pruneFlags{}
			fs.StringVar(&f.dir, "store", service.DefaultStoreDir, "the node's content store `dir`")
			fs.StringVar(&f.root, "root", service.DefaultRoot, "the snapshotter's root `dir`, read for the images in use when no snapshotter runs")
			fs.Var(&f.target, "to", "prune down to `size`: bytes, or with a unit (10G, 512MiB); 0: all that no image in use needs")
			fs.BoolVar(&f.json, "json", false, "print JSON")
			return f
		},
		run: typed(func(ctx context.Context, e *env, f *pruneFlags, args []string) error {
			if len(args) != 0 {
				return cmdline.Usagef("takes no arguments")
			}
			if f.target == service.SizeAuto {
				return cmdline.Usagef("-to takes a size, not auto")
			}
			r, err := service.Prune(ctx, f.dir, f.root, int64(f.target), newLogger(e))
			if err != nil {
				return err
			}
			return report(e.stdout, f.json, r, func(w io.Writer) { service.WritePrune(w, f.dir, r) })
		}),
	}
}

type pruneFlags struct {
	dir, root string
	target    service.Size
	json      bool
}

// report writes v to w as indented JSON when asJSON, else as text writes it.
func report(w io.Writer, asJSON bool, v any, text func(io.Writer)) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	text(w)
	return nil
}
