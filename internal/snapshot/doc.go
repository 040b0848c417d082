// Package snapshot is lazypull's containerd snapshotter: containerd's overlayfs snapshotter
// (same layout, same metadata store, same mounts) plus remote snapshots, layers that a
// FileSystem mounts lazily instead of containerd downloading and unpacking them.
//
// # Remote snapshots
//
// containerd's unpacker prepares each layer with the label containerd.io/snapshot.ref (the
// chain ID the committed snapshot will have) and the labels the pull put on the layer
// descriptor (annotations with prefix containerd.io/snapshot/). When Prepare gets such a
// label and the FileSystem mounts the layer at the new snapshot's directory, the snapshot is
// committed under the ref name at once and Prepare answers ErrAlreadyExists: containerd
// then skips the layer's download (stargz-snapshotter's handshake). When the FileSystem
// refuses the layer (not a lazypull layer, registry unreachable), Prepare goes on as
// containerd's overlayfs snapshotter does, and the layer is downloaded and applied.
//
// A committed remote snapshot carries the label RemoteLabel. Its directory
// root/snapshots/ID/fs is the FileSystem's mount, an overlayfs lower directory like any
// committed snapshot's, so containers and views on top of it get overlayfs mounts as usual.
// The FileSystem is asked to Check a remote parent before its mounts are handed out (and to
// Mount it again if the check fails); New mounts every remote snapshot again after a
// restart; Remove and Cleanup unmount before they delete.
//
// The package knows nothing of how a layer is mounted: it declares FileSystem, and
// internal/daemon implements it.
package snapshot
