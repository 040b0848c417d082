package fusefs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"lazypull/format"
)

// Root is a view of one layer or of an image, ready to Mount (once). It serves FUSE's raw
// protocol: every inode is built before the mount and never changes, and the kernel's node
// ID of an inode is its inode number. So nothing the kernel holds (node IDs, open file
// handles) depends on the process that answered it, and another process can take over the
// mount (Restore) after this one died.
type Root struct {
	fuse.RawFileSystem // ENOSYS for what a read-only view does not do
	v                  *view
}

// view is what the inodes of one mounted view share.
type view struct {
	layers []Layer
	log    *slog.Logger
	// merged: inode numbers carry the layer; layer views show whiteouts and opaque markers.
	merged bool

	inodes map[uint64]*inode // by inode number (= FUSE node ID)
	// statfs totals
	files, bytes uint64

	timeout time.Duration // entry and attribute cache time, set by Mount
	srv     atomic.Pointer[fuse.Server]
	// restored: the view took over a mount from an earlier process (Restore), which may
	// have left files open in either I/O mode; see Open.
	restored bool
	// frozen: reads are left unanswered (Server.Freeze).
	frozen atomic.Bool

	handles handleTable

	passthroughOff atomic.Bool // logged that the kernel refused passthrough

	record Recorder // WithRecorder; nil when not recording
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
	cfg := config{log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(&cfg)
	}
	return &view{layers: layers, log: cfg.log, record: cfg.record, merged: merged, inodes: map[uint64]*inode{}, timeout: DefaultTimeout,
		handles: handleTable{open: map[uint64]*handle{}, epoch: uint64(time.Now().UnixNano()) & 0xffffff}}
}

// newRoot turns the tree into inodes, once.
func newRoot(v *view, tree *node) *Root {
	r := &Root{RawFileSystem: fuse.NewDefaultRawFileSystem(), v: v}
	root := &inode{v: v, n: tree, ino: rootIno, parentIno: rootIno}
	v.inodes[rootIno] = root
	v.addChildren(root)
	for _, in := range v.inodes {
		v.files++
		if in.n.kind == kindReg {
			v.bytes += uint64(in.n.e.Size)
		}
	}
	return r
}

func (v *view) addChildren(dir *inode) {
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
		ino := v.ino(c)
		in := v.inodes[ino]
		if in == nil {
			in = &inode{v: v, n: c, ino: ino}
			v.inodes[ino] = in
			if c.kind == kindDir {
				in.parentIno = dir.ino
				in.name = name
				in.parent = dir
				v.addChildren(in)
			} else {
				in.name, in.parent = name, dir
			}
		}
		if c.kind == kindDir {
			dir.nlink++
		} else {
			in.nlink++
		}
		dir.kids = append(dir.kids, fuse.DirEntry{Name: name, Mode: c.kind.fileType(), Ino: ino})
	}
}

// ino returns the inode number of n in this view.
func (v *view) ino(n *node) uint64 {
	if v.merged {
		return uint64(n.layer)<<32 | n.ino
	}
	return n.ino
}

// inode is a file, directory, symlink, device, fifo or whiteout of a view.
type inode struct {
	v         *view
	n         *node
	ino       uint64
	nlink     uint32
	parentIno uint64          // directories
	kids      []fuse.DirEntry // directories: ".", ".." and the children, sorted by name
	// one of the names of the inode and its directory, for logs
	name    string
	parent  *inode
	lastErr atomic.Int64 // files: when a read error was last logged, unix nanoseconds

	// files: opens by I/O mode, so that new opens take the mode of those open (see Open)
	mu                   sync.Mutex
	ptOpens, cachedOpens int
	backingID            int32 // registered passthrough backing file while ptOpens > 0
}

// whiteout reports whether the inode is shown as an overlayfs whiteout.
func (in *inode) whiteout() bool { return in.n.kind == kindWhiteout }

// path returns a path of the inode in the mount, for logs.
func (in *inode) path() string {
	if in.parent == nil {
		return "/"
	}
	var elems []string
	for p := in; p.parent != nil; p = p.parent {
		elems = append(elems, p.name)
	}
	slices.Reverse(elems)
	s := ""
	for _, e := range elems {
		s += "/" + e
	}
	return s
}

// child returns the inode named name in directory in.
func (in *inode) child(name string) *inode {
	kids := in.kids[min(2, len(in.kids)):]
	i := sort.Search(len(kids), func(i int) bool { return kids[i].Name >= name })
	if i == len(kids) || kids[i].Name != name {
		return nil
	}
	return in.v.inodes[kids[i].Ino]
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

func (in *inode) entry(out *fuse.EntryOut) {
	out.NodeId = in.ino
	out.Generation = 1
	in.fill(&out.Attr)
	out.SetEntryTimeout(in.v.timeout)
	out.SetAttrTimeout(in.v.timeout)
}

// node returns the inode the kernel calls id. The kernel only names inodes it learned from
// this view (or from the same view served by an earlier process), so an unknown ID is the
// kernel's bug or a view of another image; it answers ESTALE.
func (r *Root) node(id uint64) (*inode, fuse.Status) {
	in := r.v.inodes[id]
	if in == nil {
		r.v.log.Warn("fusefs: request for an unknown node", "node", id)
		return nil, fuse.Status(syscall.ESTALE)
	}
	return in, fuse.OK
}

func (r *Root) String() string { return "lazypull" }

// Init keeps the server, for registering passthrough backing files.
func (r *Root) Init(s *fuse.Server) { r.v.srv.Store(s) }

func (r *Root) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	dir, st := r.node(h.NodeId)
	if !st.Ok() {
		return st
	}
	if dir.n.kind != kindDir {
		return fuse.ENOTDIR
	}
	var c *inode
	switch name {
	case ".":
		c = dir
	case "..":
		c = r.v.inodes[dir.parentIno]
	default:
		c = dir.child(name)
	}
	if c == nil {
		// A negative entry, cached like the others: the tree never changes.
		out.NodeId = 0
		out.SetEntryTimeout(r.v.timeout)
		return fuse.OK
	}
	c.entry(out)
	return fuse.OK
}

// Forget: inodes live as long as the view, whatever the kernel still caches.
func (r *Root) Forget(nodeid, nlookup uint64) {}

func (r *Root) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	n, st := r.node(in.NodeId)
	if !st.Ok() {
		return st
	}
	n.fill(&out.Attr)
	out.SetTimeout(r.v.timeout)
	return fuse.OK
}

func (r *Root) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	n, st := r.node(h.NodeId)
	if !st.Ok() {
		return nil, st
	}
	if n.n.kind != kindSymlink {
		return nil, fuse.EINVAL
	}
	if c, ok := n.v.layers[n.n.layer].Content.(Checker); ok {
		// Not canceled by an interrupt: a readlink is a step of a path walk (exec, open)
		// that does not restart on EINTR, and a Go program's threads get signals all the
		// time. The check is bounded by its fetch's retries.
		if err := c.Check(context.Background(), n.n.e); err != nil {
			n.logReadError(err, 0, 0)
			return nil, fuse.EIO
		}
	}
	return []byte(n.n.e.Linkname), fuse.OK
}

// xattrs returns the inode's extended attributes, the opaque marker included.
func (in *inode) xattrs() (x []format.Xattr, opaque bool) {
	if in.n.e != nil && !in.whiteout() {
		x = in.n.e.Xattrs
	}
	return x, in.n.opaque && !in.v.merged
}

func (r *Root) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	n, st := r.node(h.NodeId)
	if !st.Ok() {
		return 0, st
	}
	x, opaque := n.xattrs()
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
		return 0, fuse.ENOATTR
	}
	return copyOut(dest, []byte(val))
}

func (r *Root) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	n, st := r.node(h.NodeId)
	if !st.Ok() {
		return 0, st
	}
	x, opaque := n.xattrs()
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
	return copyOut(dest, list)
}

// copyOut answers a getxattr or listxattr: the size alone for an empty dest, ERANGE when
// dest is too small.
func copyOut(dest, val []byte) (uint32, fuse.Status) {
	if len(dest) == 0 {
		return uint32(len(val)), fuse.OK
	}
	if len(dest) < len(val) {
		return uint32(len(val)), fuse.ERANGE
	}
	return uint32(copy(dest, val)), fuse.OK
}

func (r *Root) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	n, st := r.node(in.NodeId)
	if !st.Ok() {
		return st
	}
	if n.n.kind != kindDir {
		return fuse.ENOTDIR
	}
	// Directory handles hold nothing: a listing is the inode's kids from the offset on.
	out.OpenFlags = fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE
	return fuse.OK
}

func (r *Root) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return r.readDir(in, out, false)
}

func (r *Root) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return r.readDir(in, out, true)
}

// readDir lists a directory from in.Offset, the number of entries already listed.
func (r *Root) readDir(in *fuse.ReadIn, out *fuse.DirEntryList, plus bool) fuse.Status {
	n, st := r.node(in.NodeId)
	if !st.Ok() {
		return st
	}
	if n.n.kind != kindDir {
		return fuse.ENOTDIR
	}
	for i := in.Offset; i < uint64(len(n.kids)); i++ {
		e := n.kids[i]
		e.Off = i + 1
		if !plus {
			if !out.AddDirEntry(e) {
				break
			}
			continue
		}
		eo := out.AddDirLookupEntry(e)
		if eo == nil {
			break
		}
		// The kernel skips "." and ".."; the others become entries it caches.
		if i >= 2 {
			r.v.inodes[e.Ino].entry(eo)
		}
	}
	return fuse.OK
}

func (r *Root) ReleaseDir(in *fuse.ReleaseIn) {}

func (r *Root) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	out.Bsize = 4096
	out.Frsize = 4096
	out.Blocks = (r.v.bytes + 4095) / 4096
	out.Files = r.v.files
	out.NameLen = 255
	return fuse.OK
}

// Access is checked by the kernel (default_permissions); this answers for a mount without.
func (r *Root) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	if in.Mask&unix.W_OK != 0 {
		return fuse.EROFS
	}
	return fuse.OK
}

// Everything that would modify the tree refuses: the view is read-only. (The mount is
// read-only too, so the kernel refuses most of these before asking.)

func (r *Root) SetAttr(<-chan struct{}, *fuse.SetAttrIn, *fuse.AttrOut) fuse.Status {
	return fuse.EROFS
}
func (r *Root) Mknod(<-chan struct{}, *fuse.MknodIn, string, *fuse.EntryOut) fuse.Status {
	return fuse.EROFS
}
func (r *Root) Mkdir(<-chan struct{}, *fuse.MkdirIn, string, *fuse.EntryOut) fuse.Status {
	return fuse.EROFS
}
func (r *Root) Unlink(<-chan struct{}, *fuse.InHeader, string) fuse.Status { return fuse.EROFS }
func (r *Root) Rmdir(<-chan struct{}, *fuse.InHeader, string) fuse.Status  { return fuse.EROFS }
func (r *Root) Rename(<-chan struct{}, *fuse.RenameIn, string, string) fuse.Status {
	return fuse.EROFS
}
func (r *Root) Link(<-chan struct{}, *fuse.LinkIn, string, *fuse.EntryOut) fuse.Status {
	return fuse.EROFS
}
func (r *Root) Symlink(<-chan struct{}, *fuse.InHeader, string, string, *fuse.EntryOut) fuse.Status {
	return fuse.EROFS
}
func (r *Root) SetXAttr(<-chan struct{}, *fuse.SetXAttrIn, string, []byte) fuse.Status {
	return fuse.EROFS
}
func (r *Root) RemoveXAttr(<-chan struct{}, *fuse.InHeader, string) fuse.Status {
	return fuse.EROFS
}
func (r *Root) Create(<-chan struct{}, *fuse.CreateIn, string, *fuse.CreateOut) fuse.Status {
	return fuse.EROFS
}
func (r *Root) Write(<-chan struct{}, *fuse.WriteIn, []byte) (uint32, fuse.Status) {
	return 0, fuse.EROFS
}
func (r *Root) CopyFileRange(<-chan struct{}, *fuse.CopyFileRangeIn) (uint32, fuse.Status) {
	return 0, fuse.EROFS
}
func (r *Root) Fallocate(<-chan struct{}, *fuse.FallocateIn) fuse.Status { return fuse.EROFS }

// Flush and Fsync answer ENOSYS (the defaults), which makes the kernel stop asking (and
// succeed): there is nothing to flush in a read-only view, and a round trip on every
// close(2) costs.
