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

	"lazypull/internal/testutil/elftest"
)

func TestReadRoundTrip(t *testing.T) {
	for _, s := range []elftest.Spec{
		{Is64: true, BO: binary.LittleEndian, Interp: "/lib64/ld-linux-x86-64.so.2", Needed: []string{"libc.so.6", "libm.so.6"}, RunPath: "$ORIGIN/../lib:/opt/x"},
		{Is64: false, BO: binary.LittleEndian, Interp: "/lib/ld-linux.so.2", Needed: []string{"libz.so.1"}, RunPath: "/usr/local/lib", RPath: true},
		{Is64: true, BO: binary.BigEndian, Needed: []string{"liba.so", "libb.so", "libc.so"}},
		{Is64: false, BO: binary.BigEndian, Interp: "/x"},
	} {
		f, err := Read(bytes.NewReader(elftest.Build(s)), int64(len(elftest.Build(s))))
		if err != nil {
			t.Fatalf("%+v: %v", s, err)
		}
		var rp []string
		if s.RunPath != "" {
			rp = strings.Split(s.RunPath, ":")
		}
		if f.Interp != s.Interp || !slices.Equal(f.Needed, s.Needed) || !slices.Equal(f.RunPath, rp) {
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
	good := elftest.Build(elftest.Spec{Is64: true, BO: binary.LittleEndian, Interp: "/ld.so", Needed: []string{"libc.so.6"}})
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
	f.Add(elftest.Build(elftest.Spec{Is64: true, BO: binary.LittleEndian, Interp: "/lib64/ld-linux-x86-64.so.2", Needed: []string{"libc.so.6"}, RunPath: "$ORIGIN"}))
	f.Add(elftest.Build(elftest.Spec{Is64: false, BO: binary.BigEndian, Needed: []string{"a", "b"}}))
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
		s := elftest.Spec{Is64: mode&1 == 0, BO: binary.LittleEndian, Interp: interp, RunPath: runpath, RPath: mode&4 != 0}
		if mode&2 != 0 {
			s.BO = binary.BigEndian
		}
		for n := range strings.SplitSeq(names, ",") {
			s.Needed = append(s.Needed, n)
		}
		valid := len(interp) < maxPath && len(runpath) < maxPath && len(s.Needed) <= maxNeeded && !strings.Contains(interp+names+runpath, "\x00")
		for _, n := range s.Needed {
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
		b := elftest.Build(s)
		if len(b) > maxDynamic {
			return
		}
		got, err := Read(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatalf("%+v: %v", s, err)
		}
		if got.Interp != interp || !slices.Equal(got.Needed, s.Needed) || !slices.Equal(got.RunPath, rp) {
			t.Fatalf("%+v: read interp %q needed %q run path %q", s, got.Interp, got.Needed, got.RunPath)
		}
	})
}
