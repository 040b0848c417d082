package daemon

import (
	"io"
	"path"
	"strings"
	"sync"

	"lazypull/format"
	"lazypull/internal/elfdeps"
)

// Programs' helpers. A program the image's command runs may itself run others that no
// dynamic segment names: a compiler driver runs its compiler proper, assembler wrapper
// and linker wrapper (gcc: cc1, collect2), one after the other, each a chain of misses
// that starts only when the one before it ends (gcc's 12 MB of cc1 left 0.45 s after the
// start, once the driver had run). Such a program names its helpers in its strings, by
// their base name, and the directory it finds them in (gcc: "cc1" and "/usr/lib/gcc/").
// So the strings of the read-only data of a program the command names are read, as the
// walk fetches them anyway, and an executable file of the image whose base name is one of
// those strings, under a directory another of them names, is walked too: at most
// helperMax per program. The program's own directories (the PATH's) and the system's
// library directories are no evidence: a word such as "file" or "copy" names programs
// there that an interpreter never runs.
const (
	// helperMax bounds the helpers walked for one program.
	helperMax = 8
	// helperScanMax bounds the bytes of a program's read-only segments read for strings.
	helperScanMax = 8 << 20
	// helperStrings bounds the strings kept of one program.
	helperStrings = 1 << 17
	// helperExecs bounds the executable files of an image indexed by base name.
	helperExecs = 1 << 16
)

// helperIndex is the image's executable regular files by base name, outside the PATH
// (built on first use).
type helperIndex struct {
	once  sync.Once
	names map[string][]string // base name -> paths, "/"-rooted
}

// helpers finds, from the strings of the program ef (read from r), the image's
// executables it names (see above), as targets one level below depth.
func (im *Image) helpers(r io.ReaderAt, ef *elfdeps.File, depth int, pathDirs []string) []elfTarget {
	names, dirs := programStrings(r, ef)
	if len(names) == 0 || len(dirs) == 0 {
		return nil
	}
	execs := im.execsByName(pathDirs)
	var out []elfTarget
	for name := range names {
		for _, p := range execs[name] {
			if !underAny(path.Dir(p), dirs) {
				continue
			}
			if t, ok := im.findFile(p); ok {
				t.depth = depth + 1
				out = append(out, t)
				if len(out) == helperMax {
					return out
				}
			}
		}
	}
	return out
}

// programStrings returns the NUL-terminated strings of printable bytes without spaces in
// ef's read-only segments (up to helperScanMax bytes, helperStrings strings): those
// without a slash as names, the absolute ones that may be a program's own directory as
// dirs (cleaned; see systemDir).
func programStrings(r io.ReaderAt, ef *elfdeps.File) (names, dirs map[string]bool) {
	names, dirs = map[string]bool{}, map[string]bool{}
	left := int64(helperScanMax)
	buf := make([]byte, 1<<20)
	var cur []byte
	flush := func() {
		if len(cur) >= 2 && len(cur) <= 255 && len(names)+len(dirs) < helperStrings {
			s := string(cur)
			switch {
			case !strings.Contains(s, "/"):
				names[s] = true
			case strings.HasPrefix(s, "/"):
				if d := path.Clean(s); !systemDir(d) {
					dirs[d] = true
				}
			}
		}
		cur = cur[:0]
	}
	for _, ld := range ef.Loads {
		if ld.Exec || ld.Write {
			continue
		}
		for off := ld.Off; off < ld.Off+ld.Size && left > 0; {
			n := min(int64(len(buf)), ld.Off+ld.Size-off, left)
			got, err := r.ReadAt(buf[:n], off)
			for _, c := range buf[:got] {
				switch {
				case c == 0:
					flush()
				case c > ' ' && c < 0x7f:
					if len(cur) <= 255 {
						cur = append(cur, c)
					}
				default:
					cur = cur[:0]
				}
			}
			if err != nil && got < int(n) {
				return names, dirs
			}
			off += int64(got)
			left -= int64(got)
		}
		cur = cur[:0]
	}
	return names, dirs
}

// systemDir: a directory that holds the programs or libraries of every package (or an
// ancestor of them), so no evidence of a program's own helpers.
func systemDir(d string) bool {
	if strings.Count(d, "/") < 3 {
		return true // /, /usr, /usr/lib, /usr/bin, /opt/x ...
	}
	dir, base := path.Split(d)
	switch strings.TrimSuffix(dir, "/") {
	case "/usr/lib", "/usr/local/lib", "/usr/lib64", "/usr/libexec":
		return strings.Contains(base, "-linux-")
	}
	return false
}

// underAny says whether dir is one of dirs or below one.
func underAny(dir string, dirs map[string]bool) bool {
	for d := dir; ; d = path.Dir(d) {
		if dirs[d] {
			return true
		}
		if d == "/" || d == "." {
			return false
		}
	}
}

// execsByName returns the image's executable regular files by base name, those in the
// directories pathDirs (the PATH's) left out; at most helperExecs.
func (im *Image) execsByName(pathDirs []string) map[string][]string {
	h := &im.helperIx
	h.once.Do(func() {
		skip := map[string]bool{}
		for _, d := range pathDirs {
			skip[d] = true
		}
		h.names = map[string][]string{}
		n := 0
		for _, ix := range im.indexes() {
			for i := range ix.Entries {
				e := &ix.Entries[i]
				if !e.IsRegular() || e.Mode&0o111 == 0 || e.Size == 0 {
					continue
				}
				p := "/" + e.Name
				if skip[path.Dir(p)] || n >= helperExecs {
					continue
				}
				b := path.Base(p)
				h.names[b] = append(h.names[b], p)
				n++
			}
		}
	})
	return h.names
}

// indexes are the indexes of the layers the image serves, lowest first.
func (im *Image) indexes() []*format.Index {
	var out []*format.Index
	for _, l := range im.Layers {
		if l != nil {
			out = append(out, l.Index)
		}
	}
	for _, l := range im.indexed {
		if l != nil {
			out = append(out, l.Index)
		}
	}
	return out
}
