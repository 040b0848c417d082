package profile

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"

	"lazypull/internal/testutil"
)

// start is a recorded start of sample()'s image reading paths, in that order, 100 µs apart,
// each its first 4096 bytes.
func start(paths ...string) *Profile {
	p := sample()
	p.Files = nil
	for i, path := range paths {
		p.Files = append(p.Files, File{Layer: 1, Path: path, AtUS: int64(i) * 100, Ranges: []Range{{0, 4096}}})
	}
	return p
}

func pathsOf(a *Auto) []string {
	var out []string
	for _, f := range a.Profile.Files {
		out = append(out, f.Path)
	}
	return out
}

// TestMerge: merged starts are the union of their files, ordered by the average first
// access over the starts that read each; ranges are merged; counts and digests kept; the
// merge goes through Marshal and ParseAuto unchanged.
func TestMerge(t *testing.T) {
	a := Merge(nil, "r/app", start("a", "b", "c"), []string{digest('1'), "", ""}, AutoLimits{})
	b := start("c", "a", "d")
	b.Files[1].Ranges = []Range{{8192, 100}}
	a = Merge(a, "r/app", b, nil, AutoLimits{})
	// a: (0+100)/2 = 50; b: 100; c: (200+0)/2 = 100; d: 200.
	if got, want := pathsOf(a), []string{"a", "b", "c", "d"}; !slices.Equal(got, want) {
		t.Errorf("merged %q; want %q", got, want)
	}
	if a.Starts != 2 || !slices.Equal(a.Seen, []int{2, 1, 2, 1}) || a.Digests[0] != digest('1') {
		t.Errorf("starts %d, seen %v, digests %q", a.Starts, a.Seen, a.Digests)
	}
	if got := a.Profile.Files[0].Ranges; !slices.Equal(got, []Range{{0, 4096}, {8192, 100}}) {
		t.Errorf("a's ranges %v; want both starts'", got)
	}
	doc, err := a.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseAuto(doc)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := back.Marshal(); !bytes.Equal(again, doc) {
		t.Errorf("round trip changed the document:\n%s\n%s", doc, again)
	}
	// A start of another image starts over.
	other := start("x")
	other.Subject = digest('f')
	if m := Merge(a, "r/app", other, nil, AutoLimits{}); m.Starts != 1 || !slices.Equal(pathsOf(m), []string{"x"}) {
		t.Errorf("merged a start of another image: %d starts, %q", m.Starts, pathsOf(m))
	}
}

// TestMergeBounded: past the file bound the files the fewest starts read go, the latest
// first; past the byte bound, the files in first-access order that no longer fit.
func TestMergeBounded(t *testing.T) {
	var a *Auto
	for i := range 3 {
		paths := []string{"common", "early"}
		for j := range 50 {
			paths = append(paths, fmt.Sprintf("once-%d-%d", i, j))
		}
		a = Merge(a, "r/app", start(paths...), nil, AutoLimits{Files: 10})
		if len(a.Profile.Files) > 10 {
			t.Fatalf("start %d: %d files merged; want at most 10", i, len(a.Profile.Files))
		}
	}
	got := pathsOf(a)
	if got[0] != "common" || got[1] != "early" || a.Seen[0] != 3 {
		t.Errorf("merged %q (seen %v); want the files every start read first", got, a.Seen)
	}
	if err := a.validate(); err != nil {
		t.Error(err)
	}
	b := Merge(nil, "r/app", start("a", "b", "c", "d"), nil, AutoLimits{Bytes: 3 * 4096})
	if got := pathsOf(b); !slices.Equal(got, []string{"a", "b", "c"}) || b.Profile.Bytes() > 3*4096 {
		t.Errorf("merged %q (%d bytes) under a bound of 3 files' bytes", got, b.Profile.Bytes())
	}
}

// TestParseAutoRefused: documents that break the format are refused with an error naming
// what is wrong.
func TestParseAutoRefused(t *testing.T) {
	good := Merge(nil, "r/app", start("a", "b"), []string{"", ""}, AutoLimits{})
	doc, _ := good.Marshal()
	for _, c := range []struct{ name, old, new, want string }{
		{"seen past starts", `"seen":[1,1]`, `"seen":[1,2]`, "seen[1] 2"},
		{"seen missing", `"seen":[1,1]`, `"seen":[1]`, "one of each per file"},
		{"no starts", `"starts":1`, `"starts":0`, "0 starts"},
		{"bad digest", `"digests":["",""]`, `"digests":["","sha256:zz"]`, "digests[1]"},
		{"unknown field", `"starts":1`, `"starts":1,"x":1`, "unknown field"},
		{"bad profile", `"layer":0`, `"layer":7`, "layer 7"},
	} {
		b := strings.Replace(string(doc), c.old, c.new, 1)
		if b == string(doc) {
			t.Fatalf("%s: %q not in %s", c.name, c.old, doc)
		}
		if _, err := ParseAuto([]byte(b)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want an error naming %q", c.name, err, c.want)
		}
	}
}

// FuzzParseAuto: whatever the store holds, ParseAuto allocates within the bound Parse has,
// and what it accepts marshals back to a document it accepts unchanged.
func FuzzParseAuto(f *testing.F) {
	good, _ := Merge(nil, "r/app", start("a", "b"), []string{digest('1'), ""}, AutoLimits{}).Marshal()
	f.Add(good)
	f.Add([]byte(`{"starts":1,"seen":[],"digests":[],"profile":null}`))
	f.Add([]byte(`{"seen":[0,0,0,0],"digests":["","",""]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var a *Auto
		var err error
		if n := testutil.Allocated(func() { a, err = ParseAuto(b) }); n > parseBound(len(b)) {
			t.Fatalf("parsing %d bytes allocated %d, more than %d", len(b), n, parseBound(len(b)))
		}
		if err != nil {
			return
		}
		out, err := a.Marshal()
		if err != nil {
			t.Fatalf("accepted document does not marshal: %v", err)
		}
		back, err := ParseAuto(out)
		if err != nil {
			t.Fatalf("re-encoded document refused: %v\n%s", err, out)
		}
		if again, _ := back.Marshal(); !bytes.Equal(out, again) {
			t.Fatalf("round trip changed the document:\n%s\n%s", out, again)
		}
	})
}
