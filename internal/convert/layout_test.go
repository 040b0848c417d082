package convert

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"math/rand"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	"lazypull/format"
	"lazypull/internal/profile"
	"lazypull/internal/testutil"
)

// layoutEntry is an entry of a test tar.
type layoutEntry struct {
	name, link string
	typ        byte
	data       []byte
}

// layoutTar is a layer with what a layout must take care of: nested directories, a
// directory with an opaque whiteout, a whiteout of a path the layer adds again, hard links
// (one of them profiled), a directory reached through a symlink, a path twice, and many
// files around the profiled ones.
func layoutTar(t *testing.T) ([]byte, []layoutEntry) {
	t.Helper()
	rng := rand.New(rand.NewSource(7))
	data := func(n int) []byte {
		b := make([]byte, n)
		rng.Read(b)
		return b
	}
	es := []layoutEntry{
		{name: "./", typ: tar.TypeDir},
		{name: "etc/", typ: tar.TypeDir},
		{name: "etc/os-release", typ: tar.TypeReg, data: []byte("ID=test\n")},
		{name: ".wh.app", typ: tar.TypeReg},
		{name: "app/", typ: tar.TypeDir},
		{name: "app/.wh..wh..opq", typ: tar.TypeReg},
		{name: "usr/", typ: tar.TypeDir},
		{name: "usr/lib/", typ: tar.TypeDir},
		{name: "usr/link", typ: tar.TypeSymlink, link: "lib"},
	}
	for i := range 60 {
		es = append(es, layoutEntry{name: fmt.Sprintf("usr/lib/m%02d.so", i), typ: tar.TypeReg, data: data(1000 + rng.Intn(200_000))})
		if i%20 == 0 {
			es = append(es, layoutEntry{name: fmt.Sprintf("app/a%02d.py", i), typ: tar.TypeReg, data: data(5000)})
		}
	}
	es = append(es,
		layoutEntry{name: "usr/lib/hard", typ: tar.TypeLink, link: "usr/lib/m07.so"},
		layoutEntry{name: "usr/lib/hard2", typ: tar.TypeLink, link: "usr/lib/m50.so"},
		layoutEntry{name: "usr/link/x", typ: tar.TypeReg, data: data(100)}, // under a symlink
		layoutEntry{name: "etc/twice", typ: tar.TypeReg, data: []byte("one")},
		layoutEntry{name: "etc/twice", typ: tar.TypeReg, data: []byte("two")},
		layoutEntry{name: "usr/lib/big", typ: tar.TypeReg, data: data(1 << 20)},
	)
	var tes []testutil.Entry
	for _, e := range es {
		te := testutil.Entry{Hdr: tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o644, Linkname: e.link,
			ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX}, Body: e.data}
		if e.typ == tar.TypeDir {
			te.Hdr.Mode = 0o755
		}
		if e.name == "usr/lib/m03.so" {
			te.Hdr.PAXRecords = map[string]string{"SCHILY.xattr.user.test": "v"} // extra header blocks move along
		}
		tes = append(tes, te)
	}
	return testutil.Tar(t, tes...), es
}

// layoutProfile names profiled files in an order unlike the tar's.
func layoutProfile() *profile.Profile {
	p := &profile.Profile{Subject: "sha256:" + strings.Repeat("a", 64), Layers: []string{"sha256:" + strings.Repeat("b", 64)}}
	for _, n := range []string{"usr/lib/m41.so", "app/a20.py", "usr/lib/hard", "usr/lib/m03.so", "etc/os-release", "usr/link/x", "etc/twice", "nowhere", "usr/lib/m41.so", "usr/lib/m12.so"} {
		p.Files = append(p.Files, profile.File{Layer: 0, Path: n, Ranges: []profile.Range{{Off: 0, Len: 1}}})
	}
	return p
}

// tarNames lists the cleaned names of a tar in order, with their contents.
func tarNames(t *testing.T, b []byte) ([]string, map[string][]byte) {
	t.Helper()
	var names []string
	content := map[string][]byte{}
	for h, body := range testutil.TarEntries(t, b) {
		n := format.CleanName(h.Name)
		names = append(names, n)
		content[n] = body
		if h.Typeflag == tar.TypeLink {
			content[n] = []byte("link to " + format.CleanName(h.Linkname))
		}
	}
	return names, content
}

// TestConvertLayoutByProfile converts an image with --profile: the profiled files come
// first in first-access order, every constraint an extractor needs holds, the layer holds
// the same entries with the same bytes, the config carries the new diff ID (ggcr's
// validate checks the whole image), and the index finds every file.
func TestConvertLayoutByProfile(t *testing.T) {
	src, entries := layoutTar(t)
	reg := newRegistry(t, nil)
	img := testutil.ImageOf(t, testutil.GzipLayer(t, src))
	srcRef := reg + "/app:v1"
	testutil.Push(t, srcRef, img)
	opts := testOptions()
	opts.Profile = layoutProfile()
	s := convertOK(t, srcRef, reg+"/app:laid", opts)
	// m41, a20.py, m07 (the link's target), m03, os-release, m12; not: under a symlink,
	// twice, nowhere.
	if s.Profiled != 6 {
		t.Errorf("%d files laid out first, want 6", s.Profiled)
	}
	out := dstReader{t, reg + "/app:laid"}
	rootDesc, _ := out.root()
	got := out.image(rootDesc.Digest)
	tars := tarsOf(t, got)
	cf, err := got.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if d := sha(tars[0]); len(cf.RootFS.DiffIDs) != 1 || cf.RootFS.DiffIDs[0] != d {
		t.Fatalf("config lists diff IDs %v; the layer decompresses to %s", cf.RootFS.DiffIDs, d)
	}
	if srcCfg, _ := img.ConfigFile(); cf.Architecture != srcCfg.Architecture || cf.RootFS.DiffIDs[0] == srcCfg.RootFS.DiffIDs[0] {
		t.Errorf("config %+v: want the source's with a new diff ID", cf.RootFS)
	}
	if raw, _ := got.RawConfigFile(); !bytes.Contains(raw, []byte(`"history"`)) && bytes.Contains(rawConfig(t, img), []byte(`"history"`)) {
		t.Errorf("config lost its history: %s", raw)
	}
	// The rewritten config is the one the manifest embeds, and is written as a blob too.
	if md, _ := got.Manifest(); md.Config.Data == nil || !bytes.Equal(out.blob(md.Config.Digest), md.Config.Data) {
		t.Errorf("the rewritten config is not both embedded in the manifest and written")
	}
	names, content := tarNames(t, tars[0])
	wantFirst := []string{".", "usr", "usr/lib", "usr/lib/m41.so", ".wh.app", "app", "app/.wh..wh..opq", "app/a20.py", "usr/lib/m07.so",
		"usr/lib/m03.so", "etc", "etc/os-release", "usr/lib/m12.so"}
	if !slices.Equal(names[:len(wantFirst)], wantFirst) {
		t.Errorf("layer starts with\n%q\nwant\n%q", names[:len(wantFirst)], wantFirst)
	}
	origNames, origContent := tarNames(t, src)
	if a, b := slices.Sorted(slices.Values(names)), slices.Sorted(slices.Values(origNames)); !slices.Equal(a, b) {
		t.Fatalf("entries differ:\n%q\n%q", a, b)
	}
	for n, b := range origContent {
		if !bytes.Equal(content[n], b) {
			t.Errorf("%s: content differs", n)
		}
	}
	// What extraction in tar order needs.
	pos := map[string]int{}
	for i, n := range names {
		if _, ok := pos[n]; !ok {
			pos[n] = i
		}
	}
	for _, e := range entries {
		n := format.CleanName(e.name)
		if d := path.Dir(n); n != "." && pos[d] > pos[n] {
			t.Errorf("%s comes before its directory %s", n, d)
		}
		if e.typ == tar.TypeLink && pos[e.link] > pos[n] {
			t.Errorf("hard link %s comes before its target %s", n, e.link)
		}
	}
	if i, j := slices.Index(names, "etc/twice"), slices.Index(origNames, "etc/twice"); names[i+1] != "etc/twice" || i < j {
		t.Errorf("a path that is in the layer twice moved (now at %d, was %d)", i, j)
	}
	// The index finds every file; the profiled files' chunks lead the blob.
	ls, _ := got.Layers()
	rc, _ := ls[0].Compressed()
	blob, _ := io.ReadAll(rc)
	m, _ := got.Manifest()
	fl, err := format.Open(bytes.NewReader(blob), int64(len(blob)), m.Layers[0].Annotations)
	if err != nil {
		t.Fatal(err)
	}
	for n, b := range origContent {
		e, ok := fl.Index.Lookup(n)
		if !ok {
			t.Errorf("%s not in the index", n)
			continue
		}
		if e.IsRegular() && n != "etc/twice" {
			if got, err := fl.ReadFile(e); err != nil || !bytes.Equal(got, b) {
				t.Errorf("%s through the index: %v", n, err)
			}
		}
	}
}

// TestLayoutKeepsPlainOrderWithoutProfileFiles: a profile naming nothing of a layer
// leaves it byte for byte (same diff ID, config unchanged).
func TestLayoutKeepsPlainOrderWithoutProfileFiles(t *testing.T) {
	src, _ := layoutTar(t)
	entries, trailer, err := scanTar(bytes.NewReader(src), int64(len(src)))
	if err != nil {
		t.Fatal(err)
	}
	p := &profile.Profile{Files: []profile.File{{Path: "not/here"}}}
	order, moved := layoutOrder(entries, p)
	if moved != 0 || !slices.IsSorted(order) {
		t.Errorf("moved %d, order %v", moved, order)
	}
	b, _ := io.ReadAll(sectionsReader(bytes.NewReader(src), entries, order, trailer, int64(len(src))))
	if !bytes.Equal(b, src) {
		t.Error("the stream changed")
	}
}

// FuzzLayout: for any bytes scanTar accepts, the laid-out stream has the same length and
// the same entries (a permutation of the spans), whatever the profile names.
func FuzzLayout(f *testing.F) {
	b := testutil.Tar(f, testutil.Dir("a/"), testutil.File("a/b", []byte("xyz")), testutil.File("c", []byte("xyz")), testutil.File("a/d", []byte("xyz")))
	f.Add(b, "a/d")
	f.Add(b[:700], "c")
	f.Add([]byte("not a tar"), "x")
	f.Fuzz(func(t *testing.T, src []byte, first string) {
		entries, trailer, err := scanTar(bytes.NewReader(src), int64(len(src)))
		if err != nil {
			return
		}
		p := &profile.Profile{Files: []profile.File{{Path: first}}}
		for _, e := range entries {
			p.Files = append(p.Files, profile.File{Path: e.name})
		}
		order, _ := layoutOrder(entries, p)
		if len(order) != len(entries) {
			t.Fatalf("order of %d entries for %d", len(order), len(entries))
		}
		out, err := io.ReadAll(sectionsReader(bytes.NewReader(src), entries, order, trailer, int64(len(src))))
		if err != nil || len(out) != len(src) {
			t.Fatalf("laid-out stream of %d bytes for %d: %v", len(out), len(src), err)
		}
		again, _, err := scanTar(bytes.NewReader(out), int64(len(out)))
		if err != nil || len(again) != len(entries) {
			t.Fatalf("laid-out stream: %d entries, %v; want %d", len(again), err, len(entries))
		}
	})
}
