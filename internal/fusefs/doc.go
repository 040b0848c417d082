// Package fusefs serves lazypull layers as a read-only FUSE file system (go-fuse v2, raw
// protocol). It never fetches or stores anything itself: the bytes of regular files come from
// a Content, which the fetch and store packages implement; the tree comes from the layer's
// format.Index, so the whole tree is known, stat'able and listable before any content is.
//
// # Two views
//
// NewLayer shows one layer as an overlayfs lower directory, which is how a snapshotter uses
// it (one mount per layer, overlayfs on top):
//
//   - the tree is the tar's tree: every entry with its type, mode (with setuid, setgid and
//     sticky bits), owner, mtime to the nanosecond, size, link target, device numbers and
//     extended attributes (security.capability, ACLs, anything in SCHILY.xattr records);
//   - a whiteout .wh.NAME is shown the way overlayfs understands it: a character device 0:0
//     named NAME (mode 0, the whiteout's owner and mtime);
//   - an opaque marker DIR/.wh..wh..opq is not shown; DIR gets the extended attribute
//     trusted.overlay.opaque = "y" instead;
//   - other .wh..wh.* names (aufs bookkeeping) are not shown;
//   - when a layer holds both .wh.NAME and NAME, NAME wins (a whiteout only hides lower
//     layers); if NAME is a directory it is made opaque, which is what the pair means;
//   - a directory the tar never lists but whose descendants it does (an implicit parent) is
//     synthesized: mode 0755, owner 0:0, mtime 0;
//   - a name listed more than once takes its last entry, as on unpack (a directory listed
//     twice keeps its children and takes the later attributes);
//   - names are taken literally: a symlink is never followed to place an entry, and an entry
//     below a non-directory replaces that non-directory by a synthesized directory;
//   - hard links are one inode (same inode number, nlink = number of names); a hard link
//     whose target is not in the layer (a link to a lower layer's file) cannot be expressed
//     in a lower directory and is left out of the layer view, with a warning.
//
// NewMerged shows the root file system of an image: its layers, lowest first, applied as the
// OCI image spec says. A whiteout hides the name in lower layers, an opaque directory hides
// all lower children, a later entry replaces a lower one, a non-directory replaces a
// directory and the other way round, and two directories merge (the upper one's attributes
// win; a synthesized upper directory keeps the lower one's, as unpacking into the lower
// tree would). Whiteouts and opaque markers are consumed, never shown. A hard link to a file
// of a lower layer joins that file's inode. The result is what overlayfs shows when mounted
// over the layer views, except that overlayfs takes a synthesized upper directory's
// attributes and reports nlink 1 for merged directories.
//
// # Inodes and caching
//
// The tree is built once, before the mount, and nothing in it ever changes, so
// entries, attributes and negative lookups are cached by the kernel for MountOptions.Timeout
// (an hour by default), directories are listed with FOPEN_CACHE_DIR and files opened with
// FOPEN_KEEP_CACHE. Inode numbers derive from entry indexes: entry i of a layer is inode
// i+2 (the root is 1; synthesized directories follow the entries); in a merged view entry i
// of layer L is inode L<<32 | (i+2), so inode numbers above layer 0 need 64-bit stat. The
// same image gives the same numbers on every mount, and the inode number is also the FUSE
// node ID the kernel names the inode by: what the kernel holds of a mount (node IDs, open
// file handles) means the same to any process serving the same view.
//
// # Surviving the serving process
//
// Mount makes the mount itself (mount(2) on a /dev/fuse descriptor it opened), so
// Server.Conn can hand a duplicate of the connection to another process (the snapshotter's
// keeper). While any process holds it, the kernel keeps the mount when the server dies:
// requests wait instead of failing with ENOTCONN. Restore serves the same view on the held
// connection from a new process: go-fuse is given the kernel's original INIT request
// replayed on a socket, then the connection takes the socket's descriptor number, and
// FUSE_NOTIFY_RESEND (Linux 6.9+) makes the kernel ask again the requests the dead process
// had read and not answered. Handles of the dead process are served without state, and a
// restored view opens files for cached reads only (it cannot know the I/O modes of the
// opens the dead process answered, see Open). Server.Freeze makes a process about to exit
// leave new reads unanswered, for the next one to answer.
//
// Directories have nlink 2 + their subdirectories, other inodes the number of their names.
// Symlinks have mode 0777, as on Linux. Sizes are the entries' (a symlink's is the length of
// its target); blocks are the size
// rounded up to 4 KiB pages, in 512-byte units. Access and change times equal mtime.
//
// # Reads
//
// Reads go to Content.ReadAt by range, as the kernel asks for them; opening a file reads
// nothing. Requests are at most 1 MiB, and the mount's read-ahead is 1 MiB (the kernel's
// default of 128 KiB halves sequential throughput through FUSE), so a sequential reader
// asks the Content for 1 MiB ranges. When the Content also implements LocalFiler and
// has the file's complete verified copy on local disk, the open hands the kernel that file
// (FUSE passthrough, Linux 6.9+, root): reads and mmap then never reach this process. When
// the kernel refuses passthrough, the same local file serves the reads through FUSE (one
// log line says so). The kernel refuses to mix passthrough and cached opens of one inode,
// so new opens take the mode of the opens already there: a file that became local while
// open is read from its copy through FUSE until every open of it is closed. Passthrough
// uses stacking depth 1, so the local copies must be on a
// non-stacked file system (not overlayfs), and the mount can still be an overlayfs lower.
//
// A Content error is EIO for that read only, logged as one error line with the path and
// the error as it came (more failures of the same file within a second, such as the kernel
// asking again for the page its read-ahead failed to get, log at debug level); a read the
// kernel interrupts (the caller got a signal) is EINTR, and is not logged. Any
// attempt to write is EROFS: the mount is read-only and every modifying operation refuses.
//
// # Mounting
//
// Mount checks the mount point (an existing, empty directory), clears a stale FUSE mount a
// crashed process left on it (stat gives ENOTCONN: it is lazily unmounted first), and
// mounts read-only with allow_other, default_permissions and POSIX ACLs (the kernel enforces
// modes and system.posix_acl_* from the tar), fsname and subtype "lazypull", and nosuid and
// nodev: every local user can reach the files of a mount, and an image's setuid-root
// program, file capability or device node must not grant anything on the host. Overlayfs
// over the views (the snapshotter's containers, the profile recorder's root) is not
// affected: an overlayfs mount has suid and dev of its own, whatever its lower directories'
// mounts have (Linux 6.18, checked). MountOptions.AllowSuidDev leaves them out, for a root
// file system that root chroots into; Restore gives a mount made without them (by an
// earlier version) nosuid and nodev. Without /dev/fuse Mount fails with ErrNoFUSE. Unmount detaches
// a mount, live or stale, for "lazypull umount DIR"; Server.Unmount ends a mount of this
// process.
package fusefs
