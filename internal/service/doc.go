// Package service is lazypull's composition root: it owns the daemon's configuration
// (Config, the snapshotter's config file and flags; LoadConfig) and assembles, in one place,
// what `lazypull snapshotter` (Serve) and `lazypull mount` (Mount) run: the node's store,
// the registry options (FetchOptions, the only place they are built), the filesystem, the
// keeper, the snapshotter and its gRPC server, metrics, the stats file, Go's profiles, and
// the check of containerd's config. The command line (internal/cli) parses flags into a
// Config and calls it.
package service
