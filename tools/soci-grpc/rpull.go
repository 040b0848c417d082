package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/awslabs/soci-snapshotter/fs/source"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/platforms"
)

type rpullFlags struct {
	address, namespace, snapshotter, indexDigest, logLevel string
	plainHTTP                                              bool
	ref                                                    string
}

func parseRpullFlags(args []string) (rpullFlags, error) {
	var f rpullFlags
	fs := flag.NewFlagSet("soci-grpc rpull", flag.ContinueOnError)
	fs.StringVar(&f.address, "address", "/run/containerd/containerd.sock", "containerd's socket `path`")
	fs.StringVar(&f.namespace, "namespace", "default", "containerd `namespace`")
	fs.StringVar(&f.snapshotter, "snapshotter", "soci", "`name` of the SOCI snapshotter's proxy plugin")
	fs.StringVar(&f.indexDigest, "soci-index-digest", "", "the SOCI index `digest`; none: the snapshotter finds it (the image manifest's annotation)")
	fs.BoolVar(&f.plainHTTP, "plain-http", false, "talk to the registry over plain HTTP")
	fs.StringVar(&f.logLevel, "log-level", "warn", "log `level`: trace, debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	if fs.NArg() != 1 {
		return f, errors.New("want one image reference")
	}
	f.ref = fs.Arg(0)
	return f, nil
}

// rpull pulls an image for the SOCI snapshotter, as upstream's `soci image rpull` does: a
// containerd pull and unpack into the snapshotter, each layer's descriptor annotated with what
// the snapshotter needs to mount it from the registry (the image reference, the manifest and
// layer digests, the layer sizes, the SOCI index digest if given). containerd passes the
// annotations on as snapshot labels; the snapshotter answers the Prepare of a layer it mounts
// with "already exists", and containerd fetches nothing of it.
func rpull(args []string) error {
	f, err := parseRpullFlags(args)
	if err != nil {
		return err
	}
	if err := setupLogging(f.logLevel); err != nil {
		return err
	}
	client, err := containerd.New(f.address)
	if err != nil {
		return fmt.Errorf("containerd at %s: %w", f.address, err)
	}
	defer client.Close()
	ctx := namespaces.WithNamespace(context.Background(), f.namespace)
	ctx, done, err := client.WithLease(ctx)
	if err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	defer done(context.WithoutCancel(ctx))
	hostOpts := []docker.RegistryOpt{}
	if f.plainHTTP {
		hostOpts = append(hostOpts, docker.WithPlainHTTP(docker.MatchAllHosts))
	}
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: docker.ConfigureDefaultRegistries(hostOpts...)})
	start := time.Now()
	img, err := client.Pull(ctx, f.ref,
		containerd.WithResolver(resolver),
		containerd.WithPlatform(platforms.DefaultString()),
		containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(f.snapshotter),
		containerd.WithImageHandlerWrapper(source.AppendDefaultLabelsHandlerWrapper(
			f.indexDigest, snapshotters.AppendInfoHandlerWrapper(f.ref))))
	if err != nil {
		return fmt.Errorf("pull %s with snapshotter %s: %w", f.ref, f.snapshotter, err)
	}
	slog.Info("pulled", "ref", f.ref, "digest", img.Target().Digest, "snapshotter", f.snapshotter, "took", time.Since(start))
	return nil
}
