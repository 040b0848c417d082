// Command mkimage packs layer directories into an OCI image layout with gzip layers; a thin CLI
// over lazypull/internal/imagebuild.
//
//	go run ./tools/mkimage -out DIR -tag NAME [-cmd JSON] [-entrypoint JSON] [-env K=V]... [-workdir DIR] LAYERDIR...
//
// The first LAYERDIR is a full root filesystem, each later one an overlayfs upper directory
// (whiteouts and opaque directories are converted to OCI whiteout entries).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"

	"lazypull/internal/imagebuild"
)

const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		out       = flag.String("out", "", "OCI layout directory to write (created if missing)")
		tag       = flag.String("tag", "", "tag, stored as the org.opencontainers.image.ref.name annotation")
		cmdJSON   = flag.String("cmd", "", `image Cmd as a JSON array, e.g. '["python3","-c","print(1)"]'`)
		entryJSON = flag.String("entrypoint", "", "image Entrypoint as a JSON array")
		workdir   = flag.String("workdir", "", "image WorkingDir")
		gzipLevel = flag.Int("gzip-level", 0, "gzip level (0: default)")
		env       multiFlag
	)
	flag.Var(&env, "env", "image Env entry K=V (repeatable; default "+defaultPath+")")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: mkimage -out DIR -tag NAME [flags] ROOTFSDIR [UPPERDIR...]\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *out == "" || *tag == "" || flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	opts := imagebuild.Options{Tag: *tag, WorkingDir: *workdir, Env: env, GzipLevel: *gzipLevel}
	if len(opts.Env) == 0 {
		opts.Env = []string{defaultPath}
	}
	if err := parseArray(*cmdJSON, &opts.Cmd); err != nil {
		return fmt.Errorf("-cmd: %w", err)
	}
	if err := parseArray(*entryJSON, &opts.Entrypoint); err != nil {
		return fmt.Errorf("-entrypoint: %w", err)
	}
	res, err := imagebuild.Build(*out, flag.Args(), opts)
	if err != nil {
		return err
	}
	for i, l := range res.Layers {
		fmt.Fprintf(os.Stderr, "layer %d: %s %d bytes (uncompressed %d) from %s\n", i, l.Digest, l.Size, l.UncompressedSize, l.Dir)
	}
	fmt.Fprintf(os.Stderr, "manifest %s, tag %s, in %s\n", res.Manifest.Digest, *tag, *out)
	return nil
}

func parseArray(s string, dst *[]string) error {
	if s == "" {
		return nil
	}
	if err := json.Unmarshal([]byte(s), dst); err != nil {
		return fmt.Errorf("want a JSON array of strings: %w", err)
	}
	return nil
}
