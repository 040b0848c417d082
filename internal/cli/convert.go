package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/internal/convert"
)

var convertCommand = &command{
	name:    "convert",
	args:    "[flags] SRC DST",
	summary: "convert an image to lazypull layers and push it",
	help: `
SRC and DST are registry references (host[:port]/repo[:tag]) or OCI image layouts,
written oci:DIR[:TAG] (TAG defaults to latest; DIR is created if missing).

Every layer (gzip, zstd or uncompressed tar) is rewritten as a lazypull tar+zstd layer with
the same uncompressed content; the image config is kept byte for byte. A multi-platform
source gives a multi-platform result unless --platform picks one image. Blobs are written
first, the tag last: a failed conversion tags nothing.

Credentials come from the Docker config and its credential helpers. Registries on loopback
and private addresses are spoken to over plain http; --plain-http does so for any host.
Flags may also follow SRC and DST. Temp files go to $TMPDIR.`,
	flags: func(fs *flag.FlagSet) any {
		f := &convertFlags{}
		fs.StringVar(&f.platform, "platform", "", "convert only the image for `os/arch[/variant]` of a multi-platform source")
		fs.IntVar(&f.jobs, "jobs", convert.DefaultJobs(), "convert `n` layers at once")
		fs.BoolVar(&f.plainHTTP, "plain-http", false, "talk to registries over http instead of https")
		fs.BoolVar(&f.json, "json", false, "print a JSON summary on stdout")
		return f
	},
	run: runConvert,
}

type convertFlags struct {
	platform  string
	jobs      int
	plainHTTP bool
	json      bool
}

func runConvert(ctx context.Context, e *env, vals any, args []string) error {
	f := vals.(*convertFlags)
	if len(args) != 2 {
		return usagef("want SRC and DST, got %d argument(s)", len(args))
	}
	if f.jobs < 1 {
		return usagef("-jobs must be at least 1, not %d", f.jobs)
	}
	opts := convert.Options{Jobs: f.jobs, PlainHTTP: f.plainHTTP}
	if f.platform != "" {
		p, err := v1.ParsePlatform(f.platform)
		if err != nil || p.OS == "" || p.Architecture == "" {
			return usagef("-platform %q: want os/arch[/variant], like linux/arm64", f.platform)
		}
		opts.Platform = p
	}

	var display *termProgress
	if e.stderrTerminal {
		display = newTermProgress(e.stderr, e.stderrFd)
		opts.Progress = display
		opts.Logger = slog.New(slog.NewTextHandler(display, nil))
	} else {
		opts.Logger = slog.New(slog.NewTextHandler(e.stderr, nil))
		opts.Progress = logProgress{opts.Logger}
	}
	s, err := convert.Convert(ctx, args[0], args[1], opts)
	if display != nil {
		display.stop()
	}
	if err != nil {
		return err
	}

	if f.json {
		enc := json.NewEncoder(e.stdout)
		return enc.Encode(s)
	}
	_, err = fmt.Fprintf(e.stdout, "%s -> %s %s (%d layers, %d files, %d chunks, %s in, %s out, %.1fs)\n",
		s.Source, s.Destination, s.Digest, s.Layers, s.Files, s.Chunks, humanBytes(s.BytesIn), humanBytes(s.BytesOut), s.Seconds)
	return err
}

// humanBytes formats n in binary units: 512 B, 1.5 KiB, 12.3 MiB.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
