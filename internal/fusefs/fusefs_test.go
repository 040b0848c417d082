package fusefs

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"lazypull/format"
	"lazypull/internal/testutil"
)

var (
	mt      = time.Date(2024, 2, 29, 12, 34, 56, 0, time.UTC)
	mtNsec  = time.Date(2023, 1, 1, 0, 0, 0, 123456789, time.UTC)
	longDir = strings.Repeat("very-long-directory-name/", 12)
)

func dir(name string, mode int64) tentry {
	return tentry{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: mt}}
}

func file(name string, mode int64, body []byte) tentry {
	return tentry{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, ModTime: mt}, Body: body}
}

func hardlink(name, target string) tentry {
	return tentry{Hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, ModTime: mt}}
}

func symlink(name, target string) tentry {
	return tentry{Hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: mt}}
}

func with(e tentry, f func(h *tar.Header)) tentry {
	f(&e.Hdr)
	return e
}

func xattr(kv ...string) func(h *tar.Header) {
	return func(h *tar.Header) {
		h.Format = tar.FormatPAX
		if h.PAXRecords == nil {
			h.PAXRecords = map[string]string{}
		}
		for i := 0; i < len(kv); i += 2 {
			h.PAXRecords["SCHILY.xattr."+kv[i]] = kv[i+1]
		}
	}
}

// Three layers with every kind of entry, and every way a layer can change a lower one.
func testLayers(t testing.TB) [][]byte {
	t.Helper()
	// a POSIX ACL (version 2): user::rw- user:1000:r-- group::r-- mask::r-- other::---
	acl := string([]byte{2, 0, 0, 0,
		1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff,
		2, 0, 4, 0, 0xe8, 3, 0, 0,
		4, 0, 4, 0, 0xff, 0xff, 0xff, 0xff,
		0x10, 0, 4, 0, 0xff, 0xff, 0xff, 0xff,
		0x20, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	base := []tentry{
		dir("./", 0o755),
		dir("etc/", 0o755),
		file("etc/hostname", 0o644, []byte("lazypull\n")),
		with(file("etc/empty", 0o600, nil), func(h *tar.Header) { h.Uid, h.Gid = 1000, 1000 }),
		file("etc/shadow", 0, []byte("root:*:19000:0:99999:7:::\n")),
		with(file("etc/acl", 0o640, []byte("acl\n")), xattr("system.posix_acl_access", acl)),
		dir("usr/", 0o755),
		dir("usr/bin/", 0o755),
		file("usr/bin/sudo", 0o4755, testutil.RandBytes(1, 70_000)),
		with(file("usr/bin/sgid", 0o3711, []byte("#!/bin/sh\n")), func(h *tar.Header) { h.Uid, h.Gid = 65534, 4_000_000 }),
		with(file("usr/lib/big.so", 0o644, testutil.RandBytes(2, 3<<20+12345)), func(h *tar.Header) { h.ModTime, h.Format = mtNsec, tar.FormatPAX }),
		file("usr/lib/zeros", 0o644, make([]byte, 1<<20)),
		hardlink("usr/bin/sudo-link", "usr/bin/sudo"),
		hardlink("usr/bin/link-of-link", "./usr/bin/sudo-link"),
		symlink("usr/bin/sh", "/bin/dash"),
		symlink("usr/bin/rel", "../lib/big.so"),
		symlink("usr/bin/longlink", "/"+longDir+"target"),
		{Hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: mt}},
		{Hdr: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/sda", Mode: 0o660, Devmajor: 8, Devminor: 0, Gid: 6, ModTime: mt}},
		{Hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/big", Mode: 0o600, Devmajor: 511, Devminor: 70000, ModTime: mt}},
		{Hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "run/fifo", Mode: 0o600, ModTime: mt}},
		with(file("bin/ping", 0o755, []byte("\x7fELF ping")), xattr(
			"security.capability", "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
			"user.comment", "pings\x00with a NUL",
			"trusted.lazypull", "t")),
		with(dir("tmp/", 0o1777), xattr("user.dir", "attr on a dir")),
		with(file("tmp/empty-xattr", 0o644, nil), xattr("user.empty", "")),
		file(longDir+"file.txt", 0o644, []byte("long")),
		hardlink(longDir+"hardlink.txt", longDir+"file.txt"),
		with(file("weird/\xff\xfe-not-utf8", 0o644, []byte("bytes")), func(h *tar.Header) { h.Format = tar.FormatGNU }),
		file("weird/with space", 0o644, []byte("space")),
		file("weird/new\nline", 0o644, []byte("newline")),
		file("weird/ünïcödé", 0o644, []byte("utf8")),
		with(file("old", 0o644, []byte("old")), func(h *tar.Header) { h.ModTime, h.Format = time.Unix(-86400*365, 5), tar.FormatPAX }),
		dir("dir2file/", 0o755),
		file("dir2file/child", 0o644, []byte("child")),
		file("file2dir", 0o644, []byte("file")),
		dir("wh/", 0o755),
		file("wh/gone", 0o644, []byte("gone")),
		dir("wh/gonedir/", 0o700),
		file("wh/gonedir/x", 0o644, []byte("x")),
		file("wh/stays", 0o644, []byte("stays")),
		dir("opq/", 0o755),
		file("opq/a", 0o644, []byte("a")),
		dir("opq/sub/", 0o755),
		file("opq/sub/b", 0o644, []byte("b")),
		dir("same/", 0o755),
		file("same/x", 0o644, []byte("x")),
		with(dir("implicitover/", 0o700), func(h *tar.Header) { h.Uid = 5 }),
		file("implicitover/a", 0o644, []byte("a")),
		dir("hl/", 0o755),
		file("hl/a", 0o644, []byte("shared")),
		hardlink("hl/b", "hl/a"),
		hardlink("hl/c", "hl/a"),
		file("dup", 0o644, []byte("first")),
		file("dup", 0o600, []byte("second, wins")),
	}
	upper := []tentry{
		with(dir("etc/", 0o750), func(h *tar.Header) { h.ModTime = mtNsec }),
		file("etc/hostname", 0o644, []byte("upper\n")),
		file("dir2file", 0o644, []byte("now a file")),
		dir("file2dir/", 0o755),
		file("file2dir/inner", 0o644, []byte("inner")),
		file("wh/.wh.gone", 0, nil),
		file("wh/.wh.gonedir", 0, nil),
		file("wh/.wh.never-existed", 0, nil),
		file("opq/.wh..wh..opq", 0, nil),
		file("opq/c", 0o644, []byte("c")),
		file(".wh.same", 0, nil),
		dir("same/", 0o711),
		file("same/y", 0o644, []byte("y")),
		file("implicitover/b", 0o644, []byte("b")),
		file("hl/a", 0o644, []byte("replaced")),
		file("newimplicit/deep/file", 0o644, []byte("deep")),
		file(".wh..wh.plnk", 0, nil),
		with(file("usr/lib/zeros", 0o644, nil), func(h *tar.Header) { h.ModTime = mtNsec }),
	}
	top := []tentry{
		dir("wh/", 0o755),
		dir("wh/gone/", 0o755),
		file("wh/gone/again", 0o644, []byte("again")),
		symlink("file2dir", "dir2file"),
		file("opq/.wh..wh..opq", 0, nil),
		file("dir2file/.wh..wh..opq", 0, nil), // opaque, over a file
		file("weird/.wh.with space", 0, nil),
		file("newimplicit/.wh.deep", 0, nil),
		file("newimplicit/deep", 0o644, []byte("a file again")),
	}
	return [][]byte{mkTar(t, base), mkTar(t, upper), mkTar(t, top)}
}

// openLayers converts the tars and opens them, as layers of a merged view each served by
// a layerContent.
func openLayers(t testing.TB, tars [][]byte) []Layer {
	t.Helper()
	var out []Layer
	for _, tb := range tars {
		l := convertLayer(t, tb)
		out = append(out, Layer{Index: l.Index, Content: &layerContent{l: l}})
	}
	return out
}

// mergedReference is what the merged view of tars (the bottom layer first) shows: the
// tars extracted and applied one over the other (applyLayers).
func mergedReference(t testing.TB, tars [][]byte) tree {
	t.Helper()
	var extracted []tree
	var listed [][]string
	for _, tb := range tars {
		extracted = append(extracted, extract(t, tb))
		listed = append(listed, tarNames(t, tb))
	}
	return applyLayers(extracted, listed)
}

// extract untars a layer into a fresh directory and snapshots it.
func extract(t testing.TB, tarball []byte) tree {
	t.Helper()
	d := filepath.Join(t.TempDir(), "x")
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	untar(t, tarball, d)
	tr := snapshot(t, d)
	setDirTimes(t, tr, tarball)
	return tr
}

// layerView is what the layer view of a tar shows: the tar extracted, the directories it
// does not list as fusefs synthesizes them, whiteouts as overlayfs has them.
func layerView(t testing.TB, tarball []byte) tree {
	t.Helper()
	tr := extract(t, tarball)
	setSynthesized(tr, tarNames(t, tarball))
	overlayStyle(tr)
	return tr
}

func TestMain(m *testing.M) {
	syscall.Umask(0o022) // tar -x makes implicit directories with it
	if dir := os.Getenv("LAZYPULL_FUSEFS_HELPER_MOUNT"); dir != "" {
		helperMount(dir)
		return
	}
	code := m.Run()
	if benchPath != "" {
		os.RemoveAll(filepath.Dir(benchPath))
	}
	os.Exit(code)
}

func TestLayerViewMatchesTar(t *testing.T) {
	requireFUSE(t)
	tars := testLayers(t)
	for i, tb := range tars {
		t.Run(fmt.Sprint("layer", i), func(t *testing.T) {
			l := convertLayer(t, tb)
			_, mnt, _ := mountIndex(t, l.Index, &layerContent{l: l})
			want := layerView(t, tb)
			got := snapshot(t, mnt)
			if len(got) < 5 {
				t.Fatalf("mount shows %d files", len(got))
			}
			compareTrees(t, want, got, compareOpts{})
		})
	}
}

func TestLayerViewPassthroughMatchesTar(t *testing.T) {
	requireFUSE(t)
	tb := testLayers(t)[0]
	l := convertLayer(t, tb)
	c := newLocalContent(t, l, t.TempDir())
	root, mnt, srv := mountIndex(t, l.Index, c)
	want := layerView(t, tb)
	compareTrees(t, want, snapshot(t, mnt), compareOpts{})
	if !srv.Passthrough() {
		t.Logf("the kernel does not offer FUSE passthrough; reads went through FUSE")
		return
	}
	if n := c.reads.Load(); n != 0 {
		t.Errorf("%d reads reached the content; passthrough should have served them", n)
	}
	if root.v.passthroughOff.Load() {
		t.Errorf("reads of local files came through FUSE; passthrough should have served them")
	}
}

func TestMergedViewMatchesReference(t *testing.T) {
	requireFUSE(t)
	tars := testLayers(t)
	mnt := mountMerged(t, openLayers(t, tars))
	got := snapshot(t, mnt)
	want := mergedReference(t, tars)
	compareTrees(t, want, got, compareOpts{})

	// spot checks of what the layers do, in case the reference is wrong the same way
	for p, typ := range map[string]uint32{
		"dir2file": unix.S_IFDIR, // an opaque marker over a file makes a directory
		"file2dir": unix.S_IFLNK, "wh/gone": unix.S_IFDIR,
		"wh/gone/again": unix.S_IFREG, "opq": unix.S_IFDIR, "same/y": unix.S_IFREG,
		"newimplicit/deep": unix.S_IFREG, "implicitover/a": unix.S_IFREG,
	} {
		if got[p] == nil || got[p].Type != typ {
			t.Errorf("%q: want type %o, got %v", p, typ, got[p])
		}
	}
	for _, p := range []string{"wh/gonedir", "wh/never-existed", "opq/a", "opq/sub", "opq/c", "same/x",
		"dir2file/child", "file2dir/inner", "weird/with space", ".wh..wh.plnk", "newimplicit/deep/file"} {
		if got[p] != nil {
			t.Errorf("%q should be gone: %v", p, got[p])
		}
	}
	if f := got["implicitover"]; f == nil || f.Perm != 0o700 || f.UID != 5 {
		t.Errorf("implicitover: an implicit upper directory must keep the lower attributes: %v", f)
	}
	if f := got["hl/b"]; f == nil || f.Nlink != 2 || got["hl/a"].Nlink != 1 {
		t.Errorf("hl/b: want nlink 2 (hl/c), hl/a nlink 1: %v %v", f, got["hl/a"])
	}
}

// TestMergedViewMatchesOverlayfs mounts overlayfs over the layer views and compares what it
// shows with the merged view: the layer views are right for overlayfs, and the merged view
// agrees with it.
func TestMergedViewMatchesOverlayfs(t *testing.T) {
	requireFUSE(t)
	layers := openLayers(t, testLayers(t))
	var lowers []string
	for _, l := range layers {
		_, mnt, _ := mountIndex(t, l.Index, l.Content)
		lowers = append([]string{mnt}, lowers...) // overlayfs lists the top first
	}
	ovl := filepath.Join(t.TempDir(), "ovl")
	if err := os.Mkdir(ovl, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("overlay", ovl, "overlay", unix.MS_RDONLY, "lowerdir="+strings.Join(lowers, ":")); err != nil {
		skipOrFail(t, "cannot mount overlayfs: "+err.Error())
	}
	t.Cleanup(func() {
		if err := unix.Unmount(ovl, 0); err != nil {
			t.Errorf("unmount overlayfs: %v", err)
		}
	})
	mnt := mountMerged(t, layers)
	compareTrees(t, snapshot(t, ovl), snapshot(t, mnt), compareOpts{
		skipDirNlink: true, // overlayfs says 1 for merged directories
		// overlayfs takes the attributes of a directory an upper layer synthesizes (it does
		// not list it, only things in it); unpacking keeps the lower one's, and so does the
		// merged view. These are the directories of the test layers where that happens.
		skipAttrs: map[string]bool{".": true, "usr": true, "hl": true, "opq": true, "implicitover": true},
		// overlayfs gives a lower file the link count it has in its layer; layer 1 replaced
		// one of the three names of this inode.
		skipNlink: map[string]bool{"hl/b": true, "hl/c": true},
	})
}

func TestHardlinksAreOneInode(t *testing.T) {
	mnt := mountTestLayer(t)
	var a, b, c unix.Stat_t
	for p, st := range map[string]*unix.Stat_t{"usr/bin/sudo": &a, "usr/bin/sudo-link": &b, "usr/bin/link-of-link": &c} {
		if err := unix.Lstat(filepath.Join(mnt, p), st); err != nil {
			t.Fatal(err)
		}
	}
	if a.Ino != b.Ino || a.Ino != c.Ino || a.Nlink != 3 {
		t.Errorf("hard links: inodes %d %d %d, nlink %d; want one inode, nlink 3", a.Ino, b.Ino, c.Ino, a.Nlink)
	}
	if a.Mode != unix.S_IFREG|0o4755 {
		t.Errorf("sudo: mode %o", a.Mode)
	}
}

func TestInodeNumbersStable(t *testing.T) {
	requireFUSE(t)
	l := convertLayer(t, testLayers(t)[0])
	inos := func() map[string]uint64 {
		_, mnt, srv := mountIndex(t, l.Index, &layerContent{l: l})
		out := map[string]uint64{}
		for p, f := range snapshot(t, mnt) {
			out[p] = f.ino
		}
		if err := srv.Unmount(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	a, b := inos(), inos()
	if len(a) != len(b) {
		t.Fatalf("%d vs %d files", len(a), len(b))
	}
	for p, ino := range a {
		if b[p] != ino {
			t.Errorf("%q: inode %d, then %d", p, ino, b[p])
		}
	}
	if a["."] != 1 {
		t.Errorf("root inode %d", a["."])
	}
	idx := -1
	for i := range l.Index.Entries {
		if l.Index.Entries[i].Name == "etc/hostname" {
			idx = i
		}
	}
	if want := uint64(idx) + 2; a["etc/hostname"] != want {
		t.Errorf("etc/hostname: inode %d, want entry index + 2 = %d", a["etc/hostname"], want)
	}
}

func TestReadOnly(t *testing.T) {
	mnt := mountTestLayer(t)
	p := filepath.Join(mnt, "etc/hostname")
	checks := map[string]error{}
	_, checks["open for write"] = os.OpenFile(p, os.O_WRONLY, 0)
	_, checks["open read-write"] = os.OpenFile(p, os.O_RDWR, 0)
	_, checks["truncate on open"] = os.OpenFile(p, os.O_RDONLY|os.O_TRUNC, 0)
	_, checks["create"] = os.Create(filepath.Join(mnt, "etc/new"))
	checks["mkdir"] = os.Mkdir(filepath.Join(mnt, "newdir"), 0o755)
	checks["remove"] = os.Remove(p)
	checks["rmdir"] = os.Remove(filepath.Join(mnt, "run"))
	checks["rename"] = os.Rename(p, p+"2")
	checks["chmod"] = os.Chmod(p, 0o777)
	checks["chown"] = os.Lchown(p, 1, 1)
	checks["chtimes"] = os.Chtimes(p, time.Now(), time.Now())
	checks["symlink"] = os.Symlink("x", filepath.Join(mnt, "sl"))
	checks["link"] = os.Link(p, filepath.Join(mnt, "hl2"))
	checks["setxattr"] = unix.Setxattr(p, "user.x", []byte("y"), 0)
	checks["removexattr"] = unix.Removexattr(filepath.Join(mnt, "bin/ping"), "user.comment")
	checks["mknod"] = unix.Mknod(filepath.Join(mnt, "node"), unix.S_IFIFO|0o600, 0)
	for what, err := range checks {
		if errno(err) != syscall.EROFS {
			t.Errorf("%s: %v, want EROFS", what, err)
		}
	}
	if b, err := os.ReadFile(p); err != nil || string(b) != "lazypull\n" {
		t.Errorf("read after all that: %q, %v", b, err)
	}
	// fsync and close of a file open for reading succeed
	for _, name := range []string{"etc/hostname", "etc"} {
		f, err := os.Open(filepath.Join(mnt, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Errorf("fsync %s: %v", name, err)
		}
		if err := f.Close(); err != nil {
			t.Errorf("close %s: %v", name, err)
		}
	}
}

func TestXattrs(t *testing.T) {
	mnt := mountTestLayer(t)
	p := filepath.Join(mnt, "bin/ping")
	if _, err := unix.Lgetxattr(p, "user.nope", nil); errno(err) != unix.ENODATA {
		t.Errorf("missing xattr: %v, want ENODATA", err)
	}
	if _, err := unix.Lgetxattr(filepath.Join(mnt, "etc/hostname"), "security.capability", nil); errno(err) != unix.ENODATA {
		t.Errorf("missing capability: %v, want ENODATA", err)
	}
	small := make([]byte, 3)
	if _, err := unix.Lgetxattr(p, "user.comment", small); errno(err) != unix.ERANGE {
		t.Errorf("small buffer: %v, want ERANGE", err)
	}
	if _, err := unix.Llistxattr(p, small); errno(err) != unix.ERANGE {
		t.Errorf("small list buffer: %v, want ERANGE", err)
	}
	x := xattrs(t, p)
	if x["user.comment"] != "pings\x00with a NUL" || len(x["security.capability"]) != 20 || x["trusted.lazypull"] != "t" {
		t.Errorf("xattrs %q", x)
	}
}

func TestDirectoryListing(t *testing.T) {
	mnt := mountTestLayer(t)
	// getdents with . and .., in order, with types
	fd, err := unix.Open(filepath.Join(mnt, "usr/bin"), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	buf := make([]byte, 64<<10)
	var names []string
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
	// ParseDirent drops . and ..; check them by stat instead
	want := "link-of-link longlink rel sgid sh sudo sudo-link"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("usr/bin lists %q, want %q", got, want)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(mnt, "usr/bin/.."), &st); err != nil {
		t.Fatal(err)
	}
	var usr unix.Stat_t
	if err := unix.Lstat(filepath.Join(mnt, "usr"), &usr); err != nil {
		t.Fatal(err)
	}
	if st.Ino != usr.Ino {
		t.Errorf("usr/bin/.. is inode %d, usr is %d", st.Ino, usr.Ino)
	}
	if usr.Nlink != 4 { // ., .., bin, lib (implicit)
		t.Errorf("usr: nlink %d, want 4", usr.Nlink)
	}
	ents, err := os.ReadDir(filepath.Join(mnt, "dev"))
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, e := range ents {
		types = append(types, e.Name()+":"+e.Type().String())
	}
	if got := strings.Join(types, " "); got != "big:Dc--------- null:Dc--------- sda:D---------" {
		t.Errorf("dev lists %s", got)
	}
}

func TestStatfs(t *testing.T) {
	mnt := mountTestLayer(t)
	var st unix.Statfs_t
	if err := unix.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	if st.Files == 0 || st.Blocks == 0 || st.Flags&unix.ST_RDONLY == 0 || st.Flags&unix.ST_NOSUID == 0 || st.Flags&unix.ST_NODEV == 0 {
		t.Errorf("statfs: %+v", st)
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 9 && f[4] == mnt {
			if !strings.Contains(line, "fuse.lazypull lazypull") || !strings.Contains(line, "allow_other") || !strings.Contains(line, "default_permissions") {
				t.Errorf("mountinfo: %s", line)
			}
			if !strings.Contains(f[5], "nosuid") || !strings.Contains(f[5], "nodev") {
				t.Errorf("mount options %s: want nosuid and nodev (an image grants nothing on the host)", f[5])
			}
			return
		}
	}
	t.Errorf("%s not in mountinfo", mnt)
}

// TestPermissionsEnforced: default_permissions makes the kernel check modes (and ACLs).
func TestPermissionsEnforced(t *testing.T) {
	mnt := mountTestLayer(t)
	// others must reach the mount point
	for d := filepath.Dir(mnt); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	run := func(uid int, p string) error {
		cmd := exec.Command("cat", filepath.Join(mnt, p))
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, bytes.TrimSpace(out))
		}
		return nil
	}
	if err := run(4242, "etc/hostname"); err != nil {
		t.Errorf("uid 4242 reads etc/hostname (0644): %v", err)
	}
	if err := run(4242, "etc/shadow"); err == nil {
		t.Errorf("uid 4242 reads etc/shadow (mode 0): want permission denied")
	}
	if err := run(1000, "etc/acl"); err != nil {
		t.Errorf("uid 1000 reads etc/acl (0640, ACL user:1000:r--): %v", err)
	}
	if err := run(1001, "etc/acl"); err == nil {
		t.Errorf("uid 1001 reads etc/acl (0640 root:root): want permission denied")
	}
}

// TestOverlayUpperOnLayerViews uses the layer views as a snapshotter does: the lower
// directories of a read-write overlayfs. Files copy up with their content, mode and
// xattrs; whiteouts and opaque directories still hide what they hide.
func TestOverlayUpperOnLayerViews(t *testing.T) {
	requireFUSE(t)
	tars := testLayers(t)
	var lowers []string
	for _, l := range openLayers(t, tars) {
		_, mnt, _ := mountIndex(t, l.Index, l.Content)
		lowers = append([]string{mnt}, lowers...)
	}
	base := t.TempDir()
	upper, work, ovl := filepath.Join(base, "upper"), filepath.Join(base, "work"), filepath.Join(base, "ovl")
	for _, d := range []string{upper, work, ovl} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts := "lowerdir=" + strings.Join(lowers, ":") + ",upperdir=" + upper + ",workdir=" + work
	if err := unix.Mount("overlay", ovl, "overlay", 0, opts); err != nil {
		skipOrFail(t, "cannot mount overlayfs: "+err.Error())
	}
	t.Cleanup(func() {
		if err := unix.Unmount(ovl, 0); err != nil {
			t.Errorf("unmount overlayfs: %v", err)
		}
	})
	// copy-up of a big file from the lowest layer keeps its bytes and xattrs
	big := filepath.Join(ovl, "usr/lib/big.so")
	f, err := os.OpenFile(big, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("appended"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	got, err := os.ReadFile(big)
	if err != nil {
		t.Fatal(err)
	}
	want := append(testutil.RandBytes(2, 3<<20+12345), "appended"...)
	if !bytes.Equal(got, want) {
		t.Errorf("usr/lib/big.so after copy-up and append: %d bytes, differs", len(got))
	}
	ping := filepath.Join(ovl, "bin/ping")
	if err := os.Chmod(ping, 0o700); err != nil {
		t.Fatal(err)
	}
	if x := xattrs(t, ping); len(x["security.capability"]) != 20 || x["user.comment"] != "pings\x00with a NUL" {
		t.Errorf("bin/ping xattrs after copy-up: %q", x)
	}
	// what the upper layers hid stays hidden; new files go to the upper directory
	for _, p := range []string{"wh/gonedir", "opq/a", "same/x"} {
		if _, err := os.Lstat(filepath.Join(ovl, p)); !os.IsNotExist(err) {
			t.Errorf("%s: %v, want it hidden", p, err)
		}
	}
	if err := os.WriteFile(filepath.Join(ovl, "opq/new"), []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(upper, "opq/new")); err != nil || string(b) != "new" {
		t.Errorf("upper opq/new: %q %v", b, err)
	}
	if err := os.Remove(filepath.Join(ovl, "etc/hostname")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(ovl, "etc/hostname")); !os.IsNotExist(err) {
		t.Errorf("etc/hostname after rm: %v", err)
	}
}

// rangeContent records the ranges it is asked for.
type rangeContent struct {
	layerContent
	mu     sync.Mutex
	ranges [][2]int64
}

func (c *rangeContent) ReadAt(ctx context.Context, e *format.Entry, p []byte, off int64) (int, error) {
	c.mu.Lock()
	c.ranges = append(c.ranges, [2]int64{off, int64(len(p))})
	c.mu.Unlock()
	return c.layerContent.ReadAt(ctx, e, p, off)
}

func (c *rangeContent) asked() [][2]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.ranges)
}

// TestReadsByRange: opening reads nothing, and a small read far into a file asks the
// content for that part only (and the read-ahead after it), not the whole file.
func TestReadsByRange(t *testing.T) {
	requireFUSE(t)
	l := convertLayer(t, testLayers(t)[0])
	c := &rangeContent{layerContent: layerContent{l: l}}
	_, mnt, _ := mountIndex(t, l.Index, c)
	f, err := os.Open(filepath.Join(mnt, "usr/lib/big.so"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if r := c.asked(); len(r) != 0 {
		t.Errorf("open read %v", r)
	}
	const off = 2<<20 + 5000
	b := make([]byte, 100)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, testutil.RandBytes(2, 3<<20+12345)[off:off+100]) {
		t.Error("content differs")
	}
	var total int64
	ranges := c.asked()
	for _, r := range ranges {
		total += r[1]
		if r[0]+r[1] <= off-(1<<20) || r[0] >= 3<<20+12345 {
			t.Errorf("asked for [%d, +%d), far from the read at %d", r[0], r[1], int64(off))
		}
	}
	if total == 0 || total > 1<<20+4096 {
		t.Errorf("asked for %d bytes in %v for a read of 100", total, ranges)
	}
}
