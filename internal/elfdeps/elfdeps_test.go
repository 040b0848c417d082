package elfdeps

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
)

// spec describes a synthetic ELF file (build).
type spec struct {
	is64    bool
	bo      binary.ByteOrder
	interp  string
	needed  []string
	runpath string
	rpath   bool // runpath goes in DT_RPATH
}

// build lays out an ELF file: header, program headers (PT_INTERP, PT_LOAD over the
// whole file, PT_DYNAMIC), interpreter, string table, dynamic section; the one loadable
// segment maps the file at address 0x400000.
func build(s spec) []byte {
	const base = 0x400000
	ehsize, phent, dent := 52, 32, 8
	if s.is64 {
		ehsize, phent, dent = 64, 56, 16
	}
	nph := 3
	interpOff := ehsize + nph*phent
	strOff := interpOff + len(s.interp) + 1
	var strtab []byte
	strtab = append(strtab, 0)
	var offs []int
	for _, n := range s.needed {
		offs = append(offs, len(strtab))
		strtab = append(append(strtab, n...), 0)
	}
	rpOff := len(strtab)
	strtab = append(append(strtab, s.runpath...), 0)
	dynOff := strOff + len(strtab)
	type dyn struct{ tag, val uint64 }
	var ds []dyn
	for _, o := range offs {
		ds = append(ds, dyn{uint64(elf.DT_NEEDED), uint64(o)})
	}
	if s.runpath != "" {
		tag := elf.DT_RUNPATH
		if s.rpath {
			tag = elf.DT_RPATH
		}
		ds = append(ds, dyn{uint64(tag), uint64(rpOff)})
	}
	ds = append(ds, dyn{uint64(elf.DT_STRTAB), uint64(base + strOff)}, dyn{uint64(elf.DT_STRSZ), uint64(len(strtab))}, dyn{})
	size := dynOff + len(ds)*dent
	b := make([]byte, size)
	copy(b, elf.ELFMAG)
	b[elf.EI_CLASS] = byte(elf.ELFCLASS32)
	if s.is64 {
		b[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	}
	b[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	if s.bo == binary.BigEndian {
		b[elf.EI_DATA] = byte(elf.ELFDATA2MSB)
	}
	b[elf.EI_VERSION] = 1
	bo := s.bo
	bo.PutUint16(b[16:], uint16(elf.ET_DYN))
	bo.PutUint16(b[18:], uint16(elf.EM_X86_64))
	word := func(at int, v uint64) {
		if s.is64 {
			bo.PutUint64(b[at:], v)
		} else {
			bo.PutUint32(b[at:], uint32(v))
		}
	}
	phdr := func(i int, typ elf.ProgType, flags elf.ProgFlag, off, vaddr, size int) {
		h := ehsize + i*phent
		bo.PutUint32(b[h:], uint32(typ))
		if s.is64 {
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
	if s.is64 {
		bo.PutUint64(b[32:], uint64(ehsize))
		bo.PutUint16(b[54:], uint16(phent))
		bo.PutUint16(b[56:], uint16(nph))
	} else {
		bo.PutUint32(b[28:], uint32(ehsize))
		bo.PutUint16(b[42:], uint16(phent))
		bo.PutUint16(b[44:], uint16(nph))
	}
	phdr(0, elf.PT_INTERP, elf.PF_R, interpOff, base+interpOff, len(s.interp)+1)
	phdr(1, elf.PT_LOAD, elf.PF_R|elf.PF_X, 0, base, size)
	phdr(2, elf.PT_DYNAMIC, elf.PF_R|elf.PF_W, dynOff, base+dynOff, len(ds)*dent)
	copy(b[interpOff:], s.interp)
	copy(b[strOff:], strtab)
	for i, d := range ds {
		word(dynOff+i*dent, d.tag)
		word(dynOff+i*dent+dent/2, d.val)
	}
	return b
}

func TestReadRoundTrip(t *testing.T) {
	for _, s := range []spec{
		{is64: true, bo: binary.LittleEndian, interp: "/lib64/ld-linux-x86-64.so.2", needed: []string{"libc.so.6", "libm.so.6"}, runpath: "$ORIGIN/../lib:/opt/x"},
		{is64: false, bo: binary.LittleEndian, interp: "/lib/ld-linux.so.2", needed: []string{"libz.so.1"}, runpath: "/usr/local/lib", rpath: true},
		{is64: true, bo: binary.BigEndian, needed: []string{"liba.so", "libb.so", "libc.so"}},
		{is64: false, bo: binary.BigEndian, interp: "/x"},
	} {
		f, err := Read(bytes.NewReader(build(s)), int64(len(build(s))))
		if err != nil {
			t.Fatalf("%+v: %v", s, err)
		}
		var rp []string
		if s.runpath != "" {
			rp = strings.Split(s.runpath, ":")
		}
		if f.Interp != s.interp || !slices.Equal(f.Needed, s.needed) || !slices.Equal(f.RunPath, rp) {
			t.Errorf("%+v: read interp %q needed %q run path %q", s, f.Interp, f.Needed, f.RunPath)
		}
		if len(f.Loads) != 1 || f.Loads[0].Off != 0 || !f.Loads[0].Exec || f.Loads[0].Write {
			t.Errorf("%+v: loads %+v", s, f.Loads)
		}
	}
}

// TestReadSystemFiles reads the machine's own programs and libraries and compares with
// debug/elf, which reads them whole.
func TestReadSystemFiles(t *testing.T) {
	var paths []string
	for _, g := range []string{"/usr/bin/*", "/usr/lib/x86_64-linux-gnu/*.so*", "/usr/lib/aarch64-linux-gnu/*.so*"} {
		m, _ := filepath.Glob(g)
		paths = append(paths, m...)
	}
	checked := 0
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil || !fi.Mode().IsRegular() || fi.Size() > 256<<20 {
			continue
		}
		ef, err := elf.Open(p)
		if err != nil {
			continue
		}
		want, werr := ef.ImportedLibraries()
		var wantRP []string
		if rp, _ := ef.DynString(elf.DT_RUNPATH); len(rp) > 0 {
			wantRP = strings.Split(rp[0], ":")
		} else if rp, _ := ef.DynString(elf.DT_RPATH); len(rp) > 0 {
			wantRP = strings.Split(rp[0], ":")
		}
		var interp string
		for _, pr := range ef.Progs {
			if pr.Type == elf.PT_INTERP {
				b := make([]byte, pr.Filesz)
				pr.ReadAt(b, 0)
				interp, _, _ = strings.Cut(string(b), "\x00")
			}
		}
		typ := ef.Type
		ef.Close()
		if werr != nil || (typ != elf.ET_DYN && typ != elf.ET_EXEC) {
			continue
		}
		osf, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Read(osf, fi.Size())
		osf.Close()
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		if !slices.Equal(got.Needed, want) || got.Interp != interp || !slices.Equal(got.RunPath, slices.DeleteFunc(wantRP, func(s string) bool { return s == "" })) {
			t.Errorf("%s: needed %q interp %q run path %q; debug/elf: %q %q %q", p, got.Needed, got.Interp, got.RunPath, want, interp, wantRP)
		}
		checked++
	}
	if checked < 50 {
		t.Fatalf("only %d ELF files checked on this machine: the comparison proves little", checked)
	}
	t.Logf("%d ELF files read as debug/elf reads them", checked)
}

func TestReadRefuses(t *testing.T) {
	good := build(spec{is64: true, bo: binary.LittleEndian, interp: "/ld.so", needed: []string{"libc.so.6"}})
	for name, mut := range map[string]func([]byte) []byte{
		"not elf":        func(b []byte) []byte { b[0] = 0; return b },
		"relocatable":    func(b []byte) []byte { binary.LittleEndian.PutUint16(b[16:], uint16(elf.ET_REL)); return b },
		"truncated":      func(b []byte) []byte { return b[:100] },
		"phdrs outside":  func(b []byte) []byte { binary.LittleEndian.PutUint64(b[32:], 1<<40); return b },
		"too many phdrs": func(b []byte) []byte { binary.LittleEndian.PutUint16(b[56:], 60000); return b },
		"segment beyond": func(b []byte) []byte { binary.LittleEndian.PutUint64(b[64+56+32:], 1<<50); return b },
		"bad class":      func(b []byte) []byte { b[elf.EI_CLASS] = 9; return b },
	} {
		b := mut(slices.Clone(good))
		if _, err := Read(bytes.NewReader(b), int64(len(b))); err == nil {
			t.Errorf("%s: read without error", name)
		}
	}
	if IsProgram(good) != true || IsProgram(good[:17]) || IsProgram(mutRel(good)) {
		t.Errorf("IsProgram: a shared object, its first 17 bytes, an object file: %v %v %v", IsProgram(good), IsProgram(good[:17]), IsProgram(mutRel(good)))
	}
	if _, err := Read(bytes.NewReader([]byte("#!/bin/sh\n")), 10); !errors.Is(err, ErrNotELF) {
		t.Errorf("a script: %v, want ErrNotELF", err)
	}
}

// mutRel is b made an object file.
func mutRel(b []byte) []byte {
	b = slices.Clone(b)
	binary.LittleEndian.PutUint16(b[16:], uint16(elf.ET_REL))
	return b
}

// countingReader counts the bytes read.
type countingReader struct {
	r bytes.Reader
	n atomic.Int64
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	c.n.Add(int64(len(p)))
	return c.r.ReadAt(p, off)
}

// readBound is the most Read may read of any file: header, program headers,
// interpreter, dynamic segment and a name per needed entry plus the run path.
const readBound = 64 + maxPhnum*56 + maxPath + maxDynamic + maxNeeded*(maxName+1) + maxPath + 1

func FuzzRead(f *testing.F) {
	f.Add(build(spec{is64: true, bo: binary.LittleEndian, interp: "/lib64/ld-linux-x86-64.so.2", needed: []string{"libc.so.6"}, runpath: "$ORIGIN"}))
	f.Add(build(spec{is64: false, bo: binary.BigEndian, needed: []string{"a", "b"}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		c := &countingReader{}
		c.r.Reset(b)
		size := int64(len(b))
		// A size larger than the bytes: the reader fails past them, as a store read of a
		// short file would.
		if len(b) > 0 && b[len(b)-1]&1 == 1 {
			size += 1 << 20
		}
		fl, err := Read(c, size)
		if c.n.Load() > readBound {
			t.Fatalf("read %d bytes, bound %d", c.n.Load(), readBound)
		}
		if err != nil {
			return
		}
		if len(fl.Needed) > maxNeeded || len(fl.RunPath) > maxRunPath || len(fl.Loads) > maxPhnum {
			t.Fatalf("%d needed, %d run path, %d loads", len(fl.Needed), len(fl.RunPath), len(fl.Loads))
		}
		for _, n := range fl.Needed {
			if len(n) > maxName || strings.Contains(n, "\x00") || n == "" {
				t.Fatalf("needed name %q", n)
			}
		}
		for _, l := range fl.Loads {
			if l.Off < 0 || l.Size < 0 || l.Off+l.Size > size {
				t.Fatalf("load %+v outside %d bytes", l, size)
			}
		}
	})
}

// FuzzRoundTrip builds files of fuzzed names and reads them back.
func FuzzRoundTrip(f *testing.F) {
	f.Add("/lib64/ld-linux-x86-64.so.2", "libc.so.6,libm.so.6", "$ORIGIN:/x", byte(0))
	f.Fuzz(func(t *testing.T, interp, names, runpath string, mode byte) {
		s := spec{is64: mode&1 == 0, bo: binary.LittleEndian, interp: interp, runpath: runpath, rpath: mode&4 != 0}
		if mode&2 != 0 {
			s.bo = binary.BigEndian
		}
		for n := range strings.SplitSeq(names, ",") {
			s.needed = append(s.needed, n)
		}
		valid := len(interp) < maxPath && len(runpath) < maxPath && len(s.needed) <= maxNeeded && !strings.Contains(interp+names+runpath, "\x00")
		for _, n := range s.needed {
			valid = valid && n != "" && len(n) <= maxName
		}
		var rp []string
		for d := range strings.SplitSeq(runpath, ":") {
			if d != "" {
				rp = append(rp, d)
			}
		}
		valid = valid && len(rp) <= maxRunPath
		if !valid {
			return
		}
		b := build(s)
		if len(b) > maxDynamic {
			return
		}
		got, err := Read(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatalf("%+v: %v", s, err)
		}
		if got.Interp != interp || !slices.Equal(got.Needed, s.needed) || !slices.Equal(got.RunPath, rp) {
			t.Fatalf("%+v: read interp %q needed %q run path %q", s, got.Interp, got.Needed, got.RunPath)
		}
	})
}
