package imagebuild

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"lazypull/internal/testutil"
)

type entry struct {
	Name     string
	Type     byte
	Linkname string
	Mode     int64
	Uid, Gid int
	Size     int64
	Major    int64
	Minor    int64
	Body     string
	Xattrs   map[string]string
	ModTime  time.Time
	Format   tar.Format
}

func readLayer(t *testing.T, data []byte) []entry {
	t.Helper()
	var out []entry
	for h, body := range testutil.TarEntries(t, data) {
		if h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: has user/group names %q/%q, want numeric ids only", h.Name, h.Uname, h.Gname)
		}
		e := entry{Name: h.Name, Type: h.Typeflag, Linkname: h.Linkname, Mode: h.Mode, Uid: h.Uid,
			Gid: h.Gid, Size: h.Size, Major: h.Devmajor, Minor: h.Devminor, Body: string(body),
			ModTime: h.ModTime, Format: h.Format}
		for k, v := range h.PAXRecords {
			if name, ok := strings.CutPrefix(k, paxSchilyXattr); ok {
				if e.Xattrs == nil {
					e.Xattrs = map[string]string{}
				}
				e.Xattrs[name] = v
			}
		}
		out = append(out, e)
	}
	return out
}

func layerBytes(t *testing.T, dir string, opts LayerOptions) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := WriteLayer(&buf, dir, opts); err != nil {
		t.Fatalf("WriteLayer: %v", err)
	}
	return buf.Bytes()
}

func names(es []entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Name)
	}
	return out
}

func find(t *testing.T, es []entry, name string) entry {
	t.Helper()
	for _, e := range es {
		if e.Name == name {
			return e
		}
	}
	t.Fatalf("no entry %q in %q", name, names(es))
	return entry{}
}

func requireRoot(t *testing.T) { testutil.NeedRoot(t, "mknod, chown, trusted.* xattrs") }

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, p, body string, mode os.FileMode) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Dir(p), 0o755))
	must(t, os.WriteFile(p, []byte(body), mode))
	must(t, os.Chmod(p, mode)) // not subject to umask
}

func setXattr(t *testing.T, p, name, value string) {
	t.Helper()
	if err := unix.Lsetxattr(p, name, []byte(value), 0); err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			t.Skipf("xattrs not supported on %s", p)
		}
		t.Fatalf("setxattr %s %s: %v", p, name, err)
	}
}

func TestWriteLayerRootfs(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "usr/bin/tool"), "#!/bin/sh\n", 0o755)
	must(t, os.Chown(filepath.Join(dir, "usr/bin/tool"), 1234, 5678))
	must(t, os.Chmod(filepath.Join(dir, "usr/bin/tool"), 0o755|os.ModeSetuid)) // after chown, which clears it
	writeFile(t, filepath.Join(dir, "etc/conf"), "x=1\n", 0o640)
	setXattr(t, filepath.Join(dir, "etc/conf"), "user.lazypull", "yes")
	setXattr(t, filepath.Join(dir, "etc/conf"), "trusted.overlay.origin", "junk")
	must(t, os.Symlink("../usr/bin/tool", filepath.Join(dir, "etc/link")))
	must(t, os.MkdirAll(filepath.Join(dir, "dev"), 0o755))
	must(t, unix.Mknod(filepath.Join(dir, "dev/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(t, os.Chmod(filepath.Join(dir, "dev/null"), 0o666)) // mknod is subject to umask
	must(t, unix.Mknod(filepath.Join(dir, "dev/loop9"), unix.S_IFBLK|0o660, int(unix.Mkdev(7, 9))))
	must(t, unix.Mkfifo(filepath.Join(dir, "dev/fifo"), 0o600))
	// A character device 0:0 in a plain rootfs is kept as a device, not a whiteout.
	must(t, unix.Mknod(filepath.Join(dir, "dev/zerozero"), unix.S_IFCHR|0o600, 0))
	long := strings.Repeat("d", 90) + "/" + strings.Repeat("f", 90)
	writeFile(t, filepath.Join(dir, long), "long", 0o644)
	mtime := time.Date(2020, 1, 2, 3, 4, 5, 678_000_000, time.UTC)
	must(t, os.Chtimes(filepath.Join(dir, "etc/conf"), mtime, mtime))

	es := readLayer(t, layerBytes(t, dir, LayerOptions{}))
	want := []string{
		strings.Repeat("d", 90) + "/", long,
		"dev/", "dev/fifo", "dev/loop9", "dev/null", "dev/zerozero",
		"etc/", "etc/conf", "etc/link",
		"usr/", "usr/bin/", "usr/bin/tool",
	}
	if got := names(es); !slices.Equal(got, want) {
		t.Fatalf("entries:\n got %q\nwant %q", got, want)
	}

	tool := find(t, es, "usr/bin/tool")
	if tool.Type != tar.TypeReg || tool.Mode != 0o4755 || tool.Uid != 1234 || tool.Gid != 5678 || tool.Body != "#!/bin/sh\n" {
		t.Errorf("usr/bin/tool: %+v", tool)
	}
	conf := find(t, es, "etc/conf")
	if conf.Mode != 0o640 || !conf.ModTime.Equal(mtime.Truncate(time.Second)) {
		t.Errorf("etc/conf: mode %o mtime %v", conf.Mode, conf.ModTime)
	}
	if len(conf.Xattrs) != 1 || conf.Xattrs["user.lazypull"] != "yes" {
		t.Errorf("etc/conf xattrs = %v, want only user.lazypull (trusted.overlay.* dropped)", conf.Xattrs)
	}
	if conf.Format != tar.FormatPAX {
		t.Errorf("etc/conf with xattrs: format %v, want PAX", conf.Format)
	}
	if l := find(t, es, "etc/link"); l.Type != tar.TypeSymlink || l.Linkname != "../usr/bin/tool" {
		t.Errorf("etc/link: %+v", l)
	}
	if d := find(t, es, "dev/null"); d.Type != tar.TypeChar || d.Major != 1 || d.Minor != 3 || d.Mode != 0o666 {
		t.Errorf("dev/null: %+v", d)
	}
	if d := find(t, es, "dev/loop9"); d.Type != tar.TypeBlock || d.Major != 7 || d.Minor != 9 {
		t.Errorf("dev/loop9: %+v", d)
	}
	if d := find(t, es, "dev/zerozero"); d.Type != tar.TypeChar || d.Major != 0 || d.Minor != 0 {
		t.Errorf("dev/zerozero: %+v", d)
	}
	if d := find(t, es, "dev/fifo"); d.Type != tar.TypeFifo {
		t.Errorf("dev/fifo: %+v", d)
	}
	if d := find(t, es, "usr/"); d.Type != tar.TypeDir {
		t.Errorf("usr/: %+v", d)
	}
	if e := find(t, es, long); e.Body != "long" {
		t.Errorf("long name: %+v", e)
	}
	// Short names without xattrs stay plain USTAR, like Docker's layers.
	if e := find(t, es, "usr/bin/tool"); e.Format != tar.FormatUSTAR {
		t.Errorf("usr/bin/tool: format %v, want USTAR", e.Format)
	}
}

func TestWriteLayerHardlinks(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "b/data"), "shared", 0o644)
	must(t, os.MkdirAll(filepath.Join(dir, "a"), 0o755))
	must(t, os.MkdirAll(filepath.Join(dir, "c"), 0o755))
	must(t, os.Link(filepath.Join(dir, "b/data"), filepath.Join(dir, "a/first")))
	must(t, os.Link(filepath.Join(dir, "b/data"), filepath.Join(dir, "c/third")))
	// Hardlinked devices are links too.
	must(t, unix.Mknod(filepath.Join(dir, "c/dev1"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 5))))
	must(t, os.Link(filepath.Join(dir, "c/dev1"), filepath.Join(dir, "c/dev2")))
	writeFile(t, filepath.Join(dir, "c/single"), "one", 0o644)

	es := readLayer(t, layerBytes(t, dir, LayerOptions{}))
	want := []string{"a/", "a/first", "b/", "b/data", "c/", "c/dev1", "c/dev2", "c/single", "c/third"}
	if got := names(es); !slices.Equal(got, want) {
		t.Fatalf("entries:\n got %q\nwant %q", got, want)
	}
	// The first name in walk order carries the data; the others link to it.
	if e := find(t, es, "a/first"); e.Type != tar.TypeReg || e.Body != "shared" {
		t.Errorf("a/first: %+v", e)
	}
	for _, n := range []string{"b/data", "c/third"} {
		if e := find(t, es, n); e.Type != tar.TypeLink || e.Linkname != "a/first" || e.Size != 0 {
			t.Errorf("%s: %+v, want link to a/first", n, e)
		}
	}
	if e := find(t, es, "c/dev1"); e.Type != tar.TypeChar || e.Major != 1 || e.Minor != 5 {
		t.Errorf("c/dev1: %+v", e)
	}
	if e := find(t, es, "c/dev2"); e.Type != tar.TypeLink || e.Linkname != "c/dev1" {
		t.Errorf("c/dev2: %+v", e)
	}
	if e := find(t, es, "c/single"); e.Type != tar.TypeReg || e.Body != "one" {
		t.Errorf("c/single: %+v", e)
	}
}

// TestWriteLayerOverlayWhiteouts builds an upper dir by hand, the way overlayfs lays it out.
func TestWriteLayerOverlayWhiteouts(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(dir, "etc/apt"), 0o755))
	must(t, os.Chown(filepath.Join(dir, "etc/apt"), 10, 20))
	// Whiteouts: character devices 0:0; overlayfs shares one inode between many of them.
	must(t, unix.Mknod(filepath.Join(dir, "etc/apt/gone"), unix.S_IFCHR, 0))
	must(t, os.Link(filepath.Join(dir, "etc/apt/gone"), filepath.Join(dir, "etc/apt/also-gone")))
	must(t, os.Link(filepath.Join(dir, "etc/apt/gone"), filepath.Join(dir, "etc/zz-gone")))
	// Opaque directory: replaces the lower directory entirely.
	writeFile(t, filepath.Join(dir, "var/lib/opq/new"), "fresh", 0o644)
	must(t, os.Chmod(filepath.Join(dir, "var/lib/opq"), 0o750))
	setXattr(t, filepath.Join(dir, "var/lib/opq"), overlayOpaque, "y")
	setXattr(t, filepath.Join(dir, "var/lib/opq"), "user.keep", "1")
	// opaque=x marks a merge dir holding xwhiteouts, not an opaque one.
	must(t, os.MkdirAll(filepath.Join(dir, "var/notopq"), 0o755))
	setXattr(t, filepath.Join(dir, "var/notopq"), overlayOpaque, "x")
	setXattr(t, filepath.Join(dir, "var"), "trusted.overlay.impure", "y")

	es := readLayer(t, layerBytes(t, dir, LayerOptions{Overlay: true}))
	want := []string{
		"etc/", "etc/apt/", "etc/apt/.wh.also-gone", "etc/apt/.wh.gone", "etc/.wh.zz-gone",
		"var/", "var/lib/", "var/lib/opq/", "var/lib/opq/.wh..wh..opq", "var/lib/opq/new", "var/notopq/",
	}
	if got := names(es); !slices.Equal(got, want) {
		t.Fatalf("entries:\n got %q\nwant %q", got, want)
	}
	for _, n := range []string{"etc/apt/.wh.also-gone", "etc/apt/.wh.gone", "etc/.wh.zz-gone"} {
		if e := find(t, es, n); e.Type != tar.TypeReg || e.Size != 0 {
			t.Errorf("%s: %+v, want empty regular file", n, e)
		}
	}
	opq := find(t, es, "var/lib/opq/.wh..wh..opq")
	if opq.Type != tar.TypeReg || opq.Size != 0 || opq.Mode != 0o750 {
		t.Errorf("opaque marker: %+v", opq)
	}
	d := find(t, es, "var/lib/opq/")
	if len(d.Xattrs) != 1 || d.Xattrs["user.keep"] != "1" {
		t.Errorf("var/lib/opq/ xattrs = %v, want only user.keep", d.Xattrs)
	}
	for _, e := range es {
		for k := range e.Xattrs {
			if strings.HasPrefix(k, overlayXattrPrefix) {
				t.Errorf("%s: kept overlay xattr %s", e.Name, k)
			}
		}
	}

	// Without Overlay the same tree is taken literally.
	plain := readLayer(t, layerBytes(t, dir, LayerOptions{}))
	if e := find(t, plain, "etc/apt/also-gone"); e.Type != tar.TypeChar {
		t.Errorf("plain layer: etc/apt/also-gone %+v, want char device", e)
	}
	if e := find(t, plain, "etc/apt/gone"); e.Type != tar.TypeLink || e.Linkname != "etc/apt/also-gone" {
		t.Errorf("plain layer: etc/apt/gone %+v, want hardlink", e)
	}
}

func TestWriteLayerRejectsRedirect(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(dir, "moved"), 0o755))
	setXattr(t, filepath.Join(dir, "moved"), "trusted.overlay.redirect", "/orig")
	err := WriteLayer(io.Discard, dir, LayerOptions{Overlay: true})
	if err == nil || !strings.Contains(err.Error(), "redirect") {
		t.Fatalf("WriteLayer = %v, want redirect error", err)
	}
}

// TestWriteLayerRealOverlay lets the kernel make the upper dir: delete a lower file, replace a
// lower directory, add a file.
func TestWriteLayerRealOverlay(t *testing.T) {
	requireRoot(t)
	tmp := t.TempDir()
	lower, upper, work, merged := filepath.Join(tmp, "lower"), filepath.Join(tmp, "upper"),
		filepath.Join(tmp, "work"), filepath.Join(tmp, "merged")
	writeFile(t, filepath.Join(lower, "etc/keep"), "keep", 0o644)
	writeFile(t, filepath.Join(lower, "etc/del"), "del", 0o644)
	writeFile(t, filepath.Join(lower, "data/old1"), "1", 0o644)
	writeFile(t, filepath.Join(lower, "data/old2"), "2", 0o644)
	writeFile(t, filepath.Join(lower, "usr/lib/py/mod.py"), "m", 0o644)
	for _, d := range []string{upper, work, merged} {
		must(t, os.MkdirAll(d, 0o755))
	}
	opts := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work + ",redirect_dir=off,metacopy=off"
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Skipf("cannot mount overlay: %v", err)
	}
	mounted := true
	unmount := func() {
		if mounted {
			must(t, unix.Unmount(merged, 0))
			mounted = false
		}
	}
	t.Cleanup(unmount)

	must(t, os.Remove(filepath.Join(merged, "etc/del")))
	must(t, os.RemoveAll(filepath.Join(merged, "data")))
	writeFile(t, filepath.Join(merged, "data/new"), "new", 0o644)
	writeFile(t, filepath.Join(merged, "etc/added"), "added", 0o644)
	writeFile(t, filepath.Join(merged, "usr/lib/py/added.py"), "a", 0o644)
	unmount()

	es := readLayer(t, layerBytes(t, upper, LayerOptions{Overlay: true}))
	// Entries come in the order of the names in the upper dir ("added" < "del").
	// A file added deep in a lower directory brings every parent directory into the layer:
	// eStargz's optimizer (ctr-remote image optimize) moves a prioritized file to the front of
	// its layer with its parents, and skips it when a parent is not in that layer.
	want := []string{"data/", "data/.wh..wh..opq", "data/new", "etc/", "etc/added", "etc/.wh.del",
		"usr/", "usr/lib/", "usr/lib/py/", "usr/lib/py/added.py"}
	if got := names(es); !slices.Equal(got, want) {
		t.Fatalf("entries:\n got %q\nwant %q", got, want)
	}
	seen := map[string]bool{}
	for _, e := range es {
		if dir := path.Dir(strings.TrimSuffix(e.Name, "/")); dir != "." && !seen[dir] {
			t.Errorf("%s comes without its parent directory %s/ before it", e.Name, dir)
		}
		seen[strings.TrimSuffix(e.Name, "/")] = true
	}
}
