package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/internal/cmdline"
	"lazypull/internal/convert"
	"lazypull/internal/daemon"
	"lazypull/internal/progress"
)

// convertCommand is `lazypull convert`: flags over convert.Convert.
func convertCommand() *command {
	return &command{
		name:    "convert",
		args:    "[flags] SRC DST",
		summary: "convert an image to lazypull layers and push it",
		help: `
SRC and DST are registry references (host[:port]/repo[:tag]) or OCI image layouts,
written oci:DIR[:TAG] (TAG defaults to latest; DIR is created if missing).

Every layer (gzip, zstd or uncompressed tar) is rewritten as a lazypull tar+zstd layer with
the same uncompressed content; the image config is kept byte for byte, and one of up to 16
KiB is also embedded in the manifest (the config descriptor's data field), which saves a
pull the config's request. A multi-platform source gives a multi-platform result unless
--platform picks one image. Blobs are written first, the tag last: a failed conversion tags
nothing.

--profile lays each converted layer out by a prefetch profile (lazypull profile): the files
it names come first, in the order the workload first read them, so that a mount's prefetch
fetches them in a few large requests. PROFILE is a file holding the profile document
(lazypull profile --output), the digest of a profile artifact in SRC's repository (what
lazypull profile prints), or an image reference whose newest profile is taken (a profile's
own reference by digest works too). The layers then decompress to the same entries in
another order: their diff IDs change, and the config is rewritten with the new ones.

Credentials come from the Docker config and its credential helpers. Registries on loopback
that answer TLS with plain HTTP are spoken to over plain http; --plain-http does so for
any host. --hosts-dir names each registry's server as containerd's hosts.toml does.
Flags may also follow SRC and DST. Temp files go to $TMPDIR.`,
		flags: func(fs *flag.FlagSet) any {
			f := &convertFlags{}
			fs.StringVar(&f.platform, "platform", "", "convert only the image for `os/arch[/variant]` of a multi-platform source")
			fs.IntVar(&f.jobs, "jobs", convert.DefaultJobs(), "convert `n` layers at once")
			f.reach.add(fs)
			fs.BoolVar(&f.json, "json", false, "print a JSON summary on stdout")
			fs.StringVar(&f.profile, "profile", "", "lay the layers out by the prefetch profile `PROFILE`: a file, a digest in SRC's repository, or a REF")
			return f
		},
		run: typed(runConvert),
	}
}

type convertFlags struct {
	platform string
	jobs     int
	reach    reachFlags
	json     bool
	profile  string
}

func runConvert(ctx context.Context, e *env, f *convertFlags, args []string) error {
	if len(args) != 2 {
		return cmdline.Usagef("want SRC and DST, got %d argument(s)", len(args))
	}
	if f.jobs < 1 {
		return cmdline.Usagef("-jobs must be at least 1, not %d", f.jobs)
	}
	client, err := f.reach.client(newLogger(e))
	if err != nil {
		return err
	}
	defer client.Close()
	opts := convert.Options{Jobs: f.jobs, PlainHTTP: f.reach.plainHTTP, Keychain: client.Keychain(), Transport: client.Transport()}
	if f.platform != "" {
		p, err := v1.ParsePlatform(f.platform)
		if err != nil || p.OS == "" || p.Architecture == "" {
			return cmdline.Usagef("-platform %q: want os/arch[/variant], like linux/arm64", f.platform)
		}
		opts.Platform = p
	}
	if f.profile != "" {
		p, err := daemon.LoadProfile(ctx, f.profile, args[0], client, opts.Platform)
		if errors.Is(err, daemon.ErrProfileNoRepository) {
			return cmdline.Usagef("--profile %v", err)
		}
		if err != nil {
			return fmt.Errorf("--profile %w", err)
		}
		opts.Profile = p
	}

	var display *progress.Term
	if e.stderrTerminal {
		display = progress.NewTerm(e.stderr, e.stderrFd)
		opts.Progress = display
		opts.Logger = slog.New(slog.NewTextHandler(display, nil))
	} else {
		opts.Logger = slog.New(slog.NewTextHandler(e.stderr, nil))
		opts.Progress = progress.Log{Logger: opts.Logger}
	}
	s, err := convert.Convert(ctx, args[0], args[1], opts)
	if display != nil {
		display.Stop()
	}
	if err != nil {
		return err
	}

	if f.json {
		enc := json.NewEncoder(e.stdout)
		return enc.Encode(s)
	}
	laid := ""
	if opts.Profile != nil {
		laid = fmt.Sprintf(", %d files laid out first", s.Profiled)
	}
	_, err = fmt.Fprintf(e.stdout, "%s -> %s %s (%d layers, %d files, %d chunks%s, %s in, %s out, %.1fs)\n",
		s.Source, s.Destination, s.Digest, s.Layers, s.Files, s.Chunks, laid, humanBytes(s.BytesIn), humanBytes(s.BytesOut), s.Seconds)
	return err
}

// humanBytes formats n in binary units: 512 B, 1.5 KiB, 12.3 MiB.
func humanBytes(n int64) string { return progress.HumanBytes(n) }
