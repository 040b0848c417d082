package cli

import (
	"context"
	"flag"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"

	"lazypull/internal/cmdline"
	"lazypull/internal/daemon"
	"lazypull/internal/pull"
)

// pullCommand is `lazypull pull`: flags over pull.Pull.
func pullCommand() *command {
	return &command{
		name:    "pull",
		args:    "[flags] REF",
		summary: "pull an image into containerd for the lazypull snapshotter, layers left in the registry",
		help: `
Pulls REF through containerd (--address) and unpacks it with the lazypull snapshotter:
containerd downloads the manifest and the config (the config not when the manifest embeds
it, as lazypull convert's manifests do), and the snapshotter mounts each lazypull layer from
the registry instead of containerd downloading it. Layers that are not lazypull layers are
downloaded and unpacked as usual. Then:

  ctr run --snapshotter lazypull REF ID

The layer descriptors get the labels the snapshotter reads (containerd.io/snapshot/lazypull.*
and, as CRI puts them, containerd.io/snapshot/cri.*). Credentials come from the Docker
config and its credential helpers; --hosts-dir reads containerd's hosts.toml layout.

The pull fetches REF's manifest itself, once, and hands it to containerd and to the
snapshotter (--snapshotter-address; by default the address containerd has for the proxy
plugin --snapshotter, else the snapshotter's default): the snapshotter starts reading the
layer indexes and prefetching while containerd still fetches the config. When nothing
answers there, the pull goes on without that head start.

--profile sha256:... pins the image's prefetch profile: the snapshotter uses that profile
(fetched by digest from the image's repository, and refused unless it refers to the image
manifest unpacked) instead of looking one up, also under its profile_policy "pinned".`,
		flags: func(fs *flag.FlagSet) any {
			f := &pullFlags{}
			fs.StringVar(&f.address, "address", "/run/containerd/containerd.sock", "containerd's `socket`")
			fs.StringVar(&f.namespace, "namespace", "default", "containerd `namespace`")
			fs.StringVar(&f.snapshotter, "snapshotter", "lazypull", "the snapshotter's `name` in containerd's proxy_plugins")
			f.reach.add(fs)
			fs.StringVar(&f.profile, "profile", "", "have the snapshotter use the prefetch profile of this `digest` (sha256:...), which must refer to the image manifest unpacked")
			fs.StringVar(&f.snapshotterAddress, "snapshotter-address", "", "the snapshotter's `socket`, to hand it the manifest early (default: containerd's address for --snapshotter, else "+defaultSnapshotterSocket+")")
			return f
		},
		run: typed(runPull),
	}
}

type pullFlags struct {
	address, namespace, snapshotter string
	snapshotterAddress              string
	profile                         string
	reach                           reachFlags
}

func runPull(ctx context.Context, e *env, f *pullFlags, args []string) error {
	if len(args) != 1 {
		return cmdline.Usagef("want REF")
	}
	nref, err := name.ParseReference(args[0])
	if err != nil {
		return cmdline.Usagef("reference %q: %v", args[0], err)
	}
	if f.profile != "" {
		if _, err := daemon.ParseProfileDigest(f.profile); err != nil {
			return cmdline.Usagef("-profile: %v", err)
		}
	}
	log := newLogger(e)
	client, err := f.reach.client(log)
	if err != nil {
		return err
	}
	defer client.Close()
	reg, err := client.Open(nref.Name())
	if err != nil {
		return fmt.Errorf("pull %s: %w", nref.Name(), err)
	}
	img, err := pull.Pull(ctx, reg, nref, pull.Options{
		Address: f.address, Namespace: f.namespace, Snapshotter: f.snapshotter,
		SnapshotterAddress: f.snapshotterAddress, DefaultSnapshotterAddress: defaultSnapshotterSocket,
		Profile: f.profile, Client: client, Log: log,
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s %s\n", img.Name, img.Target.Digest)
	return nil
}
