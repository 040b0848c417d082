package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"lazypull/internal/bench"
	"lazypull/internal/cmdline"
)

// barFlags are the flags every bar benchmark (convert, mount, snapshotter) has.
type barFlags struct {
	n          int
	record     bool
	root       string
	lazypull   string
	testImages string
}

func (f *barFlags) declare(fs *flag.FlagSet) {
	fs.IntVar(&f.n, "n", 3, "rounds of each measure (median and min-max are reported)")
	fs.BoolVar(&f.record, "record", false, "append the report (markdown) to docs/benchmarks-history.md; default: only print it")
	fs.StringVar(&f.root, "root", ".", "the repository `dir` (scripts/, tools/, docs/)")
	fs.StringVar(&f.lazypull, "lazypull", "", "the lazypull `binary` measured (default: lazypull beside lazypull-bench, i.e. bin/lazypull)")
	fs.StringVar(&f.testImages, "test-images", os.Getenv("LAZYPULL_TEST_IMAGES"), "where the python test image layout is written (`dir`; default $LAZYPULL_TEST_IMAGES, else the work dir)")
}

func (f *barFlags) config(e *env, args []string) (bench.BarConfig, error) {
	if len(args) != 0 {
		return bench.BarConfig{}, cmdline.Usagef("no arguments expected, got %q", args)
	}
	if f.n < 1 {
		return bench.BarConfig{}, cmdline.Usagef("-n %d: want a positive integer", f.n)
	}
	root, err := filepath.Abs(f.root)
	if err != nil {
		return bench.BarConfig{}, err
	}
	if _, err := os.Stat(filepath.Join(root, "scripts", "registry.sh")); err != nil {
		return bench.BarConfig{}, fmt.Errorf("--root %s: %w (run from the repository, or point --root at it)", f.root, err)
	}
	lp, err := lazypullBinary(f.lazypull)
	if err != nil {
		return bench.BarConfig{}, err
	}
	return bench.BarConfig{Root: root, Lazypull: lp, N: f.n, TestImages: f.testImages, Record: f.record,
		Command: commandLine(), Log: e.stderr, Out: e.stdout}, nil
}

// barBench is a bar benchmark's own flags, beside the barFlags, and how it runs.
type barBench interface {
	// declare declares its flags on fs.
	declare(fs *flag.FlagSet)
	// check checks them once parsed (a usage error), before the barFlags are.
	check() error
	// run runs the benchmark.
	run(ctx context.Context, cfg bench.BarConfig) error
}

// barCommand is the subcommand of a bar benchmark: the barFlags and the flags of a
// barBench from newBench.
func barCommand(name, summary, help string, newBench func() barBench) *subcommand {
	type flags struct {
		barFlags
		bench barBench
	}
	return &subcommand{name: name, summary: summary, help: help,
		flags: func(fs *flag.FlagSet) any {
			f := &flags{bench: newBench()}
			f.declare(fs)
			f.bench.declare(fs)
			return f
		},
		run: func(ctx context.Context, e *env, vals any, args []string) error {
			f := vals.(*flags)
			if err := f.bench.check(); err != nil {
				return err
			}
			cfg, err := f.config(e, args)
			if err != nil {
				return err
			}
			return f.bench.run(ctx, cfg)
		},
	}
}

var mountCommand = barCommand("mount",
	"the lazy mount: cold read vs curl, passthrough vs local disk, bytes fetched for python3 -c 'print(1)'",
	`
The lazy mount's three bars, in one run (root; 4 to 5 minutes on a 2-CPU machine):
  1. cold read of a 1 GiB file of random bytes through a fresh lazypull mount, against curl
     of the same layer blob (and, for reference, curl in Range requests of the mount's mean
     request size): mount >= 0.8x curl;
  2. once the store holds the whole file, a read through the mount (FUSE passthrough)
     against a read of the store's object file, cold (ABBA, page cache dropped) and hot:
     mount >= 0.95x disk;
  3. python3 -c 'print(1)' in a chroot of a fresh mount of the python test image: the bytes
     fetched against the bytes the kernel read (FUSE_READ tracepoints) and the size of the
     files opened (strace): fetched <= 1.2x read.
It starts a registry on a random loopback port and removes everything it made at the end.
The page cache is dropped before every cold read. -size makes the big file smaller for a
quick run (the bars are judged at 1 GiB).`,
	func() barBench { return &mountFlags{} })

// mountFlags are the mount benchmark's own flags.
type mountFlags struct {
	size  string
	bytes int64 // size, parsed
}

func (f *mountFlags) declare(fs *flag.FlagSet) {
	fs.StringVar(&f.size, "size", "1G", "size of the big file (K, M, G suffixes: binary units)")
}

func (f *mountFlags) check() (err error) {
	if f.bytes, err = parseSize(f.size); err != nil {
		return cmdline.Usagef("-size: %v", err)
	}
	return nil
}

func (f *mountFlags) run(ctx context.Context, cfg bench.BarConfig) error {
	return bench.Mount(ctx, bench.MountConfig{BarConfig: cfg, BigBytes: f.bytes})
}

// parseSize reads a byte count with an optional K, M or G suffix (powers of 1024).
func parseSize(s string) (int64, error) {
	mult := int64(1)
	t := strings.ToUpper(strings.TrimSpace(s))
	switch {
	case strings.HasSuffix(t, "G"):
		mult, t = 1<<30, strings.TrimSuffix(t, "G")
	case strings.HasSuffix(t, "M"):
		mult, t = 1<<20, strings.TrimSuffix(t, "M")
	case strings.HasSuffix(t, "K"):
		mult, t = 1<<10, strings.TrimSuffix(t, "K")
	}
	var n int64
	if _, err := fmt.Sscan(t, &n); err != nil || n <= 0 {
		return 0, fmt.Errorf("%q: want a positive size, e.g. 1G or 256M", s)
	}
	return n * mult, nil
}

var convertCommand = barCommand("convert",
	"the converter: throughput against ctr-remote --estargz, and index vs eStargz TOC size",
	`
lazypull's converter against ctr-remote's eStargz conversion, on the python test image
(scripts/build-test-image.sh), in one run (root; about 5 minutes on an idle 2-CPU machine):
  1. throughput, uncompressed MB/s: lazypull convert OCI layout -> OCI layout and registry ->
     registry, ctr-remote image convert --estargz --oci (its defaults) and, for reference, at
     -extra-level, and lazypull index of the image in the registry; each once to warm up,
     then -n times interleaved (-extra-n for the extra level); medians and min-max of the
     wall clock, and CPU seconds of the converter plus its daemon. Bars: lazypull (layout ->
     layout) >= 2x ctr-remote; lazypull index >= 2x ctr-remote;
  2. per layer, with tools/indexsize: lazypull's index against the eStargz TOC, compressed
     and uncompressed. Bar: index <= 1/3 of the TOC.
It starts a registry on a random loopback port and a private containerd, and stops them.`,
	func() barBench { return &convertFlags{} })

// convertFlags are the converter benchmark's own flags.
type convertFlags struct {
	extraLevel, extraN int
}

func (f *convertFlags) declare(fs *flag.FlagSet) {
	fs.IntVar(&f.extraLevel, "extra-level", 1, "the extra ctr-remote compression `level` measured for reference (1-9; 0: skip it)")
	fs.IntVar(&f.extraN, "extra-n", 1, "timed runs at the extra level (at most -n)")
}

func (f *convertFlags) check() error {
	if f.extraLevel < 0 || f.extraLevel > 9 {
		return cmdline.Usagef("-extra-level %d: want 1 to 9, or 0", f.extraLevel)
	}
	if f.extraN < 1 {
		return cmdline.Usagef("-extra-n %d: want a positive integer", f.extraN)
	}
	return nil
}

func (f *convertFlags) run(ctx context.Context, cfg bench.BarConfig) error {
	return bench.Convert(ctx, bench.ConvertConfig{BarConfig: cfg, ExtraLevel: f.extraLevel, ExtraN: f.extraN})
}

var snapshotterCommand = barCommand("snapshotter",
	"the snapshotter: RSS with 10 images mounted, cold lazypull pull + ctr run vs ctr image pull + ctr run",
	`
The snapshotter's two bars, in one run (root; about 4 minutes on a 2-CPU machine), on the
python test image (scripts/build-test-image.sh) pushed to a registry on a random loopback
port, converted, and 9 variants of it with one small layer more each (tools/addlayer):
  memory  one lazypull snapshotter and its containerd; lazypull pull and ctr run of each of
          the 10 images; then the snapshotter's VmRSS (and VmHWM, RssAnon, RssFile, Pss, its
          keeper's), the Go runtime's figures and the top of a heap profile. Bar: VmRSS <= 64 MiB.
  cold    -n rounds, lazy and plain alternating first, on fresh roots: lazypull pull + ctr run
          --snapshotter lazypull against ctr image pull + ctr run (overlayfs), timed, with the
          registry's egress (its log) and the snapshotter's fetch.Bytes. Bar: lazypull's bytes
          <= 0.25x plain's (medians).`,
	func() barBench { return &snapshotterFlags{} })

// snapshotterFlags are the snapshotter benchmark's own flags.
type snapshotterFlags struct {
	parts string
	list  []string // parts, split
}

func (f *snapshotterFlags) declare(fs *flag.FlagSet) {
	fs.StringVar(&f.parts, "parts", strings.Join(bench.SnapshotterParts, ","), "comma-separated `parts` to run: memory, cold")
}

func (f *snapshotterFlags) check() error {
	f.list = splitList(f.parts)
	if len(f.list) == 0 {
		return cmdline.Usagef("-parts: none given (want memory, cold)")
	}
	for _, p := range f.list {
		if !slices.Contains(bench.SnapshotterParts, p) {
			return cmdline.Usagef("-parts: unknown part %q (want memory, cold)", p)
		}
	}
	return nil
}

func (f *snapshotterFlags) run(ctx context.Context, cfg bench.BarConfig) error {
	return bench.Snapshotter(ctx, bench.SnapshotterConfig{BarConfig: cfg, Parts: f.list})
}
