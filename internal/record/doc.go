// Package record records an image's prefetch profile (`lazypull profile`): it runs the
// image once on a lazy merged view (fusefs) whose every read a profile.Recorder sees, under
// an overlay with a tmpfs upper directory, then makes the profile of what was read and
// pushes it, with its pack, beside the image.
//
// The workload runs in a runc container of containerd (the default; a containerd that
// does not answer is an error, never a fall-back), or chrooted when asked for, as root on
// this host, for trusted images only: then the recorder runs in a mount namespace of its
// own (InOwnMountNamespace, CheckPrivateMountNS), and the chroot and exec are done by a
// helper process (ExecChrooted), never by a fork of the FUSE server. Every path of the
// image that the recorder mounts on, reads or looks at is resolved inside the image
// (rootDir: openat2 RESOLVE_IN_ROOT), as the image comes from whoever pushed it.
//
// The profile document, its pack and its push are internal/profile's; recording is apart
// from it because it needs the composition (internal/daemon opens the image), and daemon
// imports profile.
package record
