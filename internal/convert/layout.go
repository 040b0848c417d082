package convert

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"lazypull/format"
	"lazypull/internal/profile"
)

// Layout by profile (Options.Profile). A layer's tar entries are reordered so that the
// files a profile names come first, in first-access order, and their content chunks lie
// next to each other at the start of the blob: a mount's prefetch of them is then a few
// large Range requests instead of many scattered ones. The rest follows in its original
// order. Entries are moved whole (headers, PAX records and padding byte for byte), so the
// reordered stream is a valid tar of the same entries; its diff ID is new, and the image
// config is rewritten with it.
//
// What an extractor needs of the order, and what the layout keeps:
//
//   - A hard link's target precedes it: only a file's content entry (a hard link's target,
//     never a link) is moved, and to the front, so whatever linked to it still follows.
//   - A path's parent directories precede it: extractors (containerd, Docker) create a
//     missing parent themselves, with default mode and owner, and fix it when the entry
//     comes; simpler ones fail. So a moved file takes its ancestor entries in this layer
//     with it, root first, and a file whose ancestor in this layer is not a directory (a
//     symlink: the path would resolve elsewhere) is not moved.
//   - Whiteouts apply to lower layers only, but an extractor that goes in order and deletes
//     what a whiteout names deletes what this layer put there if the whiteout comes later.
//     So the whiteout of a moved path or of its ancestors (.wh.NAME) moves just before it,
//     and an ancestor directory's opaque whiteout (.wh..wh..opq) just after the directory,
//     before anything in it, as Docker and the OCI spec's examples lay them out.
//   - A path that occurs twice in the layer (the last wins when unpacked) keeps its order:
//     a file so named, or under a directory so named, is not moved.
//
// Files the profile names that this layer lacks are not moved (profiles are matched by
// path, not by layer digest: a profile is recorded on a converted image, whose layer
// digests differ from the source's). A file in several layers moves in each.
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// tarEntry is one entry of a tar stream: its cleaned name, type, hard link target, and the
// bytes [start, end) it spans, headers and padding included.
type tarEntry struct {
	name, link string
	typ        byte
	start, end int64
}

// scanTar lists the entries of a tar stream of size bytes, with the byte span of each, and
// returns where the end-of-archive trailer starts. The spans and the trailer tile the
// stream, or scanTar fails. archive/tar reads exactly the blocks an entry needs, so once
// an entry's content is read, r's offset is where the content ends.
func scanTar(r io.ReadSeeker, size int64) ([]tarEntry, int64, error) {
	tr := tar.NewReader(r)
	var out []tarEntry
	var start int64
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, 0, fmt.Errorf("tar entry %d at %d: %w", len(out), start, err)
		}
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return nil, 0, fmt.Errorf("tar entry %q: %w", h.Name, err)
		}
		off, err := r.Seek(0, io.SeekCurrent)
		if err != nil {
			return nil, 0, fmt.Errorf("tar entry %q: %w", h.Name, err)
		}
		end := (off + 511) &^ 511 // the content's padding
		e := tarEntry{name: format.CleanName(h.Name), typ: h.Typeflag, start: start, end: end}
		if h.Typeflag == tar.TypeLink {
			e.link = format.CleanName(h.Linkname)
		}
		out = append(out, e)
		start = end
	}
	if start > size {
		return nil, 0, fmt.Errorf("tar entries end at %d, past the stream's %d bytes", start, size)
	}
	return out, start, nil
}

// layoutOrder returns the order in which to write the entries: the content entries of the
// profile's files first (with the entries they need before them, see above), in the
// profile's order, then every other entry in its original order; and how many files moved.
func layoutOrder(entries []tarEntry, p *profile.Profile) (order []int, moved int) {
	byName := make(map[string]int, len(entries))
	dup := map[string]bool{}
	for i, e := range entries {
		if _, ok := byName[e.name]; ok {
			dup[e.name] = true
		}
		byName[e.name] = i
	}
	lookup := func(n string) (int, bool) {
		i, ok := byName[n]
		return i, ok && !dup[n]
	}
	taken := make([]bool, len(entries))
	order = make([]int, 0, len(entries))
	seen := map[string]bool{}
	for _, f := range p.Files {
		if seen[f.Path] {
			continue
		}
		seen[f.Path] = true
		group, ok := layoutGroup(entries, f.Path, byName, dup, lookup)
		if !ok {
			continue
		}
		for _, i := range group {
			if !taken[i] {
				taken[i] = true
				order = append(order, i)
			}
		}
		moved++
	}
	for i := range entries {
		if !taken[i] {
			order = append(order, i)
		}
	}
	return order, moved
}

// layoutGroup returns the entries to move for the profiled path p, in the order to write
// them; false if p is not a regular file of this layer that can move.
func layoutGroup(entries []tarEntry, p string, byName map[string]int, dup map[string]bool, lookup func(string) (int, bool)) ([]int, bool) {
	if dup[p] {
		return nil, false
	}
	t, ok := lookup(p)
	if !ok {
		return nil, false
	}
	// The content entry: a hard link's target, followed within the layer.
	for range len(entries) {
		if entries[t].typ != tar.TypeLink {
			break
		}
		if t, ok = lookup(entries[t].link); !ok {
			return nil, false
		}
	}
	if entries[t].typ != tar.TypeReg { // the reader reports TypeRegA as TypeReg
		return nil, false // also a link loop, which ends on a link
	}
	target := entries[t].name
	var group []int
	add := func(n string) bool {
		if dup[n] {
			return false
		}
		if i, ok := byName[n]; ok {
			group = append(group, i)
		}
		return true
	}
	// The root, then each ancestor, then the file: its whiteout first, itself, and for a
	// directory its opaque whiteout.
	paths := []string{"."}
	if target != "." {
		parts := strings.Split(target, "/")
		for i := range parts {
			paths = append(paths, strings.Join(parts[:i+1], "/"))
		}
	}
	for _, n := range paths {
		if n != "." && !add(path.Join(path.Dir(n), whiteoutPrefix+path.Base(n))) {
			return nil, false
		}
		if n != target {
			if i, ok := byName[n]; ok && entries[i].typ != tar.TypeDir {
				return nil, false // not a directory: the path resolves elsewhere
			}
		}
		if !add(n) {
			return nil, false
		}
		if n != target && !add(path.Join(n, whiteoutOpaque)) {
			return nil, false
		}
	}
	return group, true
}

// sectionsReader reads the spans of r in the given order, then the trailer.
func sectionsReader(r io.ReaderAt, entries []tarEntry, order []int, trailer, size int64) io.Reader {
	rs := make([]io.Reader, 0, len(order)+1)
	for _, i := range order {
		e := entries[i]
		rs = append(rs, io.NewSectionReader(r, e.start, e.end-e.start))
	}
	rs = append(rs, io.NewSectionReader(r, trailer, size-trailer))
	return io.MultiReader(rs...)
}
