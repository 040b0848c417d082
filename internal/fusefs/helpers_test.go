package fusefs

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"lazypull/format"
	"lazypull/internal/testutil"
)

// requireFUSE skips a test that needs real FUSE mounts when it cannot have them: no
// /dev/fuse, or not root. With LAZYPULL_E2E=1 that is a failure instead.
func requireFUSE(t testing.TB) {
	t.Helper()
	why := ""
	if _, err := os.Stat("/dev/fuse"); err != nil {
		why = "no /dev/fuse"
	} else if os.Geteuid() != 0 {
		why = "not root"
	}
	if why == "" {
		return
	}
	skipOrFail(t, "real FUSE mounts need root and /dev/fuse: "+why)
}

// skipOrFail skips a test that cannot run here, loudly; with LAZYPULL_E2E=1 it fails.
func skipOrFail(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("LAZYPULL_E2E") == "1" {
		t.Fatalf("LAZYPULL_E2E=1, but %s", why)
	}
	t.Skipf("SKIP: %s", why)
}

// tentry is one entry of a test tar.
type tentry = testutil.Entry

func mkTar(t testing.TB, entries []tentry) []byte { return testutil.Tar(t, entries...) }

// convertLayer converts a tar into a lazypull layer and opens it.
func convertLayer(t testing.TB, tarball []byte) *format.Layer {
	t.Helper()
	var blob bytes.Buffer
	res, err := format.Write(context.Background(), &blob, bytes.NewReader(tarball))
	if err != nil {
		t.Fatalf("format.Write: %v", err)
	}
	l, err := format.Open(bytes.NewReader(blob.Bytes()), int64(blob.Len()), res.Annotations())
	if err != nil {
		t.Fatalf("format.Open: %v", err)
	}
	return l
}

// layerContent serves content from a format.Layer, chunk by chunk, verified.
type layerContent struct {
	l     *format.Layer
	reads atomic.Int64
	// fail, when set, makes reads of the entries it returns an error for fail.
	fail func(e *format.Entry) error
}

func (c *layerContent) ReadAt(ctx context.Context, e *format.Entry, p []byte, off int64) (int, error) {
	c.reads.Add(1)
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if c.fail != nil {
		if err := c.fail(e); err != nil {
			return 0, err
		}
	}
	if off >= e.Size {
		return 0, io.EOF
	}
	if e.Sparse {
		b, err := c.l.ReadFile(e)
		if err != nil {
			return 0, err
		}
		n := copy(p, b[off:])
		if n < len(p) {
			return n, io.EOF
		}
		return n, nil
	}
	chunks := c.l.Index.Chunks(e)
	i := sort.Search(len(chunks), func(i int) bool { return chunks[i].FileOffset+chunks[i].Size > off })
	n := 0
	for ; i < len(chunks) && n < len(p); i++ {
		ch := chunks[i]
		b, err := c.l.ReadChunk(nil, ch)
		if err != nil {
			return n, fmt.Errorf("%s: %w", e.Name, err)
		}
		n += copy(p[n:], b[off+int64(n)-ch.FileOffset:])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// localContent has every file of a layer on local disk, and hands the copies out.
type localContent struct {
	layerContent
	dir   string
	files map[*format.Entry]string
}

func newLocalContent(t testing.TB, l *format.Layer, dir string) *localContent {
	t.Helper()
	c := &localContent{layerContent: layerContent{l: l}, dir: dir, files: map[*format.Entry]string{}}
	for i := range l.Index.Entries {
		e := &l.Index.Entries[i]
		if !e.IsRegular() {
			continue
		}
		b, err := l.ReadFile(e)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, fmt.Sprintf("f%d", i))
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		c.files[e] = p
	}
	return c
}

func (c *localContent) LocalFile(e *format.Entry) (*os.File, bool) {
	p, ok := c.files[e]
	if !ok {
		return nil, false
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, false
	}
	return f, true
}

// mountView mounts root at a fresh directory and unmounts it when the test ends.
func mountView(t testing.TB, root *Root) (string, *Server) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	srv, err := Mount(dir, root, MountOptions{})
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Logf("unmount %s: %v; detaching", dir, err)
			if err := Unmount(dir); err != nil {
				t.Errorf("detach %s: %v", dir, err)
			}
		}
	})
	return dir, srv
}

// mountIndex mounts the layer view of ix, its content served by c, at a fresh directory
// until the test ends.
func mountIndex(t testing.TB, ix *format.Index, c Content, opts ...Option) (root *Root, mnt string, srv *Server) {
	t.Helper()
	root, err := NewLayer(ix, c, opts...)
	if err != nil {
		t.Fatal(err)
	}
	mnt, srv = mountView(t, root)
	return root, mnt, srv
}

// mountMerged mounts the merged view of layers at a fresh directory until the test ends.
func mountMerged(t testing.TB, layers []Layer) string {
	t.Helper()
	root, err := NewMerged(layers)
	if err != nil {
		t.Fatal(err)
	}
	mnt, _ := mountView(t, root)
	return mnt
}

// mountTestLayer mounts the view of testLayers' first layer, read from the layer itself,
// and returns where; it skips the test where FUSE mounts cannot be had.
func mountTestLayer(t testing.TB) string {
	t.Helper()
	requireFUSE(t)
	l := convertLayer(t, testLayers(t)[0])
	_, mnt, _ := mountIndex(t, l.Index, &layerContent{l: l})
	return mnt
}

// fileInfo is what a test compares of one file.
type fileInfo struct {
	Type       uint32 // S_IFMT bits
	Perm       uint32 // 07777 bits
	UID, GID   uint32
	Size       int64
	Mtime      int64
	MtimeNsec  int64
	Nlink      uint64
	Rdev       uint64
	Link       string
	Xattrs     map[string]string
	ContentSum string
	dev, ino   uint64
	group      string // a key shared by the names of one inode (set by linkGroups)
}

func (f *fileInfo) String() string {
	return fmt.Sprintf("type=%o perm=%04o uid=%d gid=%d size=%d mtime=%d.%09d nlink=%d rdev=%d:%d link=%q xattrs=%q content=%.12s",
		f.Type, f.Perm, f.UID, f.GID, f.Size, f.Mtime, f.MtimeNsec, f.Nlink, unix.Major(f.Rdev), unix.Minor(f.Rdev), f.Link, f.Xattrs, f.ContentSum)
}

type tree map[string]*fileInfo

// snapshot walks dir (without following symlinks) and records every file, by path relative
// to dir ("." for dir itself).
func snapshot(t testing.TB, dir string) tree {
	t.Helper()
	out := tree{}
	var walk func(rel string)
	walk = func(rel string) {
		p := filepath.Join(dir, rel)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatalf("lstat %q: %v", p, err)
		}
		fi := &fileInfo{
			Type: st.Mode & unix.S_IFMT, Perm: st.Mode & 0o7777, UID: st.Uid, GID: st.Gid,
			Size: st.Size, Mtime: st.Mtim.Sec, MtimeNsec: st.Mtim.Nsec, Nlink: uint64(st.Nlink),
			Rdev: st.Rdev, dev: st.Dev, ino: st.Ino, Xattrs: xattrs(t, p),
		}
		out[rel] = fi
		switch fi.Type {
		case unix.S_IFLNK:
			l, err := os.Readlink(p)
			if err != nil {
				t.Fatal(err)
			}
			fi.Link = l
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatalf("read %q: %v", p, err)
			}
			if int64(len(b)) != st.Size {
				t.Errorf("%q: read %d bytes, stat says %d", p, len(b), st.Size)
			}
			fi.ContentSum = fmt.Sprintf("%x", sha256.Sum256(b))
		case unix.S_IFDIR:
			ents, err := os.ReadDir(p)
			if err != nil {
				t.Fatalf("readdir %q: %v", p, err)
			}
			for _, e := range ents {
				walk(filepath.Join(rel, e.Name()))
			}
		}
	}
	walk(".")
	return out
}

func xattrs(t testing.TB, p string) map[string]string {
	t.Helper()
	sz, err := unix.Llistxattr(p, nil)
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return nil
		}
		t.Fatalf("listxattr %q: %v", p, err)
	}
	if sz == 0 {
		return nil
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(p, buf)
	if err != nil {
		t.Fatalf("listxattr %q: %v", p, err)
	}
	if sz == 0 {
		return nil
	}
	out := map[string]string{}
	for name := range strings.SplitSeq(strings.TrimSuffix(string(buf[:sz]), "\x00"), "\x00") {
		n, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			t.Fatalf("getxattr %q %q: %v", p, name, err)
		}
		v := make([]byte, n)
		n, err = unix.Lgetxattr(p, name, v)
		if err != nil {
			t.Fatalf("getxattr %q %q: %v", p, name, err)
		}
		out[name] = string(v[:n])
	}
	return out
}

// linkGroups sets group on every non-directory: the sorted list of the names sharing its
// inode (by dev and ino), so that trees from different file systems compare.
func (tr tree) linkGroups() {
	byIno := map[[2]uint64][]string{}
	for p, f := range tr {
		if f.Type != unix.S_IFDIR {
			k := [2]uint64{f.dev, f.ino}
			byIno[k] = append(byIno[k], p)
		}
	}
	for _, names := range byIno {
		slices.Sort(names)
		g := strings.Join(names, "|")
		for _, p := range names {
			tr[p].group = g
		}
	}
}

// compareOpts tunes compareTrees.
type compareOpts struct {
	skipDirNlink bool
	// skipAttrs lists directories whose attributes (mode, owner, mtime) are not compared.
	skipAttrs map[string]bool
	// skipNlink lists files whose link count is not compared.
	skipNlink map[string]bool
}

// compareTrees reports every difference between want and got.
func compareTrees(t testing.TB, want, got tree, o compareOpts) {
	t.Helper()
	want.linkGroups()
	got.linkGroups()
	var paths []string
	for p := range want {
		paths = append(paths, p)
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			paths = append(paths, p)
		}
	}
	slices.Sort(paths)
	bad := 0
	for _, p := range paths {
		w, g := want[p], got[p]
		switch {
		case g == nil:
			t.Errorf("%q missing; want %v", p, w)
			bad++
			continue
		case w == nil:
			t.Errorf("%q unexpected: %v", p, g)
			bad++
			continue
		}
		wc, gc := *w, *g
		if o.skipDirNlink && w.Type == unix.S_IFDIR || o.skipNlink[p] {
			wc.Nlink, gc.Nlink = 0, 0
		}
		if w.Type == unix.S_IFDIR {
			wc.Size, gc.Size = 0, 0 // directory sizes are the file system's business
		}
		if o.skipAttrs[p] {
			wc.Perm, wc.UID, wc.GID, wc.Mtime, wc.MtimeNsec = gc.Perm, gc.UID, gc.GID, gc.Mtime, gc.MtimeNsec
		}
		if len(wc.Xattrs) == 0 {
			wc.Xattrs = nil
		}
		if len(gc.Xattrs) == 0 {
			gc.Xattrs = nil
		}
		if wc.String() != gc.String() {
			t.Errorf("%q differs:\n\twant %v\n\tgot  %v", p, &wc, &gc)
			bad++
		}
		if w.Type != unix.S_IFDIR && w.group != g.group {
			t.Errorf("%q: hard link group differs:\n\twant %s\n\tgot  %s", p, w.group, g.group)
			bad++
		}
		if bad > 40 {
			t.Fatal("too many differences")
		}
	}
}

// untar extracts a tar as GNU tar does as root, with owners, modes and xattrs.
func untar(t testing.TB, tarball []byte, dir string) {
	t.Helper()
	cmd := exec.Command("tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", "-", "-C", dir)
	cmd.Stdin = bytes.NewReader(tarball)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tar -x: %v\n%s", err, out)
	}
}

// tarNames returns the cleaned names of a tar's entries, in order.
func tarNames(t testing.TB, tarball []byte) []string {
	t.Helper()
	var names []string
	for h := range testutil.TarEntries(t, tarball) {
		names = append(names, format.CleanName(h.Name))
	}
	return names
}

// setDirTimes sets the mtime of the directories a tar lists to the tar's: GNU tar sets them,
// then creates the symlinks it delayed, which changes them again.
func setDirTimes(t testing.TB, tr tree, tarball []byte) {
	t.Helper()
	for h := range testutil.TarEntries(t, tarball) {
		if f := tr[format.CleanName(h.Name)]; f != nil && f.Type == unix.S_IFDIR && h.Typeflag == tar.TypeDir {
			f.Mtime, f.MtimeNsec = h.ModTime.Unix(), int64(h.ModTime.Nanosecond())
		}
	}
}

// setSynthesized makes the directories the tar does not list (tar -x made them with the
// umask, owned by root, with the time of extraction) look like fusefs synthesizes them.
func setSynthesized(tr tree, listed []string) {
	in := map[string]bool{}
	for _, n := range listed {
		in[n] = true
	}
	for p, f := range tr {
		if f.Type == unix.S_IFDIR && !in[p] {
			f.Perm, f.UID, f.GID, f.Mtime, f.MtimeNsec = 0o755, 0, 0, 0, 0
		}
	}
}

// overlayStyle turns the tree of an extracted layer into what the layer view shows:
// .wh.NAME becomes a character device 0:0 NAME, .wh..wh..opq an xattr on its directory.
func overlayStyle(tr tree) {
	var paths []string
	for p := range tr {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	for _, p := range paths {
		f := tr[p]
		dir, base := filepath.Split(p)
		dir = strings.TrimSuffix(dir, "/")
		if dir == "" {
			dir = "."
		}
		if !strings.HasPrefix(base, ".wh.") {
			continue
		}
		delete(tr, p)
		parent := tr[dir]
		switch {
		case base == ".wh..wh..opq":
			if parent.Xattrs == nil {
				parent.Xattrs = map[string]string{}
			}
			parent.Xattrs["trusted.overlay.opaque"] = "y"
		case strings.HasPrefix(base, ".wh..wh."):
		default:
			name := filepath.Join(dir, base[4:])
			if old := tr[name]; old != nil {
				if old.Type == unix.S_IFDIR {
					if old.Xattrs == nil {
						old.Xattrs = map[string]string{}
					}
					old.Xattrs["trusted.overlay.opaque"] = "y"
				}
				continue
			}
			tr[name] = &fileInfo{Type: unix.S_IFCHR, UID: f.UID, GID: f.GID, Mtime: f.Mtime, MtimeNsec: f.MtimeNsec, Nlink: 1, dev: f.dev, ino: f.ino}
		}
	}
}

// applyLayers is a reference applier: it lays the extracted layers (trees from tar -x, with
// the names each tar lists) one over the other, as the OCI image spec says.
func applyLayers(layers []tree, listed [][]string) tree {
	acc := tree{}
	removeTree := func(p string) {
		for q := range acc {
			if q == p || strings.HasPrefix(q, p+"/") || p == "." && q != "." {
				delete(acc, q)
			}
		}
	}
	for li, l := range layers {
		in := map[string]bool{}
		for _, n := range listed[li] {
			in[n] = true
		}
		var paths []string
		for p := range l {
			paths = append(paths, p)
		}
		slices.Sort(paths)
		// whiteouts first: they apply to the lower layers only
		for _, p := range paths {
			dir, base := filepath.Split(p)
			dir = strings.TrimSuffix(dir, "/")
			if dir == "" {
				dir = "."
			}
			switch {
			case base == ".wh..wh..opq":
				for q := range acc {
					if dir == "." && q != "." || strings.HasPrefix(q, dir+"/") {
						delete(acc, q)
					}
				}
			case strings.HasPrefix(base, ".wh..wh."):
			case strings.HasPrefix(base, ".wh."):
				removeTree(filepath.Join(dir, base[4:]))
			}
		}
		for _, p := range paths {
			if strings.HasPrefix(filepath.Base(p), ".wh.") {
				continue
			}
			f := *l[p]
			f.dev = uint64(li) // the layer makes the inode distinct
			old := acc[p]
			if f.Type == unix.S_IFDIR && old != nil && old.Type == unix.S_IFDIR {
				if in[p] {
					acc[p] = &f
				}
				continue
			}
			if old != nil {
				removeTree(p)
			}
			if f.Type == unix.S_IFDIR && !in[p] {
				f.Perm, f.UID, f.GID, f.Mtime, f.MtimeNsec = 0o755, 0, 0, 0, 0
			}
			acc[p] = &f
		}
	}
	// link counts: names per inode, and 2 + subdirectories
	names := map[[2]uint64]uint64{}
	for _, f := range acc {
		if f.Type != unix.S_IFDIR {
			names[[2]uint64{f.dev, f.ino}]++
		}
	}
	for p, f := range acc {
		if f.Type != unix.S_IFDIR {
			f.Nlink = names[[2]uint64{f.dev, f.ino}]
			continue
		}
		f.Nlink = 2
		for q, g := range acc {
			if g.Type == unix.S_IFDIR && q != "." && filepath.Dir(q) == p {
				f.Nlink++
			}
		}
	}
	return acc
}

// errno returns the syscall.Errno in err, or 0.
func errno(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return 0
}
