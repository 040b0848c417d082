package cli

import (
	"context"
	"flag"

	"lazypull/internal/cmdline"
	"lazypull/internal/service"
	"lazypull/internal/verify"
)

func verifyCommand() *command {
	return &command{
		name:    "verify",
		args:    "[flags] REF | --store",
		summary: "check an image's indexes against its layers, or the node's store against its digests",
		help: `
With REF, reads every layer of the image whole, as a plain pull does, and checks what a
lazy mount would serve against what an unpacking runtime (or a scanner, or a signature
policy) sees: each layer's blob against its digest in the manifest, its tar stream against
the diff ID in the config, every chunk against its digest in the index, and every entry of
the index against its tar header (name, type, mode, owner, mtime, size, link target,
device, xattrs, and where its content lies). Layers stream through: memory stays bounded
by one frame, whatever the size of the layer. Every layer is checked; the exit status is
1 if any does not match, and each mismatch is printed with its layer and entry.

With --store, hashes every object of the node's store (the --store-dir) and every chunk
location inside them, and removes what does not match its digest: a later read fetches
it again, nothing damaged is served. It prints the counts, and exits 1 if it removed
anything. The store is held by one process at a time: while a mount or the snapshotter
holds it, verify --store refuses with an error naming the lock: stop the holder first
(a snapshotter's mounts wait for it, held by the keeper).`,
		flags: func(fs *flag.FlagSet) any {
			f := &verifyFlags{}
			f.registry.add(fs)
			fs.BoolVar(&f.store, "store", false, "verify the node's store instead of an image")
			fs.StringVar(&f.dir, "store-dir", service.DefaultStoreDir, "the node's content store `dir` (with --store)")
			return f
		},
		run: typed(runVerify),
	}
}

type verifyFlags struct {
	registry registryFlags
	store    bool
	dir      string
}

func runVerify(ctx context.Context, e *env, f *verifyFlags, args []string) error {
	log := newLogger(e)
	if f.store {
		if len(args) != 0 {
			return cmdline.Usagef("--store takes no REF")
		}
		if damaged, err := service.VerifyStore(ctx, e.stdout, f.dir, log); err != nil || !damaged {
			return err
		}
		return verify.ErrMismatch
	}
	if len(args) != 1 {
		return cmdline.Usagef("want one REF (or --store)")
	}
	platform, client, err := f.registry.open(log)
	if err != nil {
		return err
	}
	defer client.Close()
	return verify.Image(ctx, e.stdout, args[0], platform, client)
}
