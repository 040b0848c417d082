package fusefs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"lazypull/format"
)

// Root is the root directory of a view. It is an fs.InodeEmbedder to pass to Mount (or to
// fs.Mount); a Root can be mounted once.
type Root struct {
	inode
}

// view is what the inodes of one mounted view share.
type view struct {
	layers []Layer
	log    *slog.Logger
	// merged: inode numbers carry the layer; layer views show whiteouts and opaque markers.
	merged bool

	// statfs totals, set in OnAdd.
	files, bytes uint64

	passthroughOff atomic.Bool // logged that the kernel refused passthrough
}

// NewLayer returns the view of one layer, as an overlayfs lower directory (see the package
// documentation for how whiteouts and opaque directories are shown).
func NewLayer(ix *format.Index, c Content, opts ...Option) (*Root, error) {
	if ix == nil || c == nil {
		return nil, errors.New("fusefs: NewLayer needs an index and a content")
	}
	v := newView([]Layer{{Index: ix, Content: c}}, false, opts)
	t := buildLayer(ix, 0, v.log)
	if n := len(t.crossLinks); n > 0 {
		v.log.Warn("fusefs: hard links to files outside the layer are left out of the layer view", "count", n, "first", t.crossLinks[0].e.Name)
	}
	return newRoot(v, t.root), nil
}

// NewMerged returns the merged view of an image's layers, lowest first, with whiteouts and
// opaque directories applied.
func NewMerged(layers []Layer, opts ...Option) (*Root, error) {
	if len(layers) == 0 {
		return nil, errNoLayers
	}
	for i, l := range layers {
		if l.Index == nil || l.Content == nil {
			return nil, fmt.Errorf("fusefs: NewMerged: layer %d has no index or no content", i)
		}
	}
	v := newView(layers, true, opts)
	trees := make([]*layerTree, len(layers))
	for i, l := range layers {
		trees[i] = buildLayer(l.Index, i, v.log)
		if trees[i].maxIno >= 1<<32 {
			return nil, fmt.Errorf("fusefs: NewMerged: layer %d has too many entries for its inode numbers", i)
		}
	}
	return newRoot(v, mergeLayers(trees, v.log)), nil
}

func newView(layers []Layer, merged bool, opts []Option) *view {
	cfg := config{log: slog.Default()}
	for _, o := range opts {
		o(&cfg)
	}
	return &view{layers: layers, log: cfg.log, merged: merged}
}

func newRoot(v *view, tree *node) *Root {
	return &Root{inode: inode{v: v, n: tree, ino: rootIno, parentIno: rootIno}}
}

var _ = (fs.NodeOnAdder)((*Root)(nil))

// OnAdd builds the whole tree of persistent inodes, once, when the root is mounted.
func (r *Root) OnAdd(ctx context.Context) {
	made := map[*node]*inode{}
	r.addChildren(ctx, &r.inode, made)
	for _, in := range made {
		r.v.files++
		if in.n.kind == kindReg {
			r.v.bytes += uint64(in.n.e.Size)
		}
	}
}

func (r *Root) addChildren(ctx context.Context, dir *inode, made map[*node]*inode) {
	names := make([]string, 0, len(dir.n.children))
	for name := range dir.n.children {
		names = append(names, name)
	}
	slices.Sort(names)
	dir.kids = make([]fuse.DirEntry, 0, len(names)+2)
	dir.kids = append(dir.kids,
		fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR, Ino: dir.ino},
		fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR, Ino: dir.parentIno})
	dir.nlink = 2
	for _, name := range names {
		c := dir.n.children[name]
		in := made[c]
		if in == nil {
			in = &inode{v: r.v, n: c, ino: r.ino(c)}
			made[c] = in
			dir.NewPersistentInode(ctx, in, fs.StableAttr{Mode: c.kind.fileType(), Ino: in.ino})
			if c.kind == kindDir {
				in.parentIno = dir.ino
				r.addChildren(ctx, in, made)
			}
		}
		if c.kind == kindDir {
			dir.nlink++
		} else {
			in.nlink++
		}
		dir.AddChild(name, &in.Inode, false)
		dir.kids = append(dir.kids, fuse.DirEntry{Name: name, Mode: c.kind.fileType(), Ino: in.ino})
	}
}

// ino returns the inode number of n in this view.
func (r *Root) ino(n *node) uint64 {
	if r.v.merged {
		return uint64(n.layer)<<32 | n.ino
	}
	return n.ino
}

// inode is a file, directory, symlink, device, fifo or whiteout of a view.
type inode struct {
	fs.Inode
	v         *view
	n         *node
	ino       uint64
	nlink     uint32
	parentIno uint64          // directories
	kids      []fuse.DirEntry // directories: ".", ".." and the children, sorted
	lastErr   atomic.Int64    // files: when a read error was last logged, unix nanoseconds

	// files: opens by mode, so that new opens take the mode of those open (see Open)
	mu                   sync.Mutex
	ptOpens, cachedOpens int
}

var (
	_ = (fs.NodeGetattrer)((*inode)(nil))
	_ = (fs.NodeOpener)((*inode)(nil))
	_ = (fs.NodeOpendirHandler)((*inode)(nil))
	_ = (fs.NodeReadlinker)((*inode)(nil))
	_ = (fs.NodeGetxattrer)((*inode)(nil))
	_ = (fs.NodeListxattrer)((*inode)(nil))
	_ = (fs.NodeStatfser)((*inode)(nil))
	_ = (fs.NodeFlusher)((*inode)(nil))
	_ = (fs.NodeFsyncer)((*inode)(nil))
	_ = (fs.NodeSetattrer)((*inode)(nil))
	_ = (fs.NodeSetxattrer)((*inode)(nil))
	_ = (fs.NodeRemovexattrer)((*inode)(nil))
	_ = (fs.NodeCreater)((*inode)(nil))
	_ = (fs.NodeMkdirer)((*inode)(nil))
	_ = (fs.NodeMknoder)((*inode)(nil))
	_ = (fs.NodeLinker)((*inode)(nil))
	_ = (fs.NodeSymlinker)((*inode)(nil))
	_ = (fs.NodeUnlinker)((*inode)(nil))
	_ = (fs.NodeRmdirer)((*inode)(nil))
	_ = (fs.NodeRenamer)((*inode)(nil))
	_ = (fs.NodeCopyFileRanger)((*inode)(nil))
	_ = (fs.NodeAllocater)((*inode)(nil))
)

// whiteout reports whether the inode is shown as an overlayfs whiteout.
func (in *inode) whiteout() bool { return in.n.kind == kindWhiteout }

func (in *inode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	in.fill(&out.Attr)
	return 0
}

func (in *inode) fill(a *fuse.Attr) {
	n := in.n
	a.Ino = in.ino
	a.Mode = n.kind.fileType()
	a.Nlink = in.nlink
	a.Blksize = 4096
	if e := n.e; e != nil {
		switch n.kind {
		case kindWhiteout: // mode 0, as overlayfs and containerd make them
		case kindSymlink:
			a.Mode |= 0o777 // Linux has no symlink modes
		default:
			a.Mode |= uint32(e.Mode & 0o7777)
		}
		a.Uid, a.Gid = uint32(e.UID), uint32(e.GID)
		a.Mtime, a.Mtimensec = uint64(e.ModSec), uint32(e.ModNsec)
		switch n.kind {
		case kindReg:
			a.Size = uint64(e.Size)
		case kindSymlink:
			a.Size = uint64(len(e.Linkname))
		case kindChar, kindBlock:
			a.Rdev = uint32(unix.Mkdev(uint32(e.Devmajor), uint32(e.Devminor)))
		}
	} else {
		a.Mode |= 0o755 // a synthesized directory
	}
	a.Atime, a.Atimensec = a.Mtime, a.Mtimensec
	a.Ctime, a.Ctimensec = a.Mtime, a.Mtimensec
	a.Blocks = (a.Size + 4095) / 4096 * 8
}

func (in *inode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	if in.n.kind != kindSymlink {
		return nil, syscall.EINVAL
	}
	return []byte(in.n.e.Linkname), 0
}

// xattrs returns the inode's extended attributes, the opaque marker included.
func (in *inode) xattrs() (x []format.Xattr, opaque bool) {
	if in.n.e != nil && !in.whiteout() {
		x = in.n.e.Xattrs
	}
	return x, in.n.opaque && !in.v.merged
}

func (in *inode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	x, opaque := in.xattrs()
	var val string
	found := false
	if opaque && attr == opaqueXattr {
		val, found = "y", true
	} else {
		for _, a := range x {
			if a.Name == attr {
				val, found = a.Value, true
				break
			}
		}
	}
	if !found {
		return 0, syscall.ENODATA
	}
	if len(dest) == 0 {
		return uint32(len(val)), 0
	}
	if len(dest) < len(val) {
		return uint32(len(val)), syscall.ERANGE
	}
	return uint32(copy(dest, val)), 0
}

func (in *inode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	x, opaque := in.xattrs()
	var list []byte
	for _, a := range x {
		if opaque && a.Name == opaqueXattr {
			continue
		}
		list = append(append(list, a.Name...), 0)
	}
	if opaque {
		list = append(append(list, opaqueXattr...), 0)
	}
	if len(dest) == 0 {
		return uint32(len(list)), 0
	}
	if len(dest) < len(list) {
		return uint32(len(list)), syscall.ERANGE
	}
	return uint32(copy(dest, list)), 0
}

func (in *inode) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if in.n.kind != kindDir {
		return nil, 0, syscall.ENOTDIR
	}
	return fs.NewListDirStream(in.kids), fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
}

func (in *inode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	out.Bsize = 4096
	out.Frsize = 4096
	out.Blocks = (in.v.bytes + 4095) / 4096
	out.Files = in.v.files
	out.NameLen = 255
	return 0
}

// Flush and Fsync answer ENOSYS, which makes the kernel stop asking (and succeed): there is
// nothing to flush in a read-only view, and a round trip on every close(2) costs.
func (in *inode) Flush(context.Context, fs.FileHandle) syscall.Errno { return syscall.ENOSYS }
func (in *inode) Fsync(context.Context, fs.FileHandle, uint32) syscall.Errno {
	return syscall.ENOSYS
}

// Everything that would modify the tree refuses: the view is read-only. (The mount is
// read-only too, so the kernel refuses most of these before asking.)

func (in *inode) Setattr(context.Context, fs.FileHandle, *fuse.SetAttrIn, *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}
func (in *inode) Setxattr(context.Context, string, []byte, uint32) syscall.Errno {
	return syscall.EROFS
}
func (in *inode) Removexattr(context.Context, string) syscall.Errno { return syscall.EROFS }
func (in *inode) Create(context.Context, string, uint32, uint32, *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EROFS
}
func (in *inode) Mkdir(context.Context, string, uint32, *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}
func (in *inode) Mknod(context.Context, string, uint32, uint32, *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}
func (in *inode) Link(context.Context, fs.InodeEmbedder, string, *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}
func (in *inode) Symlink(context.Context, string, string, *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}
func (in *inode) Unlink(context.Context, string) syscall.Errno { return syscall.EROFS }
func (in *inode) Rmdir(context.Context, string) syscall.Errno  { return syscall.EROFS }
func (in *inode) Rename(context.Context, string, fs.InodeEmbedder, string, uint32) syscall.Errno {
	return syscall.EROFS
}
func (in *inode) CopyFileRange(context.Context, fs.FileHandle, uint64, *fs.Inode, fs.FileHandle, uint64, uint64, uint64) (uint32, syscall.Errno) {
	return 0, syscall.EROFS
}
func (in *inode) Allocate(context.Context, fs.FileHandle, uint64, uint64, uint32) syscall.Errno {
	return syscall.EROFS
}
