package daemon

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/format"
	"lazypull/internal/elfdeps"
	"lazypull/internal/fusefs"
	"lazypull/internal/imageindex"
	"lazypull/internal/store"
	"lazypull/internal/testutil"
	"lazypull/internal/testutil/elftest"
)

// hostProgram builds a two-layer image of a real program of this machine and the
// libraries it needs, as Debian lays them out: the libraries (real files beside their
// version symlinks, /lib64 a symlink to usr/lib64 whose loader is a symlink into the
// multiarch directory) and one library nothing needs in the base layer, the program in
// the layer above. It returns the image's reference and the paths of the files the
// program needs, the loader included.
func hostProgram(t *testing.T, prog string) (ref string, needed []string) {
	t.Helper()
	base, app, needed := hostProgramTars(t, prog)
	img, _ := lazyTarOn(t, empty.Image, base, nil)
	img, _ = lazyTarOn(t, img, app, nil)
	return testutil.NewRegistry(t).Push(t, "elf:v1", img), needed
}

// hostProgramTars are hostProgram's two layers, as tars.
func hostProgramTars(t *testing.T, prog string) (baseTar, appTar []byte, needed []string) {
	t.Helper()
	const dir = "/usr/lib/x86_64-linux-gnu"
	read := func(p string) *elfdeps.File {
		f, err := os.Open(p)
		if err != nil {
			t.Skipf("this machine has no %s: %v", p, err)
		}
		defer f.Close()
		fi, _ := f.Stat()
		ef, err := elfdeps.Read(f, fi.Size())
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		return ef
	}
	base := []testutil.Entry{
		testutil.Symlink("lib64", "usr/lib64"),
		testutil.Symlink("usr/lib64/ld-linux-x86-64.so.2", "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
		testutil.File("usr/lib/x86_64-linux-gnu/libunrelated.so.1", testutil.RandBytes(7, 300_000)),
	}
	seen := map[string]bool{}
	queue := append(read(prog).Needed, "ld-linux-x86-64.so.2")
	for len(queue) > 0 {
		name := queue[0]
		queue = queue[1:]
		if seen[name] {
			continue
		}
		seen[name] = true
		hp := filepath.Join(dir, name)
		real, err := filepath.EvalSymlinks(hp)
		if err != nil {
			t.Skipf("this machine has no %s: %v", hp, err)
		}
		file := path.Join(dir[1:], filepath.Base(real))
		if filepath.Base(real) != name {
			base = append(base, testutil.Symlink(path.Join(dir[1:], name), filepath.Base(real)))
		}
		if !seen["file:"+file] {
			seen["file:"+file] = true
			b, err := os.ReadFile(real)
			if err != nil {
				t.Fatal(err)
			}
			base = append(base, testutil.File(file, b))
			needed = append(needed, file)
		}
		queue = append(queue, read(real).Needed...)
	}
	b, err := os.ReadFile(prog)
	if err != nil {
		t.Fatal(err)
	}
	return testutil.Tar(t, base...), testutil.Tar(t, testutil.File(prog[1:], b)), needed
}

// TestProgramNeedsFetched: the first read of a program (its header, as execve reads it)
// brings, before anything asks for them, the loadable segments of the libraries it needs
// and of those they need, across layers and symbolic links (of files and of directories),
// and the loader; the rest of the program's own segments too. A library nothing needs is
// not fetched. With OpenOptions.NoSpeculation nothing is.
func TestProgramNeedsFetched(t *testing.T) {
	const prog = "/usr/bin/python3.11"
	ref, needed := hostProgram(t, prog)
	if len(needed) < 4 {
		t.Fatalf("the program needs %d files (%q); the test needs a few", len(needed), needed)
	}
	for _, off := range []bool{false, true} {
		im, st := openFreshWith(t, ref, OpenOptions{NoSpeculation: off})
		app, base := im.Layers[1], im.Layers[0]
		e, ok := app.Index.Lookup(prog)
		if !ok {
			t.Fatalf("%s not in the image", prog)
		}
		head := make([]byte, 4096)
		if _, err := app.ReadAt(context.Background(), e, head, 0); err != nil {
			t.Fatal(err)
		}
		// segmentsLocal says whether the chunks of every loadable segment of the layer's
		// file p are in the store.
		segmentsLocal := func(l *Layer, p string) bool {
			e, ok := l.Index.Lookup(p)
			if !ok {
				t.Fatalf("%s not in the layer", p)
			}
			f, err := l.file(e)
			if err != nil {
				t.Fatal(err)
			}
			ef, err := elfdeps.Read(&layerFileReader{ctx: context.Background(), l: l, e: e, f: f}, f.Size)
			if err != nil {
				t.Fatal(err)
			}
			missing := map[format.Digest]bool{}
			for _, c := range st.Missing(f) {
				missing[c.Digest] = true
			}
			for _, w := range elfWants(f, ef) {
				for _, c := range w.Chunks() {
					if missing[c.Digest] {
						return false
					}
				}
			}
			return true
		}
		if off {
			if n := app.elfRuns.Load() + base.elfRuns.Load(); n != 0 {
				t.Errorf("NoSpeculation: %d fetches of programs' needs", n)
			}
			continue
		}
		for _, p := range needed {
			testutil.WaitFor(t, time.Minute, p+"'s segments to be fetched", func() bool { return segmentsLocal(base, p) })
		}
		testutil.WaitFor(t, time.Minute, "the program's own segments", func() bool { return segmentsLocal(app, prog) })
		ue, _ := base.Index.Lookup("usr/lib/x86_64-linux-gnu/libunrelated.so.1")
		uf, err := base.file(ue)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Missing(uf)) != len(uf.Chunks) {
			t.Errorf("a library nothing needs was fetched")
		}
		t.Logf("%d needed files fetched with %d requests in all", len(needed), im.Registry.Stats().Requests)
	}
}

// TestFindFile: paths resolve as in the container: the top layer's entry, symbolic links
// in the file and in its directories, relative and absolute, no way out of the root,
// and loops end.
func TestFindFile(t *testing.T) {
	lower := testutil.Tar(t,
		testutil.File("usr/lib/a.so", []byte("lower a")),
		testutil.File("usr/lib/b.so", []byte("b")),
		testutil.Symlink("lib", "usr/lib"),
		testutil.Symlink("usr/lib/loop1", "loop2"),
		testutil.Symlink("usr/lib/loop2", "loop1"),
		testutil.Symlink("usr/lib/up", "../../../../../usr/lib/b.so"),
		testutil.Symlink("usr/lib/abs", "/lib/b.so"),
	)
	upper := testutil.Tar(t, testutil.File("usr/lib/a.so", []byte("upper a")))
	img, _ := lazyTarOn(t, empty.Image, lower, nil)
	img, _ = lazyTarOn(t, img, upper, nil)
	im, _ := openFresh(t, testutil.NewRegistry(t).Push(t, "find:v1", img))
	for p, want := range map[string]string{
		"/usr/lib/a.so":  "1:usr/lib/a.so",
		"/lib/a.so":      "1:usr/lib/a.so",
		"/lib/b.so":      "0:usr/lib/b.so",
		"/usr/lib/up":    "0:usr/lib/b.so",
		"/lib/abs":       "0:usr/lib/b.so",
		"/usr/lib/loop1": "",
		"/usr/lib/none":  "",
		"/lib":           "",
	} {
		got := ""
		if tg, ok := im.findFile(p); ok {
			got = map[elfLayer]string{im.Layers[0]: "0:", im.Layers[1]: "1:"}[tg.l] + tg.e.Name
		}
		if got != want {
			t.Errorf("findFile(%q) = %q, want %q", p, got, want)
		}
	}
}

// elfIdle says whether im's walk of programs' needs has ended, fetches included.
func elfIdle(im *Image) bool { return im.elf.pending.Load() == 0 }

// TestProgramNeedsHostile: an image's programs name what they like. A library that needs
// itself and one that needs the other, needed names that climb out of the root, a run
// path through a symbolic link loop and above the root, and hundreds of libraries each
// naming the next: the walk ends, within its bounds (elfMaxFiles files), fetches files of
// the image only (the root's etc/secret of the test is the image's own), and the reads
// are served right. On a converted layer and on one served from its index artifact.
func TestProgramNeedsHostile(t *testing.T) {
	entries := []testutil.Entry{
		testutil.File("bin/prog", elftest.Build(elftest.Spec{Is64: true, Interp: "/lib/ld.so",
			Needed:  []string{"liba.so", "../../../../etc/secret", "/../../etc/secret2", "libchain0.so"},
			RunPath: "$ORIGIN/../../../..:/loop/x:/lib"})),
		testutil.File("lib/liba.so", elftest.Build(elftest.Spec{Is64: true, Needed: []string{"libb.so", "liba.so"}})),
		testutil.File("lib/libb.so", elftest.Build(elftest.Spec{Is64: true, Needed: []string{"liba.so"}})),
		testutil.File("lib/ld.so", elftest.Build(elftest.Spec{Is64: true, Needed: []string{"ld.so"}})),
		testutil.File("etc/secret", []byte("the image's own file")),
		testutil.Symlink("loop", "loop2"),
		testutil.Symlink("loop2", "loop"),
	}
	const chain = 3 * elfMaxFiles
	for i := range chain {
		entries = append(entries, testutil.File(fmt.Sprintf("lib/libchain%d.so", i),
			elftest.Build(elftest.Spec{Is64: true, Needed: []string{fmt.Sprintf("libchain%d.so", i+1)}})))
	}
	tar := testutil.Tar(t, entries...)
	want := elftest.Build(elftest.Spec{Is64: true, Interp: "/lib/ld.so",
		Needed:  []string{"liba.so", "../../../../etc/secret", "/../../etc/secret2", "libchain0.so"},
		RunPath: "$ORIGIN/../../../..:/loop/x:/lib"})
	// The same image converted, and as it is with an index artifact.
	for _, kind := range []string{"converted", "indexed"} {
		t.Run(kind, func(t *testing.T) {
			var im *Image
			var content fusefs.Content
			var index *format.Index
			var local func(p string) bool
			if kind == "converted" {
				img, _ := lazyTarOn(t, empty.Image, tar, nil)
				var st *store.Store
				im, st = openFresh(t, testutil.NewRegistry(t).Push(t, "hostile:v1", img))
				l := im.Layers[0]
				content, index = l, l.Index
				local = func(p string) bool { return isLocal(t, l, st, p) }
			} else {
				var st *store.Store
				im, st = openIndexedTars(t, tar)
				l := im.indexed[0]
				content, index = l, l.Index
				local = func(p string) bool {
					e, ok := l.Index.Lookup(p)
					return ok && len(st.Missing(storeFile(e))) == 0
				}
			}
			e, _ := index.Lookup("bin/prog")
			b := make([]byte, len(want))
			if n, err := content.ReadAt(context.Background(), e, b, 0); (err != nil && err != io.EOF) || n != len(want) || !bytes.Equal(b, want) {
				t.Fatalf("read bin/prog: %d bytes, %v, or wrong bytes", n, err)
			}
			testutil.WaitFor(t, time.Minute, "the walk to end", func() bool { return elfIdle(im) })
			im.elf.mu.Lock()
			files, seen := im.elf.files, len(im.elf.seen)
			im.elf.mu.Unlock()
			if files > elfMaxFiles || seen > elfMaxFiles {
				t.Errorf("the walk took %d files (%d seen); at most %d", files, seen, elfMaxFiles)
			}
			for _, p := range []string{"lib/liba.so", "lib/libb.so", "lib/ld.so", "etc/secret"} {
				if !local(p) {
					t.Errorf("%s, which the program names, was not fetched", p)
				}
			}
			if local(fmt.Sprintf("lib/libchain%d.so", chain-1)) {
				t.Errorf("the end of a chain of %d libraries was fetched: the walk is bounded by %d files", chain, elfMaxFiles)
			}
		})
	}
}

// openIndexedTars pushes an unconverted image of the tars (gzip layers), indexes it
// (64 KiB spans) and opens it from its index artifact over a fresh store.
func openIndexedTars(t *testing.T, tars ...[]byte) (*Image, *store.Store) {
	t.Helper()
	img := empty.Image
	for _, tr := range tars {
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(tr)), nil })
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	ref := testutil.NewRegistry(t).Push(t, "indexed:v1", mutate.MediaType(img, types.OCIManifestSchema1))
	if _, err := imageindex.Image(t.Context(), io.Discard, ref, imageindex.Options{Client: testClient(t), SpanSize: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	im, st := openIndexed(t, ref)
	if len(im.indexed) != len(tars) {
		t.Fatalf("%d layers served from the index artifact, want %d", len(im.indexed), len(tars))
	}
	return im, st
}

// TestProgramNeedsFetchedIndexed: the walk of a program's needs on an unconverted image
// served from its index artifact: the first read of the program brings the libraries it
// needs whole (files of up to wholeFileMax bytes are stored whole) and the spans holding
// its own segments (a file over wholeFileMax), across layers and symbolic links; a
// library nothing needs is not fetched.
func TestProgramNeedsFetchedIndexed(t *testing.T) {
	const prog = "/usr/bin/python3.11"
	baseTar, appTar, needed := hostProgramTars(t, prog)
	im, st := openIndexedTars(t, baseTar, appTar)
	base, app := im.indexed[0], im.indexed[1]
	e, ok := app.Index.Lookup(prog)
	if !ok || e.Size <= wholeFileMax {
		t.Fatalf("%s: %v, %d bytes; the test wants a program over %d bytes", prog, ok, e.Size, wholeFileMax)
	}
	head := make([]byte, 4096)
	if _, err := app.ReadAt(t.Context(), e, head, 0); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, time.Minute, "the walk of the program's needs", func() bool { return elfIdle(im) })
	for _, p := range needed {
		ne, ok := base.Index.Lookup(p)
		if !ok {
			t.Fatalf("%s not in the base layer", p)
		}
		if m := st.Missing(storeFile(ne)); len(m) != 0 {
			t.Errorf("%s: not fetched", p)
		}
	}
	ef, err := elfdeps.Read(indexedReader{ctx: t.Context(), l: app, e: e}, e.Size)
	if err != nil {
		t.Fatal(err)
	}
	for _, ld := range ef.Loads {
		if ld.Exec {
			ss, ok := app.spanTab.spansOf(e.TarOffset+ld.Off, e.TarOffset+ld.Off+ld.Size)
			if !ok {
				t.Fatalf("no stored spans for the code segment")
			}
			for _, sp := range ss {
				if len(st.Missing(spanFile(sp))) != 0 {
					t.Fatalf("a span of the program's code segment was not fetched")
				}
			}
		}
	}
	ue, _ := base.Index.Lookup("usr/lib/x86_64-linux-gnu/libunrelated.so.1")
	if m := st.Missing(storeFile(ue)); len(m) == 0 {
		t.Errorf("a library nothing needs was fetched")
	}
	t.Logf("%d needed files fetched with %d requests in all", len(needed), im.Registry.Stats().Requests)
}

// openIndexed opens ref, an image with an index artifact, over a fresh store; both are
// closed when the test ends.
func openIndexed(t *testing.T, ref string) (*Image, *store.Store) {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	im, err := OpenImage(t.Context(), st, ref, OpenOptions{Client: testClient(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(im.Close)
	return im, st
}
