package pull

import (
	"bytes"
	"context"
	"errors"
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
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"lazypull/internal/daemon"
	"lazypull/internal/fetch"
)

// Options is where and how Pull pulls.
type Options struct {
	// Address is containerd's socket, Namespace the containerd namespace the image goes in.
	Address, Namespace string
	// Snapshotter is the snapshotter's name in containerd's proxy_plugins.
	Snapshotter string
	// SnapshotterAddress is the snapshotter's socket, to hand it the manifest early: when
	// "", the address containerd has for the proxy plugin Snapshotter, else
	// DefaultSnapshotterAddress.
	SnapshotterAddress, DefaultSnapshotterAddress string
	// Profile, when not "", is the digest of the prefetch profile the snapshotter is to
	// use (daemon.LabelProfile on every lazypull layer).
	Profile string
	// Client is the registry client the fetch.Registry given to Pull comes from:
	// containerd's resolver reaches the registry as it does (its hosts.toml directory, its
	// plain-HTTP rule, its credentials).
	Client *fetch.Client
	// Log gets what the pull has to say beside its error; nil: nothing.
	Log *slog.Logger
}

// fetched is the manifest the pull fetches itself, with the config it fetches early.
type fetched struct {
	desc   v1.Descriptor
	raw    []byte
	m      *v1.Manifest // parsed, when it is an image manifest
	err    error
	config *earlyBlob
}

// Pull pulls ref through the containerd at opts.Address and unpacks it with the lazypull
// snapshotter: containerd downloads the manifest and the config, the snapshotter mounts
// each lazypull layer from the registry. reg, ref's registry, fetches the manifest once,
// for containerd and for the snapshotter (a warm request), and the config early. It
// returns the image containerd now has.
func Pull(ctx context.Context, reg *fetch.Registry, nref name.Reference, opts Options) (images.Image, error) {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ref := nref.Name() // fully qualified, as containerd names images
	registry := nref.Context().RegistryStr()
	// With the snapshotter's address given, the warm request waits for nothing of
	// containerd's (the connection, the lease, the plugin's address): it goes as soon as
	// the manifest is in.
	var w *warmer
	if opts.SnapshotterAddress != "" {
		w = newWarmer(log, ref, opts.SnapshotterAddress, nil)
		w.profile = opts.Profile
		w.hint(ctx)
	}
	// The manifest's round trip overlaps the connection to containerd.
	manifest := fetchManifest(ctx, reg, w)

	client, err := containerd.New(opts.Address)
	if err != nil {
		return images.Image{}, fmt.Errorf("containerd at %s: %w", opts.Address, err)
	}
	defer client.Close()
	ctx = namespaces.WithNamespace(ctx, opts.Namespace)
	ctx, done, err := client.WithLease(ctx)
	if err != nil {
		return images.Image{}, err
	}
	defer done(context.WithoutCancel(ctx))

	if w == nil {
		w = newWarmer(log, ref, snapshotterAddress(ctx, client, opts, log), client.ContentStore())
		w.profile = opts.Profile
	} else {
		w.content = client.ContentStore() // for an index's platform manifest, during the pull
	}
	defer w.wait()
	resolver := &pinnedResolver{next: docker.NewResolver(docker.ResolverOptions{
		Hosts: dockerconfig.ConfigureHosts(ctx, hostOptions(ctx, opts.Client, nref.Context().RepositoryStr())),
	})}
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
		return images.Image{}, pullError(ref, registry, m.err)
	default:
		// Not reached where containerd's resolver may reach it (a hosts.toml setting fetch
		// does not use): containerd resolves REF itself, as before.
		log.Info("the pull's own manifest request failed; containerd resolves the image itself, and the snapshotter gets no head start",
			"ref", ref, "err", m.err)
	}

	img, err := client.Pull(ctx, ref,
		containerd.WithResolver(resolver),
		containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(opts.Snapshotter),
		containerd.WithImageHandlerWrapper(func(h images.Handler) images.Handler {
			return snapshotters.AppendInfoHandlerWrapper(ref)(labelLayers(ref, opts.Profile, w.handler(resolver.cached, dropBadData(log, ref, h))))
		}),
	)
	if err != nil {
		return images.Image{}, pullError(ref, registry, err)
	}
	return img.Metadata(), nil
}

// fetchManifest fetches the manifest of reg's reference in the background, and the config
// of an image manifest early (fetchEarly); an image manifest goes to w (when not nil) as
// soon as it is in.
func fetchManifest(ctx context.Context, reg *fetch.Registry, w *warmer) <-chan fetched {
	manifest := make(chan fetched, 1)
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
	return manifest
}

// hostOptions is how containerd's resolver reaches registries, as client does: its
// credentials (for repo), its plain-HTTP rule (loopback falls back to http by containerd's
// own), hosts.toml files under its hosts directory.
func hostOptions(ctx context.Context, client *fetch.Client, repo string) dockerconfig.HostOptions {
	hostOpts := dockerconfig.HostOptions{
		Credentials: func(host string) (string, string, error) {
			user, secret, _, err := client.Credentials(ctx, host, repo)
			return user, secret, err
		},
	}
	if client.AllPlainHTTP() {
		hostOpts.DefaultScheme = "http"
	}
	if dir := client.HostsDir(); dir != "" {
		hostOpts.HostDir = dockerconfig.HostDirFromRoot(dir)
	}
	return hostOpts
}

// pinnedDesc is d as containerd takes it.
func pinnedDesc(d v1.Descriptor) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: string(d.MediaType), Digest: digest.Digest(d.Digest.String()), Size: d.Size}
}

// snapshotterAddress is where the pull sends its warm request: opts.SnapshotterAddress,
// else the address containerd has for the proxy plugin named opts.Snapshotter (so that it
// reaches the snapshotter containerd will prepare the layers with), else the snapshotter's
// default.
func snapshotterAddress(ctx context.Context, client *containerd.Client, opts Options, log *slog.Logger) string {
	if opts.SnapshotterAddress != "" {
		return opts.SnapshotterAddress
	}
	resp, err := client.IntrospectionService().Plugins(ctx, fmt.Sprintf("type==%s,id==%s", plugins.SnapshotPlugin, opts.Snapshotter))
	if err == nil {
		for _, p := range resp.Plugins {
			if a := p.Exports["address"]; a != "" {
				return a
			}
		}
	}
	log.Debug("containerd names no address for the snapshotter; trying its default", "snapshotter", opts.Snapshotter,
		"address", opts.DefaultSnapshotterAddress, "err", err)
	return opts.DefaultSnapshotterAddress
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
