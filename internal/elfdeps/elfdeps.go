// Package elfdeps reads, from an ELF file's bytes, what the dynamic loader will load
// with it: the program interpreter, the shared libraries it names (DT_NEEDED), where it
// says to look for them (DT_RUNPATH, DT_RPATH), and the file ranges it maps (PT_LOAD).
//
// The bytes are an image's, so hostile: every read is bounded (Limits), every offset
// checked against the file's size, and a file that is not a dynamic ELF executable or
// shared object is an error, never a panic. debug/elf is not used: it is not meant for
// adversarial input and reads whole sections where a few entries are wanted.
package elfdeps

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Bounds on what Read reads. Real files are far inside them: a program header table of
// 10-14 entries, a dynamic section of a few hundred entries, 5-30 needed libraries.
const (
	maxPhnum   = 128
	maxDynamic = 64 << 10 // bytes of the dynamic segment read
	maxNeeded  = 256
	maxName    = 255 // a library name (NAME_MAX)
	maxPath    = 4096
	maxRunPath = 32 // directories of DT_RUNPATH / DT_RPATH
)

// ErrNotELF is returned for bytes that are not an ELF file Read understands.
var ErrNotELF = errors.New("not an ELF executable or shared object")

// Load is one loadable segment's bytes in the file.
type Load struct {
	Off, Size int64 // file range (p_offset, p_filesz)
	Exec      bool  // PF_X
	Write     bool  // PF_W
}

// File is what Read found.
type File struct {
	Machine elf.Machine
	Class   elf.Class
	// Interp is the program interpreter's path (PT_INTERP), "" if none.
	Interp string
	// Needed are the DT_NEEDED names, in order; names holding a '/' (paths, which the
	// loader takes as they are) are kept, the caller decides.
	Needed []string
	// RunPath holds the directories of DT_RUNPATH, or of DT_RPATH when there is no
	// DT_RUNPATH, as written ($ORIGIN unexpanded).
	RunPath []string
	// Loads are the PT_LOAD segments, in file order of their headers.
	Loads []Load
	// Dynamic is the dynamic segment's range (at most its first 64 KiB), zero if none.
	Dynamic Load

	size int64
	bo   binary.ByteOrder

	addrs []mapped // the PT_LOAD segments' addresses, for fileOffset
}

// mapped is a loadable segment's address and its bytes in the file.
type mapped struct {
	vaddr     uint64
	off, size int64
}

// IsELF says whether b starts with the ELF magic.
func IsELF(b []byte) bool { return len(b) >= 4 && string(b[:4]) == elf.ELFMAG }

// IsProgram says whether b, a file's first bytes, is the start of an ELF executable or
// shared object (what ReadProgram reads), not an object file or a core dump.
func IsProgram(b []byte) bool {
	if !IsELF(b) || len(b) < 18 {
		return false
	}
	var t elf.Type
	switch elf.Data(b[elf.EI_DATA]) {
	case elf.ELFDATA2LSB:
		t = elf.Type(binary.LittleEndian.Uint16(b[16:]))
	case elf.ELFDATA2MSB:
		t = elf.Type(binary.BigEndian.Uint16(b[16:]))
	}
	return t == elf.ET_EXEC || t == elf.ET_DYN
}

// reader reads bounded pieces of the file.
type reader struct {
	r    io.ReaderAt
	size int64
	bo   binary.ByteOrder
	is64 bool
}

func (rd *reader) read(off, n int64, what string) ([]byte, error) {
	if off < 0 || n < 0 || off > rd.size || n > rd.size-off {
		return nil, fmt.Errorf("elf: %s at %d+%d outside the file of %d bytes", what, off, n, rd.size)
	}
	b := make([]byte, n)
	if _, err := rd.r.ReadAt(b, off); err != nil && !(errors.Is(err, io.EOF) && n == 0) {
		return nil, fmt.Errorf("elf: read %s at %d+%d: %w", what, off, n, err)
	}
	return b, nil
}

// word reads a natural-size word (4 or 8 bytes) at b[i:].
func (rd *reader) word(b []byte, i int) uint64 {
	if rd.is64 {
		return rd.bo.Uint64(b[i:])
	}
	return uint64(rd.bo.Uint32(b[i:]))
}

// Read reads f's interpreter, needed libraries, run path and loadable segments from r, a
// file of size bytes: ReadProgram, then ReadDynamic. A file without a dynamic segment
// (static) has no Needed.
func Read(r io.ReaderAt, size int64) (*File, error) {
	f, err := ReadProgram(r, size)
	if err != nil {
		return nil, err
	}
	if err := f.ReadDynamic(r); err != nil {
		return nil, err
	}
	return f, nil
}

// ReadProgram reads the file header and program headers of r, a file of size bytes:
// Loads, Interp and Dynamic, not yet what the dynamic segment says (ReadDynamic). Those
// are at the start of a file; the dynamic segment is usually near its end.
func ReadProgram(r io.ReaderAt, size int64) (*File, error) {
	rd := &reader{r: r, size: size}
	id, err := rd.read(0, elf.EI_NIDENT, "identification")
	if err != nil || !IsELF(id) {
		return nil, ErrNotELF
	}
	f := &File{Class: elf.Class(id[elf.EI_CLASS]), size: size}
	switch elf.Data(id[elf.EI_DATA]) {
	case elf.ELFDATA2LSB:
		f.bo = binary.LittleEndian
	case elf.ELFDATA2MSB:
		f.bo = binary.BigEndian
	default:
		return nil, fmt.Errorf("%w: byte order %d", ErrNotELF, id[elf.EI_DATA])
	}
	rd.bo = f.bo
	var ehsize, phentsize int64
	switch f.Class {
	case elf.ELFCLASS64:
		rd.is64, ehsize, phentsize = true, 64, 56
	case elf.ELFCLASS32:
		ehsize, phentsize = 52, 32
	default:
		return nil, fmt.Errorf("%w: class %d", ErrNotELF, id[elf.EI_CLASS])
	}
	eh, err := rd.read(0, ehsize, "header")
	if err != nil {
		return nil, err
	}
	typ := elf.Type(rd.bo.Uint16(eh[16:]))
	if typ != elf.ET_EXEC && typ != elf.ET_DYN {
		return nil, fmt.Errorf("%w: type %s", ErrNotELF, typ)
	}
	f.Machine = elf.Machine(rd.bo.Uint16(eh[18:]))
	var phoff int64
	var phent, phnum int
	if rd.is64 {
		phoff = int64(rd.bo.Uint64(eh[32:]))
		phent, phnum = int(rd.bo.Uint16(eh[54:])), int(rd.bo.Uint16(eh[56:]))
	} else {
		phoff = int64(rd.bo.Uint32(eh[28:]))
		phent, phnum = int(rd.bo.Uint16(eh[42:])), int(rd.bo.Uint16(eh[44:]))
	}
	if int64(phent) != phentsize || phnum == 0 || phnum > maxPhnum {
		return nil, fmt.Errorf("elf: program headers: %d of %d bytes (want 1-%d of %d)", phnum, phent, maxPhnum, phentsize)
	}
	ph, err := rd.read(phoff, int64(phnum)*phentsize, "program headers")
	if err != nil {
		return nil, err
	}
	if err := f.programHeaders(rd, ph, phnum, phentsize); err != nil {
		return nil, err
	}
	return f, nil
}

// ReadDynamic reads, from r (the file ReadProgram read), what the dynamic segment says:
// Needed and RunPath. A file without one has none.
func (f *File) ReadDynamic(r io.ReaderAt) error {
	if f.Dynamic.Size == 0 {
		return nil
	}
	return f.dynamic(&reader{r: r, size: f.size, bo: f.bo, is64: f.Class == elf.ELFCLASS64}, f.Dynamic)
}

// programHeaders fills f.Loads, f.Interp and f.Dynamic.
func (f *File) programHeaders(rd *reader, ph []byte, phnum int, phentsize int64) error {
	for i := range phnum {
		h := ph[int64(i)*phentsize:]
		typ := elf.ProgType(rd.bo.Uint32(h))
		var flags elf.ProgFlag
		var off, vaddr, filesz uint64
		if rd.is64 {
			flags = elf.ProgFlag(rd.bo.Uint32(h[4:]))
			off, vaddr, filesz = rd.bo.Uint64(h[8:]), rd.bo.Uint64(h[16:]), rd.bo.Uint64(h[32:])
		} else {
			off, vaddr, filesz = uint64(rd.bo.Uint32(h[4:])), uint64(rd.bo.Uint32(h[8:])), uint64(rd.bo.Uint32(h[16:]))
			flags = elf.ProgFlag(rd.bo.Uint32(h[24:]))
		}
		if off > uint64(rd.size) || filesz > uint64(rd.size)-off {
			return fmt.Errorf("elf: program header %d (%s): %d+%d outside the file of %d bytes", i, typ, off, filesz, rd.size)
		}
		seg := Load{Off: int64(off), Size: int64(filesz), Exec: flags&elf.PF_X != 0, Write: flags&elf.PF_W != 0}
		switch typ {
		case elf.PT_LOAD:
			f.Loads = append(f.Loads, seg)
			f.addrs = append(f.addrs, mapped{vaddr: vaddr, off: seg.Off, size: seg.Size})
		case elf.PT_INTERP:
			if seg.Size > maxPath {
				return fmt.Errorf("elf: interpreter path of %d bytes (at most %d)", seg.Size, maxPath)
			}
			b, err := rd.read(seg.Off, seg.Size, "interpreter")
			if err != nil {
				return err
			}
			f.Interp, _, _ = strings.Cut(string(b), "\x00")
		case elf.PT_DYNAMIC:
			f.Dynamic = seg
			f.Dynamic.Size = min(f.Dynamic.Size, maxDynamic)
		}
	}
	return nil
}

// dynamic reads the dynamic segment: DT_NEEDED, DT_RUNPATH and DT_RPATH, whose strings
// are in the string table DT_STRTAB names by address.
func (f *File) dynamic(rd *reader, seg Load) error {
	b, err := rd.read(seg.Off, seg.Size, "dynamic segment")
	if err != nil {
		return err
	}
	ent := 8
	if rd.is64 {
		ent = 16
	}
	var (
		strtab, strsz      uint64
		needed             []uint64
		runpath, rpath     uint64
		hasRunpath, hasRpa bool
	)
	for i := 0; i+ent <= len(b); i += ent {
		tag, val := elf.DynTag(rd.word(b, i)), rd.word(b, i+ent/2)
		switch tag {
		case elf.DT_NULL:
			i = len(b)
		case elf.DT_NEEDED:
			if len(needed) < maxNeeded {
				needed = append(needed, val)
			}
		case elf.DT_STRTAB:
			strtab = val
		case elf.DT_STRSZ:
			strsz = val
		case elf.DT_RUNPATH:
			runpath, hasRunpath = val, true
		case elf.DT_RPATH:
			rpath, hasRpa = val, true
		}
	}
	if len(needed) == 0 && !hasRunpath && !hasRpa {
		return nil
	}
	off, ok := f.fileOffset(strtab)
	if !ok {
		return fmt.Errorf("elf: string table at address %#x is in no loadable segment", strtab)
	}
	st := &strtabReader{rd: rd, off: off, size: strsz}
	for _, n := range needed {
		name, err := st.at(n, maxName)
		if err != nil {
			return fmt.Errorf("elf: needed library: %w", err)
		}
		if name != "" {
			f.Needed = append(f.Needed, name)
		}
	}
	rp, has := runpath, hasRunpath
	if !has {
		rp, has = rpath, hasRpa
	}
	if has {
		s, err := st.at(rp, maxPath)
		if err != nil {
			return fmt.Errorf("elf: run path: %w", err)
		}
		for d := range strings.SplitSeq(s, ":") {
			if d != "" && len(f.RunPath) < maxRunPath {
				f.RunPath = append(f.RunPath, d)
			}
		}
	}
	return nil
}

// fileOffset maps a virtual address to its file offset through the PT_LOAD segments.
func (f *File) fileOffset(addr uint64) (int64, bool) {
	for _, m := range f.addrs {
		if addr >= m.vaddr && addr-m.vaddr < uint64(m.size) {
			return m.off + int64(addr-m.vaddr), true
		}
	}
	return 0, false
}

// strtabReader reads NUL-terminated strings of a string table.
type strtabReader struct {
	rd   *reader
	off  int64
	size uint64
}

// at returns the string at offset i of the table, of at most max bytes.
func (st *strtabReader) at(i uint64, max int) (string, error) {
	if i >= st.size {
		return "", fmt.Errorf("string at %d outside the table of %d bytes", i, st.size)
	}
	n := min(uint64(max)+1, st.size-i)
	start := st.off + int64(i)
	if start > st.rd.size {
		return "", fmt.Errorf("string at %d outside the file", start)
	}
	n = min(n, uint64(st.rd.size-start))
	b, err := st.rd.read(start, int64(n), "string")
	if err != nil {
		return "", err
	}
	s, _, found := bytes.Cut(b, []byte{0})
	if !found {
		return "", fmt.Errorf("string at %d: no end within %d bytes", i, max)
	}
	return string(s), nil
}
