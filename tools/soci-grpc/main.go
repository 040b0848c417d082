// Command soci-grpc runs AWS's SOCI snapshotter (github.com/awslabs/soci-snapshotter), which
// lazily loads unconverted gzip images through a separate index of zTOCs, as a benchmark peer
// of lazypull:
//
//	soci-grpc serve --address /run/soci.sock --root /var/lib/soci [--config FILE] [--log-level info]
//	soci-grpc create --layout DIR --tag python --push REG/REPO:python-soci [--plain-http] [--span-size N] [--min-layer-size N]
//	soci-grpc rpull --address CONTAINERD_SOCK [--plain-http] REG/REPO:python-soci
//
// serve is upstream's soci-snapshotter-grpc: the remote snapshotter over containerd's snapshots
// gRPC API on a unix socket, for containerd's proxy_plugins:
//
//	[proxy_plugins.soci]
//	  type = "snapshot"
//	  address = "/run/soci.sock"
//
// create is upstream's `soci convert --standalone` plus a push: it builds the SOCI index
// (a zTOC for every layer of at least --min-layer-size) of an image in an OCI layout, makes the
// SOCI-enabled image (SOCI index manifest v2, the only kind SOCI v0.10 and later look for by
// default: an OCI index of the image, its manifest annotated with the SOCI index digest, and the
// SOCI index) and pushes it with its zTOCs. The layers are the original image's blobs, shared.
// rpull is upstream's `soci image rpull`: a containerd pull with the snapshot labels the
// snapshotter needs to mount each layer from the registry instead of unpacking it; then
// `ctr run --snapshotter soci REF ID` runs the image lazily.
//
// It exists because upstream's commands live in a module (cmd/) that is not published; this is
// a small runner of lazypull's own over the published library (packages service, fs, config,
// soci), so that `lazypull-bench e2e` can run SOCI side by side with lazypull, as
// tools/stargz-grpc does for stargz-snapshotter. It is a separate Go module: none of the
// library's dependencies reach lazypull's go.mod.
//
// What it leaves out of upstream's daemon: the CRI and kubeconfig keychains, the metrics and
// debug listeners, systemd notification. Registry credentials come from the Docker config;
// loopback registries speak plain HTTP. Its SOCI content store is its own ("soci", under
// --root) unless the config file names another: upstream's default, containerd's, is the
// system containerd's, which a private containerd is not.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"

	ctdlog "github.com/containerd/log"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		slog.Error("soci-grpc: " + err.Error())
		os.Exit(1)
	}
}

const usage = "usage: soci-grpc serve|create|rpull [flags] (soci-grpc CMD -h for its flags)"

func run(args []string) error {
	if len(args) == 0 {
		return errors.New(usage)
	}
	var err error
	switch args[0] {
	case "serve":
		err = serve(args[1:])
	case "create":
		err = create(args[1:])
	case "rpull":
		err = rpull(args[1:])
	case "-h", "--help", "help":
		fmt.Println(usage)
		return nil
	default:
		return fmt.Errorf("unknown command %q; %s", args[0], usage)
	}
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}

// setupLogging sends our own logs and the library's (containerd/log, logrus) to one slog
// text handler on stderr at the given level.
func setupLogging(level string) error {
	var lv slog.Level
	switch strings.ToLower(level) {
	case "trace", "debug":
		lv = slog.LevelDebug
	case "info":
		lv = slog.LevelInfo
	case "warn", "warning":
		lv = slog.LevelWarn
	case "error":
		lv = slog.LevelError
	default:
		return fmt.Errorf("--log-level %q: want trace, debug, info, warn or error", level)
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lv})))
	ctdlog.UseSlog()
	if err := ctdlog.SetLevel(strings.ToLower(level)); err != nil {
		return fmt.Errorf("--log-level %q: %w", level, err)
	}
	return nil
}
