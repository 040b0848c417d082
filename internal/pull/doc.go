// Package pull is `lazypull pull`: an image pulled into containerd and unpacked with the
// lazypull snapshotter, its lazypull layers left in the registry.
//
// The pull fetches the manifest itself, once (fetch), and hands it both to containerd,
// through a resolver that serves it from memory (pinnedResolver), and to the snapshotter,
// through the warm-up API (warmer, internal/warm), so that the snapshotter opens the
// layers while containerd still fetches the config; the config is fetched early too, or
// taken from the manifest when it embeds it. Each lazypull layer descriptor gets the
// labels the snapshotter reads (labelLayers, daemon.SnapshotLabels).
package pull
