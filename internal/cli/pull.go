package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"strings"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	dockerconfig "github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"lazypull/internal/daemon"
	"lazypull/internal/fetch"
)

var pullCommand = &command{
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
		fs.BoolVar(&f.plainHTTP, "plain-http", false, "talk to the registry over http instead of https")
		fs.StringVar(&f.hostsDir, "hosts-dir", "", "containerd-style `dir` of HOST/hosts.toml files")
		fs.StringVar(&f.profile, "profile", "", "have the snapshotter use the prefetch profile of this `digest` (sha256:...), which must refer to the image manifest unpacked")
		fs.StringVar(&f.snapshotterAddress, "snapshotter-address", "", "the snapshotter's `socket`, to hand it the manifest early (default: containerd's address for --snapshotter, else "+defaultSnapshotterSocket+")")
		return f
	},
	run: runPull,
}

type pullFlags struct {
	address, namespace, snapshotter string
	plainHTTP                       bool
	hostsDir                        string
	snapshotterAddress              string
	profile                         string
}

func runPull(ctx context.Context, e *env, vals any, args []string) error {
	f := vals.(*pullFlags)
	if len(args) != 1 {
		return usagef("want REF")
	}
	nref, err := name.ParseReference(args[0])
	if err != nil {
		return usagef("reference %q: %v", args[0], err)
	}
	ref := nref.Name() // fully qualified, as containerd names images
	if f.profile != "" {
		if _, err := daemon.ParseProfileDigest(f.profile); err != nil {
			return usagef("-profile: %v", err)
		}
	}
	registry := nref.Context().RegistryStr()
	log := newLogger(e)
	fopts, _ := fetchOptions(log, f.plainHTTP, f.hostsDir)
	reg, err := fetch.New(ref, fopts...)
	if err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	// The manifest's round trip overlaps the connection to containerd.
	type fetched struct {
		desc   v1.Descriptor
		raw    []byte
		m      *v1.Manifest // parsed, when it is an image manifest
		err    error
		config *earlyBlob
	}
	manifest := make(chan fetched, 1)
	// With the snapshotter's address given, the warm request waits for nothing of
	// containerd's (the connection, the lease, the plugin's address): it goes as soon as
	// the manifest is in.
	var w *warmer
	if f.snapshotterAddress != "" {
		w = newWarmer(log, ref, f.snapshotterAddress, nil)
		w.profile = f.profile
		w.hint(ctx)
	}
	go func() {
		desc, raw, err := reg.FetchManifest(ctx, "")
		var config *earlyBlob
		var m *v1.Manifest
		if err == nil && desc.MediaType.IsImage() {
			m, _ = v1.ParseManifest(bytes.NewReader(raw))
		}
		if m != nil {
			if w != nil {
				w.manifest(ctx, pinnedDesc(desc), raw, m)
			}
			// containerd asks for the config only once it has stored the manifest; asked
			// now, it is on its way meanwhile, and the layers are prepared sooner. A config
			// the manifest embeds is not asked for at all.
			config = fetchEarly(ctx, reg, m.Config)
		}
		manifest <- fetched{desc, raw, m, err, config}
	}()

	client, err := containerd.New(f.address)
	if err != nil {
		return fmt.Errorf("containerd at %s: %w", f.address, err)
	}
	defer client.Close()
	ctx = namespaces.WithNamespace(ctx, f.namespace)
	ctx, done, err := client.WithLease(ctx)
	if err != nil {
		return err
	}
	defer done(context.WithoutCancel(ctx))

	if w == nil {
		w = newWarmer(log, ref, snapshotterAddress(ctx, client, f, log), client.ContentStore())
		w.profile = f.profile
	} else {
		w.content = client.ContentStore() // for an index's platform manifest, during the pull
	}
	defer w.wait()
	hostOpts := dockerconfig.HostOptions{
		Credentials: func(host string) (string, string, error) {
			reg, err := name.NewRegistry(host)
			if err != nil {
				return "", "", nil
			}
			a, err := authn.DefaultKeychain.Resolve(reg)
			if err != nil {
				return "", "", err
			}
			c, err := a.Authorization()
			if err != nil {
				return "", "", err
			}
			if c.IdentityToken != "" {
				return "", c.IdentityToken, nil
			}
			return c.Username, c.Password, nil
		},
	}
	if f.plainHTTP {
		hostOpts.DefaultScheme = "http"
	}
	if f.hostsDir != "" {
		hostOpts.HostDir = dockerconfig.HostDirFromRoot(f.hostsDir)
	}
	resolver := &pinnedResolver{next: docker.NewResolver(docker.ResolverOptions{Hosts: dockerconfig.ConfigureHosts(ctx, hostOpts)})}
	m := <-manifest
	var fe *fetch.Error
	switch {
	case m.err == nil:
		resolver.ref, resolver.raw, resolver.config = ref, m.raw, m.config
		resolver.desc = pinnedDesc(m.desc)
		if images.IsManifestType(resolver.desc.MediaType) {
			// No platform to pick: this is the manifest containerd unpacks.
			w.manifest(ctx, resolver.desc, m.raw, m.m)
		}
	case errors.As(m.err, &fe) && fe.StatusCode != 0:
		// The registry answered (no such image, credentials refused): containerd would be
		// told the same.
		return pullError(ref, registry, m.err)
	default:
		// Not reached where containerd's resolver may reach it (a hosts.toml setting fetch
		// does not use): containerd resolves REF itself, as before.
		log.Info("the pull's own manifest request failed; containerd resolves the image itself, and the snapshotter gets no head start",
			"ref", ref, "err", m.err)
	}

	img, err := client.Pull(ctx, ref,
		containerd.WithResolver(resolver),
		containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(f.snapshotter),
		containerd.WithImageHandlerWrapper(func(h images.Handler) images.Handler {
			return snapshotters.AppendInfoHandlerWrapper(ref)(labelLayers(ref, f.profile, w.handler(resolver.cached, dropBadData(log, ref, h))))
		}),
	)
	if err != nil {
		return pullError(ref, registry, err)
	}
	fmt.Fprintf(e.stdout, "%s %s\n", img.Name(), img.Target().Digest)
	return nil
}

// pinnedDesc is d as containerd takes it.
func pinnedDesc(d v1.Descriptor) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: string(d.MediaType), Digest: digest.Digest(d.Digest.String()), Size: d.Size}
}

// snapshotterAddress is where the pull sends its warm request: --snapshotter-address, else
// the address containerd has for the proxy plugin named --snapshotter (so that it reaches
// the snapshotter containerd will prepare the layers with), else the snapshotter's default.
func snapshotterAddress(ctx context.Context, client *containerd.Client, f *pullFlags, log *slog.Logger) string {
	if f.snapshotterAddress != "" {
		return f.snapshotterAddress
	}
	resp, err := client.IntrospectionService().Plugins(ctx, fmt.Sprintf("type==%s,id==%s", plugins.SnapshotPlugin, f.snapshotter))
	if err == nil {
		for _, p := range resp.Plugins {
			if a := p.Exports["address"]; a != "" {
				return a
			}
		}
	}
	log.Debug("containerd names no address for the snapshotter; trying its default", "snapshotter", f.snapshotter,
		"address", defaultSnapshotterSocket, "err", err)
	return defaultSnapshotterSocket
}

// labelLayers puts on each lazypull layer descriptor of an image manifest the annotations
// that containerd hands the snapshotter as labels, the profile pinned (daemon.LabelProfile)
// among them when not "". Lazypull's labels that the image's manifest put on a layer
// itself are removed first, from every layer: they are the pull's to set.
func labelLayers(ref, profile string, h images.Handler) images.Handler {
	return images.HandlerFunc(func(ctx context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		children, err := h.Handle(ctx, desc)
		if err != nil || !images.IsManifestType(desc.MediaType) {
			return children, err
		}
		for i := range children {
			c := &children[i]
			if !images.IsLayerType(c.MediaType) {
				continue
			}
			maps.DeleteFunc(c.Annotations, func(k, _ string) bool { return strings.HasPrefix(k, daemon.LabelPrefix+"lazypull.") })
			labels := daemon.SnapshotLabels(ref, desc.Digest.String(), c.Digest.String(), c.Annotations)
			if len(labels) == 0 {
				continue
			}
			if profile != "" {
				labels[daemon.LabelProfile] = profile
			}
			if c.Annotations == nil {
				c.Annotations = map[string]string{}
			}
			for k, v := range labels {
				c.Annotations[k] = v
			}
		}
		return children, nil
	})
}
