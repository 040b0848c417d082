package cli

import (
	"context"
	"flag"

	"lazypull/internal/cmdline"
	"lazypull/internal/imageindex"
)

func indexCommand() *command {
	return &command{
		name:    "index",
		args:    "[flags] REF",
		summary: "index an unconverted image's gzip and zstd layers for lazy reads, pushed beside it",
		help: `
Reads each layer of the image once (several at a time, each streamed: memory stays at a
few hundred KiB a layer plus its index) and builds, for a gzip or zstd layer, checkpoints
that let any range of its tar stream be decoded from a few ranges of the blob, and a file
table:
each entry's metadata, and each regular file's sha256 and place in the tar stream. Each
layer's tar stream is checked against the diff ID in the config. The indexes are pushed as
one artifact whose subject is the image manifest (artifactType
application/vnd.lazypull.index.v1, one blob per layer, then a window blob per gzip or zstd
layer: the decoder windows of its checkpoints, read by range only), found through the
referrers API or its tag schema: the image itself, its digest and its tags, are not touched.
Uncompressed tar layers get a file table only. A layer's windows are written to a
temporary file while it is read, then uploaded.`,
		flags: func(fs *flag.FlagSet) any {
			f := &indexFlags{}
			f.registry.add(fs)
			fs.Int64Var(&f.span, "span", 0, "compressed `bytes` between checkpoints (default 32 KiB for gzip, 64 KiB for zstd)")
			fs.IntVar(&f.jobs, "jobs", 4, "layers read at once")
			return f
		},
		run: typed(runIndex),
	}
}

type indexFlags struct {
	registry registryFlags
	span     int64
	jobs     int
}

func runIndex(ctx context.Context, e *env, f *indexFlags, args []string) error {
	if len(args) != 1 {
		return cmdline.Usagef("want one REF")
	}
	if f.span < 0 || f.jobs < 1 {
		return cmdline.Usagef("--span must be positive, --jobs at least 1")
	}
	log := newLogger(e)
	platform, client, err := f.registry.open(log)
	if err != nil {
		return err
	}
	defer client.Close()
	_, err = imageindex.Image(ctx, e.stdout, args[0], imageindex.Options{
		Client: client, Platform: platform, SpanSize: f.span, Jobs: f.jobs, Log: log,
	})
	return err
}
