// Package elftest builds ELF files for tests: a shared object whose interpreter, needed
// libraries and run path are what a test says (internal/elfdeps reads them).
package elftest

import (
	"debug/elf"
	"encoding/binary"
)

// Spec describes a synthetic ELF shared object (Build).
type Spec struct {
	Is64    bool
	BO      binary.ByteOrder // byte order; nil is little-endian
	Interp  string           // PT_INTERP, "" for none
	Needed  []string         // DT_NEEDED, in order
	RunPath string           // DT_RUNPATH, "" for none
	RPath   bool             // RunPath goes in DT_RPATH instead
	// Strings, when any, are laid out NUL-terminated after the dynamic section, in a
	// read-only loadable segment of their own (a program's .rodata).
	Strings []string
}

// Build lays out an ELF shared object for x86-64: header, program headers (PT_INTERP,
// PT_LOAD over the whole file, PT_DYNAMIC), interpreter, string table, dynamic section;
// the one loadable segment maps the file at address 0x400000.
func Build(s Spec) []byte {
	if s.BO == nil {
		s.BO = binary.LittleEndian
	}
	const base = 0x400000
	ehsize, phent, dent := 52, 32, 8
	if s.Is64 {
		ehsize, phent, dent = 64, 56, 16
	}
	nph := 3
	if len(s.Strings) > 0 {
		nph++
	}
	interpOff := ehsize + nph*phent
	strOff := interpOff + len(s.Interp) + 1
	strtab, offs, rpOff := stringTable(s)
	dynOff := strOff + len(strtab)
	type dyn struct{ tag, val uint64 }
	var ds []dyn
	for _, o := range offs {
		ds = append(ds, dyn{uint64(elf.DT_NEEDED), uint64(o)})
	}
	if s.RunPath != "" {
		tag := elf.DT_RUNPATH
		if s.RPath {
			tag = elf.DT_RPATH
		}
		ds = append(ds, dyn{uint64(tag), uint64(rpOff)})
	}
	ds = append(ds, dyn{uint64(elf.DT_STRTAB), uint64(base + strOff)}, dyn{uint64(elf.DT_STRSZ), uint64(len(strtab))}, dyn{})
	size := dynOff + len(ds)*dent
	roOff := size
	var ro []byte
	for _, str := range s.Strings {
		ro = append(append(ro, str...), 0)
	}
	b := make([]byte, size+len(ro))
	copy(b[roOff:], ro)
	copy(b, elf.ELFMAG)
	b[elf.EI_CLASS] = byte(elf.ELFCLASS32)
	if s.Is64 {
		b[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	}
	b[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	if s.BO == binary.BigEndian {
		b[elf.EI_DATA] = byte(elf.ELFDATA2MSB)
	}
	b[elf.EI_VERSION] = 1
	bo := s.BO
	bo.PutUint16(b[16:], uint16(elf.ET_DYN))
	bo.PutUint16(b[18:], uint16(elf.EM_X86_64))
	word := func(at int, v uint64) {
		if s.Is64 {
			bo.PutUint64(b[at:], v)
		} else {
			bo.PutUint32(b[at:], uint32(v))
		}
	}
	phdr := func(i int, typ elf.ProgType, flags elf.ProgFlag, off, vaddr, size int) {
		h := ehsize + i*phent
		bo.PutUint32(b[h:], uint32(typ))
		if s.Is64 {
			bo.PutUint32(b[h+4:], uint32(flags))
			bo.PutUint64(b[h+8:], uint64(off))
			bo.PutUint64(b[h+16:], uint64(vaddr))
			bo.PutUint64(b[h+32:], uint64(size))
		} else {
			bo.PutUint32(b[h+4:], uint32(off))
			bo.PutUint32(b[h+8:], uint32(vaddr))
			bo.PutUint32(b[h+16:], uint32(size))
			bo.PutUint32(b[h+24:], uint32(flags))
		}
	}
	if s.Is64 {
		bo.PutUint64(b[32:], uint64(ehsize))
		bo.PutUint16(b[54:], uint16(phent))
		bo.PutUint16(b[56:], uint16(nph))
	} else {
		bo.PutUint32(b[28:], uint32(ehsize))
		bo.PutUint16(b[42:], uint16(phent))
		bo.PutUint16(b[44:], uint16(nph))
	}
	phdr(0, elf.PT_INTERP, elf.PF_R, interpOff, base+interpOff, len(s.Interp)+1)
	phdr(1, elf.PT_LOAD, elf.PF_R|elf.PF_X, 0, base, size)
	phdr(2, elf.PT_DYNAMIC, elf.PF_R|elf.PF_W, dynOff, base+dynOff, len(ds)*dent)
	if len(ro) > 0 {
		phdr(3, elf.PT_LOAD, elf.PF_R, roOff, base+0x100000+roOff, len(ro))
	}
	copy(b[interpOff:], s.Interp)
	copy(b[strOff:], strtab)
	for i, d := range ds {
		word(dynOff+i*dent, d.tag)
		word(dynOff+i*dent+dent/2, d.val)
	}
	return b
}

// stringTable is the dynamic string table of s: the needed libraries' names (at offs), then
// its run path (at rpOff).
func stringTable(s Spec) (strtab []byte, offs []int, rpOff int) {
	strtab = append(strtab, 0)
	for _, n := range s.Needed {
		offs = append(offs, len(strtab))
		strtab = append(append(strtab, n...), 0)
	}
	rpOff = len(strtab)
	strtab = append(append(strtab, s.RunPath...), 0)
	return strtab, offs, rpOff
}
