package daemon

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"lazypull/internal/profile"
	"lazypull/internal/store"
	"lazypull/internal/testutil"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// waitNeighbours waits for l's neighbour fetches to end: a miss takes its slot before
// ReadAt returns.
func waitNeighbours(t *testing.T, l *Layer) {
	t.Helper()
	testutil.WaitFor(t, time.Minute, "the neighbour fetches to end", func() bool { return len(l.nbSlot) == 0 })
}

// neighbourFiles: a small directory (with a subdirectory), a directory beside it, and a
// directory with a file too large to guess.
func neighbourFiles() map[string][]byte {
	files := map[string][]byte{}
	for i := range 12 {
		files[fmt.Sprintf("lib/m%02d.pyc", i)] = testutil.RandBytes(uint64(i), 3000+i*100)
		files[fmt.Sprintf("other/o%02d", i)] = testutil.RandBytes(uint64(100+i), 2000)
		files[fmt.Sprintf("lib/sub/s%02d", i)] = testutil.RandBytes(uint64(200+i), 1000)
		files[fmt.Sprintf("so/l%02d", i)] = testutil.RandBytes(uint64(300+i), 2000)
	}
	files["so/big.so"] = testutil.RandBytes(400, neighbourMax+1)
	return files
}

// speculationCases open an image with speculation on and off: off by NoSpeculation, or by
// SpeculateMinRTT above the registry's round trip (on loopback, far less than an hour and
// more than a nanosecond).
var speculationCases = []struct {
	name string
	o    OpenOptions
	off  bool
}{
	{"on", OpenOptions{}, false},
	{"NoSpeculation", OpenOptions{NoSpeculation: true}, true},
	{"round trip below SpeculateMinRTT", OpenOptions{SpeculateMinRTT: time.Hour}, true},
	{"round trip above SpeculateMinRTT", OpenOptions{SpeculateMinRTT: time.Nanosecond}, false},
}

// TestNeighboursFetchedWithMiss: the first read of a small file that misses brings the
// other small files of its directory, in one request beside the read's, verified and
// stored: reading them then asks the registry nothing. Files of other directories (also
// the subdirectory's) are not fetched; nor are the neighbours in a directory that holds a
// file over neighbourMax; and with OpenOptions.NoSpeculation, or a registry answering
// in less than OpenOptions.SpeculateMinRTT, nothing but the read file is.
func TestNeighboursFetchedWithMiss(t *testing.T) {
	files := neighbourFiles()
	ref, _ := lazyImage(t, files)
	for _, c := range speculationCases {
		off := c.off
		t.Run(c.name, func(t *testing.T) {
			im, st := openFreshWith(t, ref, c.o)
			l := im.Layers[0]
			read := func(name string) { t.Helper(); readWhole(t, l, files, name) }
			local := func(name string) bool { t.Helper(); return isLocal(t, l, st, name) }
			read("lib/m06.pyc")
			read("so/l03")
			waitNeighbours(t, l)
			for name := range files {
				want := name == "lib/m06.pyc" || name == "so/l03" || (!off && len(name) == len("lib/m00.pyc") && name[:5] == "lib/m")
				if got := local(name); got != want {
					t.Errorf("%s local: %v, want %v", name, got, want)
				}
			}
			if off {
				if n := l.nbRuns.Load(); n != 0 {
					t.Errorf("%d neighbour fetches with speculation off", n)
				}
				return
			}
			if n := l.nbRuns.Load(); n != 1 {
				t.Errorf("%d neighbour fetches, want 1", n)
			}
			before := im.Registry.Stats().Requests
			for i := range 12 {
				read(fmt.Sprintf("lib/m%02d.pyc", i))
			}
			waitNeighbours(t, l)
			if n := im.Registry.Stats().Requests - before; n != 0 {
				t.Errorf("reading the neighbours took %d requests, want none", n)
			}
		})
	}
}

// TestNeighboursBudget: a directory whose missing files are more than neighbourBudget
// compressed bytes brings no neighbours; once most of it is local, the rest comes.
func TestNeighboursBudget(t *testing.T) {
	files := map[string][]byte{}
	for i := range 30 {
		files[fmt.Sprintf("d/f%03d", i)] = testutil.RandBytes(uint64(i), 10_000) // random: stored, not compressed
	}
	ref, _ := lazyImage(t, files)
	im, st := openFresh(t, ref)
	l := im.Layers[0]
	e, _ := l.Index.Lookup("d/f015")
	if wants, _ := l.dirNeighbours(e); len(wants) != 0 {
		t.Fatalf("%d neighbours of a directory of 300 KB; want none", len(wants))
	}
	// Make all but 5 files local: the 5 fit the budget.
	for i := range 25 {
		n, _ := l.Index.Lookup(fmt.Sprintf("d/f%03d", i))
		f, err := l.file(n)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Fill(context.Background(), blobSource{l.blob}, f); err != nil {
			t.Fatal(err)
		}
	}
	wants, runs := l.dirNeighbours(e)
	if len(wants) != 5 || len(runs) == 0 {
		t.Fatalf("%d neighbours, %d runs; want the 5 missing files and their header runs", len(wants), len(runs))
	}
	var comp int64
	for _, w := range wants {
		for _, c := range w.File.Chunks {
			comp += c.CompSize
		}
	}
	if comp > neighbourBudget {
		t.Errorf("neighbours of %d compressed bytes; the budget is %d", comp, neighbourBudget)
	}
}

// junkProgram is n bytes that start as an ELF shared object whose program headers
// cannot be read (elfdeps.ReadProgram fails), then random.
func junkProgram(seed uint64, n int) []byte {
	b := testutil.RandBytes(seed, n)
	copy(b, "\x7fELF\x02\x01\x01")
	b[16], b[17] = 3, 0 // ET_DYN
	b[54], b[55] = 0, 0 // program header entries of 0 bytes
	return b
}

// TestWholeFileOfUnreadableProgram: a file of a few MiB that looks like a program but whose
// headers the walk cannot read (elfspec.go) follows its first read whole into the store,
// as its page faults would otherwise fetch it a round trip at a time; such a file over
// wholeMax, a file that is no program, and any file with speculation off
// (speculationCases) are left alone.
func TestWholeFileOfUnreadableProgram(t *testing.T) {
	files := map[string][]byte{
		"lib/libmid.so": junkProgram(1, 3<<20),
		"lib/libbig.so": junkProgram(2, wholeMax+1),
		"lib/data.bin":  testutil.RandBytes(3, 3<<20),
	}
	ref, _ := lazyImage(t, files)
	for _, c := range speculationCases {
		off := c.off
		t.Run(c.name, func(t *testing.T) {
			im, st := openFreshWith(t, ref, c.o)
			l := im.Layers[0]
			for name := range files {
				e, _ := l.Index.Lookup(name)
				p := make([]byte, 4096)
				if _, err := l.ReadAt(context.Background(), e, p, 0); err != nil || !bytes.Equal(p, files[name][:4096]) {
					t.Fatalf("read %s: %v, or wrong bytes", name, err)
				}
			}
			testutil.WaitFor(t, time.Minute, "the read-aheads to end", func() bool { return len(l.raSlot) == 0 && elfIdle(im) })
			for name, data := range files {
				e, _ := l.Index.Lookup(name)
				f, err := l.file(e)
				if err != nil {
					t.Fatal(err)
				}
				want := !off && name != "lib/data.bin" && int64(len(data)) <= wholeMax
				if got := len(st.Missing(f)) == 0; got != want {
					t.Errorf("%s whole in the store: %v, want %v", name, got, want)
				}
			}
			if off {
				return
			}
			e, _ := l.Index.Lookup("lib/libmid.so")
			before := im.Registry.Stats().Requests
			b := make([]byte, len(files["lib/libmid.so"]))
			if n, err := l.ReadAt(context.Background(), e, b, 0); n != len(b) || (err != nil && err != io.EOF) || !bytes.Equal(b, files["lib/libmid.so"]) {
				t.Fatalf("read lib/libmid.so whole: %d bytes, %v, or wrong bytes", n, err)
			}
			if n := im.Registry.Stats().Requests - before; n != 0 {
				t.Errorf("reading the file fetched whole took %d requests, want none", n)
			}
		})
	}
}

// TestDirectoryAfterTwoMisses: in a directory too large for the neighbour rule, the first
// miss brings nothing more, the second brings the directory's other small files (one
// fetch), not a file over neighbourMax nor a subdirectory's; a directory whose missing
// files are over dirBudget compressed brings nothing, however many misses.
func TestDirectoryAfterTwoMisses(t *testing.T) {
	files := map[string][]byte{}
	for i := range 40 {
		files[fmt.Sprintf("inc/h%02d.h", i)] = testutil.RandBytes(uint64(i), 10_000) // 400 KB: over neighbourBudget
		files[fmt.Sprintf("inc/sub/s%02d.h", i)] = testutil.RandBytes(uint64(100+i), 1000)
	}
	files["inc/big.h"] = testutil.RandBytes(99, neighbourMax+1)
	for i := range dirBudget/10_000 + 20 {
		files[fmt.Sprintf("huge/m%03d", i)] = testutil.RandBytes(uint64(1000+i), 10_000) // over dirBudget
	}
	ref, _ := lazyImage(t, files)
	im, st := openFresh(t, ref)
	l := im.Layers[0]
	read := func(name string) { t.Helper(); readWhole(t, l, files, name) }
	local := func(name string) bool { t.Helper(); return isLocal(t, l, st, name) }
	count := func(prefix string) (n int) {
		for name := range files {
			if len(name) > len(prefix) && name[:len(prefix)] == prefix && local(name) {
				n++
			}
		}
		return n
	}
	read("inc/h05.h")
	waitNeighbours(t, l)
	if n := count("inc/h"); n != 1 {
		t.Fatalf("after one miss %d files of inc/ local, want 1", n)
	}
	read("inc/h30.h")
	waitNeighbours(t, l)
	if n := count("inc/h"); n != 40 {
		t.Errorf("after two misses %d of the 40 small files of inc/ local", n)
	}
	if local("inc/big.h") || count("inc/sub/") != 0 {
		t.Errorf("a file over neighbourMax or a subdirectory's files came with inc/")
	}
	for _, name := range []string{"huge/m001", "huge/m050", "huge/m100"} {
		read(name)
		waitNeighbours(t, l)
	}
	if n := count("huge/"); n != 3 {
		t.Errorf("%d files of a directory over dirBudget local after 3 reads, want 3", n)
	}
}

// readWhole reads the layer's file name whole through ReadAt and checks it against files.
func readWhole(t *testing.T, l *Layer, files map[string][]byte, name string) {
	t.Helper()
	e, ok := l.Index.Lookup(name)
	if !ok {
		t.Fatalf("%s not in the index", name)
	}
	b := make([]byte, e.Size)
	if n, err := l.ReadAt(context.Background(), e, b, 0); (err != nil && err != io.EOF) || int64(n) != e.Size {
		t.Fatalf("read %s: %d bytes, %v", name, n, err)
	}
	if !bytes.Equal(b, files[name]) {
		t.Fatalf("read %s: wrong bytes", name)
	}
}

// isLocal says whether the layer's file name is whole in st.
func isLocal(t *testing.T, l *Layer, st *store.Store, name string) bool {
	t.Helper()
	e, _ := l.Index.Lookup(name)
	f, err := l.file(e)
	if err != nil {
		t.Fatal(err)
	}
	return len(st.Missing(f)) == 0
}

// TestNoSpeculationUnderProfile: an image a profile prefetches does not guess: a read of a
// small file the profile left out fetches that file alone, not its directory's other files,
// and a program read at offset 0 starts no walk of its needs.
func TestNoSpeculationUnderProfile(t *testing.T) {
	files := neighbourFiles()
	img, _ := lazyImageOf(t, files)
	ref := testutil.NewRegistry(t).Push(t, "spec:v1", img)
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	h, n, _ := v1.SHA256(bytes.NewReader(raw))
	subject := v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: h, Size: n}
	pushProfile(t, ref, subject, &profile.Profile{Subject: h.String(), Created: time.Now().UTC().Truncate(time.Second),
		Layers: []string{m.Layers[0].Digest.String()},
		Files:  []profile.File{{Layer: 0, Path: "other/o01", Ranges: []profile.Range{{Off: 0, Len: int64(len(files["other/o01"]))}}}},
	}, nil)
	im, ps := openPrefetched(t, ref)
	if ps.Profile == "" || ps.Files != 1 {
		t.Fatalf("prefetch %+v: want the profile's one file", ps)
	}
	l := im.Layers[0]
	readWhole(t, l, files, "lib/m06.pyc")
	waitNeighbours(t, l)
	if n := l.nbRuns.Load(); n != 0 {
		t.Errorf("%d neighbour fetches under a profile", n)
	}
	st := l.store
	for name := range files {
		want := name == "lib/m06.pyc" || name == "other/o01"
		if got := isLocal(t, l, st, name); got != want {
			t.Errorf("%s local: %v, want %v", name, got, want)
		}
	}
}
