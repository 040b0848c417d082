// Package criproxy serves CRI's image service (runtime.v1.ImageService) in front of
// containerd's, to learn the registry credentials kubelet pulls images with.
//
// Kubelet sends the credentials of a pod's imagePullSecrets (or of its credential
// providers) with each CRI PullImage, to the container runtime only; a snapshotter that
// mounts layers lazily reads them from the registry long after, and needs them too.
// containerd passes none to snapshotters (its labels carry the image reference and
// digests, never a secret). So kubelet's --image-service-endpoint (and crictl's
// --image-endpoint) point at a Proxy instead, which forwards every call to containerd's
// socket as it came, byte for byte, and keeps what each PullImage's AuthConfig holds in a
// Store, in memory only, for the registry and repository of the image pulled. The
// snapshotter's registry client asks the Store (Credentials, or Auth) for the image it
// reads.
//
// A credential is never written to disk, and never logged: the Proxy logs the image
// reference of a pull and whether it came with credentials. To survive a restart of the
// snapshotter, the Store's credentials are handed to a process that outlives it, in its
// memory too (a Mirror to a Keeper: the snapshotter's keeper), and taken back from it.
package criproxy
