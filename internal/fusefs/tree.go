package fusefs

import (
	"fmt"
	"log/slog"
	"strings"
	"syscall"

	"lazypull/format"
)

// The tree of a view is built from the index before anything is mounted, as plain nodes;
// newRoot then turns it into the inodes it serves. Layer trees keep whiteouts and opaque markers;
// merging consumes them.

type kind uint8

const (
	kindDir kind = iota
	kindReg
	kindSymlink
	kindChar
	kindBlock
	kindFifo
	// kindWhiteout is a .wh.NAME entry: NAME is hidden in lower layers. A layer view shows
	// it as a character device 0:0, the way overlayfs marks whiteouts.
	kindWhiteout
)

const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	whiteoutOpaque = ".wh..wh..opq"

	// opaqueXattr marks an opaque directory for overlayfs.
	opaqueXattr = "trusted.overlay.opaque"
)

// fileType returns the S_IFMT bits of a kind, as a layer view shows it.
func (k kind) fileType() uint32 {
	switch k {
	case kindDir:
		return syscall.S_IFDIR
	case kindReg:
		return syscall.S_IFREG
	case kindSymlink:
		return syscall.S_IFLNK
	case kindChar, kindWhiteout:
		return syscall.S_IFCHR
	case kindBlock:
		return syscall.S_IFBLK
	case kindFifo:
		return syscall.S_IFIFO
	}
	panic(fmt.Sprintf("fusefs: kind %d", k))
}

func kindOf(typ byte) (kind, bool) {
	switch typ {
	case '0':
		return kindReg, true
	case '2':
		return kindSymlink, true
	case '3':
		return kindChar, true
	case '4':
		return kindBlock, true
	case '5':
		return kindDir, true
	case '6':
		return kindFifo, true
	}
	return 0, false
}

// node is one inode of a view. Hard links are one node under several names.
type node struct {
	kind kind
	// e holds the node's metadata and, for a regular file, names its content. It is nil for
	// a synthesized directory.
	e *format.Entry
	// layer is the index of the layer e comes from (its Content serves e), ino the node's
	// inode number within that layer.
	layer int
	ino   uint64
	// children of a directory, by name.
	children map[string]*node
	// opaque: a directory that hides the children of the same directory in lower layers.
	opaque bool
}

func newDir(e *format.Entry, layer int, ino uint64) *node {
	return &node{kind: kindDir, e: e, layer: layer, ino: ino, children: map[string]*node{}}
}

// crossLink is a hard link whose target is not in its own layer.
type crossLink struct {
	dir    []string // parent directory, as path elements
	name   string
	target string // cleaned name of the target
	e      *format.Entry
}

// layerTree is the tree of one layer.
type layerTree struct {
	root       *node
	crossLinks []crossLink
	maxIno     uint64 // the largest inode number in the tree
}

// rootIno is the inode number of the root of every view (FUSE_ROOT_ID).
const rootIno = 1

// buildLayer builds the tree of a layer from its index, in tar order.
func buildLayer(ix *format.Index, layer int, log *slog.Logger) *layerTree {
	b := layerBuilder{ix: ix, layer: layer, log: log, nextSynth: uint64(len(ix.Entries)) + 2}
	b.t.root = newDir(nil, layer, rootIno)
	for i := range ix.Entries {
		b.add(i, &ix.Entries[i])
	}
	b.t.maxIno = b.nextSynth - 1
	return &b.t
}

type layerBuilder struct {
	ix        *format.Index
	layer     int
	log       *slog.Logger
	t         layerTree
	nextSynth uint64
}

// split returns the elements of a cleaned, confined name ("." is the root: no elements).
func split(name string) []string {
	if name == "." || name == "" {
		return nil
	}
	return strings.Split(name, "/")
}

func (b *layerBuilder) add(i int, e *format.Entry) {
	ino := uint64(i) + 2
	elems := split(e.Name)
	if len(elems) == 0 {
		if e.Type == '5' {
			b.t.root.e = e
		} else {
			b.log.Warn("fusefs: layer root entry is not a directory; ignored", "layer", b.layer, "type", string(e.Type))
		}
		return
	}
	parent := b.mkdirs(elems[:len(elems)-1])
	base := elems[len(elems)-1]

	if strings.HasPrefix(base, whiteoutPrefix) {
		switch {
		case base == whiteoutOpaque:
			parent.opaque = true
		case strings.HasPrefix(base, whiteoutMeta), base == whiteoutPrefix:
			// aufs bookkeeping (.wh..wh.plnk and the like), or nothing to hide
		default:
			name := base[len(whiteoutPrefix):]
			if old := parent.children[name]; old != nil && old.kind != kindWhiteout {
				// The layer has NAME too: it stays, and hides everything below it.
				if old.kind == kindDir {
					old.opaque = true
				}
				return
			}
			parent.children[name] = &node{kind: kindWhiteout, e: e, layer: b.layer, ino: ino}
		}
		return
	}

	if e.Type == '1' {
		t := b.lookup(split(e.Linkname))
		if t == nil || t.kind == kindDir || t.kind == kindWhiteout {
			b.t.crossLinks = append(b.t.crossLinks, crossLink{dir: elems[:len(elems)-1], name: base, target: e.Linkname, e: e})
			return
		}
		insert(parent, base, t)
		return
	}

	k, ok := kindOf(e.Type)
	if !ok {
		b.log.Warn("fusefs: entry of unknown type ignored", "layer", b.layer, "name", e.Name, "type", string(e.Type))
		return
	}
	n := &node{kind: k, e: e, layer: b.layer, ino: ino}
	if k == kindDir {
		n.children = map[string]*node{}
	}
	insert(parent, base, n)
}

// insert puts n in dir under name, replacing what is there as a later tar entry does.
func insert(dir *node, name string, n *node) {
	old := dir.children[name]
	if old != nil {
		if old.kind == kindDir && n.kind == kindDir {
			old.e = n.e // the later attributes; the children stay
			return
		}
		if old.kind == kindWhiteout && n.kind == kindDir {
			n.opaque = true
		}
	}
	dir.children[name] = n
}

// mkdirs returns the directory at elems, synthesizing missing ones. A non-directory in the
// way is replaced (names are literal: symlinks are not followed).
func (b *layerBuilder) mkdirs(elems []string) *node {
	d := b.t.root
	for _, el := range elems {
		c := d.children[el]
		if c == nil || c.kind != kindDir {
			n := newDir(nil, b.layer, b.nextSynth)
			b.nextSynth++
			if c != nil && c.kind == kindWhiteout {
				n.opaque = true
			}
			d.children[el] = n
			c = n
		}
		d = c
	}
	return d
}

func (b *layerBuilder) lookup(elems []string) *node {
	return lookup(b.t.root, elems)
}

func lookup(root *node, elems []string) *node {
	n := root
	for _, el := range elems {
		if n.kind != kindDir {
			return nil
		}
		n = n.children[el]
		if n == nil {
			return nil
		}
	}
	return n
}

// mergeLayers applies layer trees, lowest first, onto a fresh tree. The result shares the
// layers' non-directory nodes; its directories are its own.
func mergeLayers(trees []*layerTree, log *slog.Logger) *node {
	root := newDir(nil, 0, rootIno)
	for li, t := range trees {
		// Hard links into lower layers resolve against what the lower layers made.
		type resolved struct {
			cl crossLink
			t  *node
		}
		var links []resolved
		for _, cl := range t.crossLinks {
			n := lookup(root, split(cl.target))
			if n == nil || n.kind == kindDir {
				log.Warn("fusefs: hard link target not found; link left out", "layer", li, "name", cl.e.Name, "target", cl.target)
				continue
			}
			links = append(links, resolved{cl, n})
		}
		apply(root, t.root)
		for _, l := range links {
			d := lookup(root, l.cl.dir)
			if d == nil || d.kind != kindDir {
				continue
			}
			d.children[l.cl.name] = l.t
		}
	}
	return root
}

// apply lays the layer directory src over the merged directory dst.
func apply(dst, src *node) {
	if src.e != nil {
		dst.e, dst.layer, dst.ino = src.e, src.layer, src.ino
	}
	if src.opaque {
		clear(dst.children)
	}
	for name, c := range src.children {
		switch c.kind {
		case kindWhiteout:
			delete(dst.children, name)
		case kindDir:
			d := dst.children[name]
			if d == nil || d.kind != kindDir {
				d = newDir(nil, c.layer, c.ino)
				dst.children[name] = d
			}
			apply(d, c)
		default:
			dst.children[name] = c
		}
	}
}
