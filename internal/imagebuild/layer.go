package imagebuild

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Whiteout names as the OCI image spec and Docker define them.
const (
	WhiteoutPrefix = ".wh."
	WhiteoutOpaque = ".wh..wh..opq"
)

const (
	overlayXattrPrefix = "trusted.overlay."
	overlayOpaque      = "trusted.overlay.opaque"
	paxSchilyXattr     = "SCHILY.xattr."
)

// LayerOptions says how WriteLayer reads a layer directory.
type LayerOptions struct {
	// Overlay marks dir as an overlayfs upper directory: its whiteouts (character devices 0:0)
	// become ".wh.NAME" entries and its opaque directories (xattr trusted.overlay.opaque=y) get a
	// ".wh..wh..opq" entry. Without it, dir is a plain root filesystem.
	Overlay bool
}

// WriteLayer writes the contents of dir as an uncompressed layer tar to w, the way Docker
// writes layers: names relative to dir without a leading "./" ("usr/bin/x", directories with a
// trailing slash), each directory before its children in byte-sorted order, numeric owners
// only, mtimes truncated to seconds, PAX headers only where USTAR can't hold an entry, extended
// attributes (except trusted.overlay.*), hardlinks within dir as a single regular entry plus
// TypeLink entries, devices, fifos and symlinks. Sockets are skipped. The root of dir itself
// is not written. The output depends only on the contents of dir.
func WriteLayer(w io.Writer, dir string, opts LayerOptions) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("layer %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("layer %s: not a directory", dir)
	}
	lw := &layerWriter{
		tw:    tar.NewWriter(w),
		root:  dir,
		opts:  opts,
		links: map[inode]string{},
		buf:   make([]byte, 1<<20),
	}
	if err := lw.walkDir(dir, ""); err != nil {
		return fmt.Errorf("layer %s: %w", dir, err)
	}
	if err := lw.tw.Close(); err != nil {
		return fmt.Errorf("layer %s: finish tar: %w", dir, err)
	}
	return nil
}

type inode struct {
	dev, ino uint64
}

type layerWriter struct {
	tw    *tar.Writer
	root  string
	opts  LayerOptions
	links map[inode]string // first tar name written for each multiply-linked inode
	buf   []byte
}

// walkDir writes the entries of the directory at abs (tar name prefix rel, "" for the root)
// in sorted order, recursing into subdirectories.
func (lw *layerWriter) walkDir(abs, rel string) error {
	names, err := readDirNames(abs)
	if err != nil {
		return err
	}
	for _, name := range names {
		childAbs := filepath.Join(abs, name)
		childRel := path.Join(rel, name)
		isDir, err := lw.writeEntry(childAbs, childRel)
		if err != nil {
			return err
		}
		if isDir {
			if err := lw.walkDir(childAbs, childRel); err != nil {
				return err
			}
		}
	}
	return nil
}

func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open dir: %w", err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("read dir %s: %w", dir, err)
	}
	slices.Sort(names)
	return names, nil
}

// writeEntry writes the tar entry (or entries) for one file and reports whether it is a
// directory to descend into.
func (lw *layerWriter) writeEntry(abs, rel string) (bool, error) {
	var st unix.Stat_t
	if err := unix.Lstat(abs, &st); err != nil {
		return false, fmt.Errorf("lstat %s: %w", abs, err)
	}
	hdr := &tar.Header{
		Name:    rel,
		Mode:    int64(st.Mode & 0o7777),
		Uid:     int(st.Uid),
		Gid:     int(st.Gid),
		ModTime: time.Unix(st.Mtim.Unix()).Truncate(time.Second),
		Format:  tar.FormatPAX, // USTAR where it fits, PAX records only where needed
	}
	mode := st.Mode & unix.S_IFMT

	if lw.opts.Overlay && mode == unix.S_IFCHR && st.Rdev == 0 {
		// An overlayfs whiteout. Checked before hardlinks: overlayfs shares one whiteout inode
		// between many names.
		dir, base := path.Split(rel)
		hdr.Name = dir + WhiteoutPrefix + base
		hdr.Typeflag = tar.TypeReg
		hdr.Mode = 0o600
		return false, lw.writeHeader(hdr)
	}

	xattrs, err := addXattrs(abs, hdr)
	if err != nil {
		return false, err
	}

	switch mode {
	case unix.S_IFDIR:
		return true, lw.writeDir(hdr, rel, xattrs[overlayOpaque] == "y")
	case unix.S_IFLNK:
		target, err := os.Readlink(abs)
		if err != nil {
			return false, fmt.Errorf("readlink %s: %w", abs, err)
		}
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = target
		return false, lw.writeHeader(hdr)
	case unix.S_IFSOCK:
		return false, nil // tar can't hold sockets; Docker skips them too
	}

	// Everything else can be hardlinked.
	if st.Nlink > 1 {
		key := inode{dev: uint64(st.Dev), ino: st.Ino}
		if first, ok := lw.links[key]; ok {
			hdr.Typeflag = tar.TypeLink
			hdr.Linkname = first
			return false, lw.writeHeader(hdr)
		}
		lw.links[key] = rel
	}
	switch mode {
	case unix.S_IFREG:
		hdr.Typeflag = tar.TypeReg
		hdr.Size = st.Size
		if err := lw.writeHeader(hdr); err != nil {
			return false, err
		}
		return false, lw.copyFile(abs, st.Size)
	case unix.S_IFCHR, unix.S_IFBLK:
		hdr.Typeflag = tar.TypeChar
		if mode == unix.S_IFBLK {
			hdr.Typeflag = tar.TypeBlock
		}
		hdr.Devmajor = int64(unix.Major(uint64(st.Rdev)))
		hdr.Devminor = int64(unix.Minor(uint64(st.Rdev)))
		return false, lw.writeHeader(hdr)
	case unix.S_IFIFO:
		hdr.Typeflag = tar.TypeFifo
		return false, lw.writeHeader(hdr)
	default:
		return false, fmt.Errorf("%s: unsupported file type %#o", abs, mode)
	}
}

// addXattrs reads abs's xattrs and records them in hdr, all but overlayfs's own, which it
// returns with the rest for the caller to act on.
func addXattrs(abs string, hdr *tar.Header) (map[string]string, error) {
	xattrs, err := readXattrs(abs)
	if err != nil {
		return nil, err
	}
	if err := checkOverlayXattrs(abs, xattrs); err != nil {
		return nil, err
	}
	for _, name := range slices.Sorted(maps.Keys(xattrs)) {
		if strings.HasPrefix(name, overlayXattrPrefix) {
			continue
		}
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = map[string]string{}
		}
		hdr.PAXRecords[paxSchilyXattr+name] = xattrs[name]
	}
	return xattrs, nil
}

// writeDir writes a directory's header, and in an overlay upper directory an opaque one's
// whiteout after it.
func (lw *layerWriter) writeDir(hdr *tar.Header, rel string, opaque bool) error {
	hdr.Typeflag = tar.TypeDir
	hdr.Name += "/"
	if err := lw.writeHeader(hdr); err != nil {
		return err
	}
	if !lw.opts.Overlay || !opaque {
		return nil
	}
	return lw.writeHeader(&tar.Header{
		Typeflag: tar.TypeReg,
		Name:     rel + "/" + WhiteoutOpaque,
		Mode:     hdr.Mode & 0o777,
		Uid:      hdr.Uid,
		Gid:      hdr.Gid,
		ModTime:  hdr.ModTime,
		Format:   tar.FormatPAX,
	})
}

func (lw *layerWriter) writeHeader(hdr *tar.Header) error {
	if err := lw.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("write tar header %s: %w", hdr.Name, err)
	}
	return nil
}

func (lw *layerWriter) copyFile(abs string, size int64) error {
	f, err := os.Open(abs)
	if err != nil {
		return fmt.Errorf("open %s: %w", abs, err)
	}
	defer f.Close()
	n, err := io.CopyBuffer(lw.tw, io.LimitReader(f, size), lw.buf)
	if err != nil {
		return fmt.Errorf("copy %s: %w", abs, err)
	}
	if n != size {
		return fmt.Errorf("copy %s: file shrank while reading (%d of %d bytes)", abs, n, size)
	}
	return nil
}

// checkOverlayXattrs rejects overlayfs upper-dir features that make a file depend on the lower
// layers in ways a tar layer can't express.
func checkOverlayXattrs(abs string, xattrs map[string]string) error {
	for _, name := range []string{"trusted.overlay.redirect", "trusted.overlay.metacopy"} {
		if _, ok := xattrs[name]; ok {
			return fmt.Errorf("%s: has %s; mount the overlay with redirect_dir=off,metacopy=off", abs, name)
		}
	}
	return nil
}

// readXattrs returns the extended attributes of the file at p (not following symlinks).
func readXattrs(p string) (map[string]string, error) {
	size, err := unix.Llistxattr(p, nil)
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		return nil, fmt.Errorf("listxattr %s: %w", p, err)
	}
	if size == 0 {
		return nil, nil
	}
	list := make([]byte, size)
	for {
		n, err := unix.Llistxattr(p, list)
		if errors.Is(err, unix.ERANGE) {
			list = make([]byte, len(list)*2)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("listxattr %s: %w", p, err)
		}
		list = list[:n]
		break
	}
	out := map[string]string{}
	for _, name := range strings.Split(strings.TrimRight(string(list), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		val, err := getXattr(p, name)
		if errors.Is(err, unix.ENODATA) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("getxattr %s %s: %w", p, name, err)
		}
		out[name] = val
	}
	return out, nil
}

func getXattr(p, name string) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Lgetxattr(p, name, buf)
		if errors.Is(err, unix.ERANGE) {
			size, err := unix.Lgetxattr(p, name, nil)
			if err != nil {
				return "", err
			}
			buf = make([]byte, size+1)
			continue
		}
		if err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
}
