package fusefs

import (
	"slices"
	"strings"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"

	"lazypull/format"
	"lazypull/internal/testutil"
)

// These tests check the trees without mounting: the cases a tar from tar -x cannot show.

func ent(name string, typ byte, more ...func(*format.Entry)) format.Entry {
	e := format.Entry{Name: format.CleanName(name), Type: typ, Mode: 0o644}
	if typ == '5' {
		e.Mode = 0o755
	}
	for _, f := range more {
		f(&e)
	}
	return e
}

func link(target string) func(*format.Entry) {
	return func(e *format.Entry) { e.Linkname = target }
}

func mode(m int64) func(*format.Entry) {
	return func(e *format.Entry) { e.Mode = m }
}

// build returns a view, which is whole before it is mounted.
func build(r *Root, err error) *Root {
	if err != nil {
		panic(err)
	}
	return r
}

// listing renders a view's tree: one line per name, "path type nlink ino [opaque]".
func listing(r *Root) string {
	var lines []string
	var walk func(p string, in *inode)
	walk = func(p string, in *inode) {
		for _, k := range in.kids[2:] {
			child := in.child(k.Name)
			cp := strings.TrimPrefix(p+"/"+k.Name, "/")
			line := cp + " " + map[kind]string{kindDir: "dir", kindReg: "reg", kindSymlink: "lnk", kindChar: "chr", kindBlock: "blk", kindFifo: "fifo", kindWhiteout: "wh"}[child.n.kind]
			line += " " + itoa(uint64(child.nlink)) + " " + itoa(child.ino)
			if child.n.opaque {
				line += " opaque"
			}
			lines = append(lines, line)
			if child.n.kind == kindDir {
				walk(cp, child)
			}
		}
	}
	walk("", r.v.inodes[rootIno])
	return strings.Join(lines, "\n")
}

// checkListing checks the view's listing, line by line.
func checkListing(t *testing.T, r *Root, want ...string) {
	t.Helper()
	if got, want := listing(r), strings.Join(want, "\n"); got != want {
		t.Errorf("tree:\n%s\nwant:\n%s", got, want)
	}
}

func itoa(v uint64) string {
	if v >= 1<<32 {
		return itoa(v>>32) + "<<32|" + itoa(v&(1<<32-1))
	}
	s := ""
	for {
		s = string(rune('0'+v%10)) + s
		v /= 10
		if v == 0 {
			return s
		}
	}
}

func TestLayerTree(t *testing.T) {
	var logs testutil.LogBuffer
	ix := &format.Index{Entries: []format.Entry{
		ent("d/", '5', mode(0o700)),         // 0
		ent("d/x", '0'),                     // 1
		ent("d/", '5', mode(0o711)),         // 2: listed again, keeps d/x
		ent("o/", '5'),                      // 3
		ent(".wh.o", '0'),                   // 4: whiteout + dir in one layer: opaque dir
		ent(".wh.p", '0'),                   // 5
		ent("p/", '5'),                      // 6: the other order
		ent(".wh.f", '0'),                   // 7
		ent("f", '0'),                       // 8: whiteout + file: just the file
		ent("l", '2', link("d")),            // 9
		ent("l/y", '0'),                     // 10: under a symlink: l becomes a directory
		ent("v", 'V'),                       // 11: unknown type
		ent(".", '0'),                       // 12: a root that is not a directory
		ent(".wh.", '0'),                    // 13
		ent(".wh..wh.plnk", '0'),            // 14
		ent("ext", '1', link("lower/file")), // 15: a hard link out of the layer
		ent("h1", '1', link("d/x")),         // 16
		ent("deep/er/.wh..wh..opq", '0'),    // 17
		ent("dup", '0'),                     // 18
		ent("dup", '3'),                     // 19: last wins
		ent("gone", '0', mode(0)),           // 20
		ent(".wh.gone", '0'),                // 21: the file stays
	}}
	r := build(NewLayer(ix, shortContent{}, WithLogger(logs.Logger())))
	checkListing(t, r,
		"d dir 2 2",
		"d/x reg 2 3",
		"deep dir 3 25",
		"deep/er dir 2 26 opaque",
		"dup chr 1 21",
		"f reg 1 10",
		"gone reg 1 22",
		"h1 reg 2 3",
		"l dir 2 24",
		"l/y reg 1 12",
		"o dir 2 5 opaque",
		"p dir 2 8 opaque",
	)
	if root := r.v.inodes[rootIno]; root.nlink != 2+5 {
		t.Errorf("root nlink %d", root.nlink)
	}
	if d := r.v.inodes[rootIno].child("d"); d.n.e.Mode != 0o711 {
		t.Errorf("d: mode %o, want the later entry's 0711", d.n.e.Mode)
	}
	for _, w := range []string{"unknown type", "root entry is not a directory", "outside the layer"} {
		if !strings.Contains(logs.String(), w) {
			t.Errorf("no warning %q in:\n%s", w, logs.String())
		}
	}
}

func TestMergedTree(t *testing.T) {
	lower := &format.Index{Entries: []format.Entry{
		ent("lower/", '5'),             // 0
		ent("lower/file", '0'),         // 1
		ent("keep", '0'),               // 2
		ent("tree/", '5', mode(0o700)), // 3
		ent("tree/a", '0'),             // 4
	}}
	upper := &format.Index{Entries: []format.Entry{
		ent("ext", '1', link("lower/file")), // 0: joins the lower file's inode
		ent(".wh..wh..opq", '0'),            // 1: opaque root: lower's other names go
		ent("keep", '0'),                    // 2
		ent("tree/b", '0'),                  // 3: tree is synthesized here
	}}
	var logs testutil.LogBuffer
	r := build(NewMerged([]Layer{{lower, shortContent{}}, {upper, shortContent{}}}, WithLogger(logs.Logger())))
	// the opaque root hides lower/ and tree/, so ext (resolved before) is the only name of
	// the lower file left
	checkListing(t, r,
		"ext reg 1 3",
		"keep reg 1 1<<32|4",
		"tree dir 2 1<<32|6",
		"tree/b reg 1 1<<32|5",
	)

	// without the opaque root, ext and lower/file are one inode, and tree keeps its mode
	upper.Entries[1] = ent("unrelated", '0')
	r = build(NewMerged([]Layer{{lower, shortContent{}}, {upper, shortContent{}}}))
	checkListing(t, r,
		"ext reg 2 3",
		"keep reg 1 1<<32|4",
		"lower dir 2 2",
		"lower/file reg 2 3",
		"tree dir 2 5",
		"tree/a reg 1 6",
		"tree/b reg 1 1<<32|5",
		"unrelated reg 1 1<<32|3",
	)
	tree := r.v.inodes[rootIno].child("tree")
	if tree.n.e == nil || tree.n.e.Mode != 0o700 {
		t.Errorf("tree: a synthesized upper directory must keep the lower one's attributes")
	}
	// merged views never show whiteouts or the opaque marker
	if x, opaque := r.v.inodes[rootIno].xattrs(); opaque || len(x) != 0 {
		t.Errorf("merged root shows opaque")
	}
}

func TestMergedDanglingLink(t *testing.T) {
	var logs testutil.LogBuffer
	up := &format.Index{Entries: []format.Entry{ent("l", '1', link("nowhere"))}}
	r := build(NewMerged([]Layer{{up, shortContent{}}}, WithLogger(logs.Logger())))
	if got := listing(r); got != "" {
		t.Errorf("tree: %q", got)
	}
	if !strings.Contains(logs.String(), "hard link target not found") {
		t.Errorf("log: %s", logs.String())
	}
}

func TestOpaqueXattrList(t *testing.T) {
	ix := &format.Index{Entries: []format.Entry{
		ent("d/", '5', func(e *format.Entry) { e.Xattrs = []format.Xattr{{Name: "user.a", Value: "1"}} }),
		ent("d/.wh..wh..opq", '0'),
	}}
	r := build(NewLayer(ix, shortContent{}))
	d := r.v.inodes[rootIno].child("d")
	buf := make([]byte, 100)
	h := &fuse.InHeader{NodeId: d.ino}
	n, e := r.ListXAttr(nil, h, buf)
	if e != fuse.OK || !slices.Equal(strings.Split(string(buf[:n]), "\x00"), []string{"user.a", opaqueXattr, ""}) {
		t.Errorf("listxattr: %q %v", buf[:n], e)
	}
	n, e = r.GetXAttr(nil, h, opaqueXattr, buf)
	if e != fuse.OK || string(buf[:n]) != "y" {
		t.Errorf("getxattr opaque: %q %v", buf[:n], e)
	}
}
