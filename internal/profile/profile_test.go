package profile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"lazypull/format"
	"lazypull/internal/testutil"
)

func digest(c byte) string { return "sha256:" + strings.Repeat(string(c), 64) }

func sample() *Profile {
	return &Profile{
		Subject: digest('a'),
		Created: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
		Command: []string{"python3", "-c", "print(1)"},
		Layers:  []string{digest('b'), digest('c')},
		Files: []File{
			{Layer: 1, Path: "usr/bin/python3", AtUS: 10, Ranges: []Range{{0, 4096}, {8192, 100}}},
			{Layer: 0, Path: "etc/ld.so.cache", AtUS: 10, Ranges: []Range{{0, 20}}},
		},
	}
}

func TestRoundTrip(t *testing.T) {
	p := sample()
	b, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`"ranges":[[0,4096],[8192,100]]`)) {
		t.Errorf("ranges not written as pairs: %s", b)
	}
	q, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := q.Marshal()
	if !bytes.Equal(b, b2) {
		t.Errorf("round trip changed the document:\n%s\n%s", b, b2)
	}
	if q.Bytes() != 4096+100+20 {
		t.Errorf("Bytes = %d", q.Bytes())
	}
}

// TestParseRefuses: every malformed document is refused with an error naming what is
// wrong and where.
func TestParseRefuses(t *testing.T) {
	good, _ := sample().Marshal()
	edit := func(f func(p *Profile)) string {
		p := sample()
		f(p)
		b, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	cases := []struct{ name, doc, want string }{
		{"empty", "", "not a profile document"},
		{"not json", "{", "not a profile document"},
		{"array", "[]", "not a profile document"},
		{"unknown field", strings.Replace(string(good), `"subject"`, `"extra":1,"subject"`, 1), "unknown field"},
		{"trailing", string(good) + "{}", "data after the document"},
		{"bad subject", edit(func(p *Profile) { p.Subject = "sha256:xyz" }), "subject"},
		{"bad layer digest", edit(func(p *Profile) { p.Layers[1] = "md5:00" }), "layers[1]"},
		{"layer out of range", edit(func(p *Profile) { p.Files[0].Layer = 2 }), "files[0]"},
		{"negative layer", edit(func(p *Profile) { p.Files[1].Layer = -1 }), "files[1]"},
		{"absolute path", edit(func(p *Profile) { p.Files[0].Path = "/etc/passwd" }), "cleaned relative path"},
		{"dotdot path", edit(func(p *Profile) { p.Files[0].Path = "../etc/passwd" }), "cleaned relative path"},
		{"unclean path", edit(func(p *Profile) { p.Files[0].Path = "usr//bin" }), "cleaned relative path"},
		{"root path", edit(func(p *Profile) { p.Files[0].Path = "." }), "cleaned relative path"},
		{"empty path", edit(func(p *Profile) { p.Files[0].Path = "" }), "empty path"},
		{"nul path", edit(func(p *Profile) { p.Files[0].Path = "a\x00b" }), "NUL"},
		{"no ranges", edit(func(p *Profile) { p.Files[0].Ranges = nil }), "no ranges"},
		{"zero length", edit(func(p *Profile) { p.Files[0].Ranges[0].Len = 0 }), "ranges[0]"},
		{"negative offset", edit(func(p *Profile) { p.Files[0].Ranges[0].Off = -1 }), "ranges[0]"},
		{"overflow", edit(func(p *Profile) { p.Files[0].Ranges[1] = Range{1 << 62, 1 << 62} }), "ranges[1]"},
		{"unsorted", edit(func(p *Profile) { p.Files[0].Ranges[1].Off = 10 }), "sorted"},
		{"touching", edit(func(p *Profile) { p.Files[0].Ranges[1].Off = 4096 }), "sorted"},
		{"time goes back", edit(func(p *Profile) { p.Files[1].AtUS = 5 }), "first-access order"},
		{"range triple", strings.Replace(string(good), "[0,20]", "[0,20,3]", 1), "range"},
		{"range string", strings.Replace(string(good), "[0,20]", `"0-20"`, 1), "range"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.doc))
			if err == nil {
				t.Fatalf("Parse accepted %s", c.doc)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("Parse error %q, want it to mention %q", err, c.want)
			}
		})
	}
}

func TestParseLimits(t *testing.T) {
	big := make([]byte, MaxSize+1)
	if _, err := Parse(big); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized document: %v, want ErrTooLarge", err)
	}
	p := sample()
	p.Files = nil
	for i := range MaxFiles + 1 {
		p.Files = append(p.Files, File{Layer: 0, Path: fmt.Sprint("f", i), Ranges: []Range{{0, 1}}})
	}
	b, _ := json.Marshal(p)
	if _, err := Parse(b); err == nil || !strings.Contains(err.Error(), "files, more than") {
		t.Errorf("too many files: %v", err)
	}
	p = sample()
	p.Files[0].Ranges = nil
	for i := range MaxRanges + 1 {
		p.Files[0].Ranges = append(p.Files[0].Ranges, Range{int64(2 * i), 1})
	}
	b, _ = json.Marshal(p)
	if _, err := Parse(b); err == nil || !strings.Contains(err.Error(), "ranges, more than") {
		t.Errorf("too many ranges: %v", err)
	}
}

// TestReadFile: a document in a file reads as Parse reads it; a file over MaxSize is
// refused with ErrTooLarge, naming the file.
func TestReadFile(t *testing.T) {
	good, _ := sample().Marshal()
	p, err := ReadFile(testutil.WriteTemp(t, "profile.json", good))
	if err != nil || !reflect.DeepEqual(p, sample()) {
		t.Fatalf("ReadFile = %+v, %v; want the sample", p, err)
	}
	big := testutil.WriteTemp(t, "big.json", make([]byte, MaxSize+2))
	if _, err := ReadFile(big); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), big) {
		t.Errorf("oversized file: %v, want ErrTooLarge naming %s", err, big)
	}
}

func entry(name string, size int64) *format.Entry {
	return &format.Entry{Name: name, Type: '0', Size: size}
}

func TestRecorder(t *testing.T) {
	r := NewRecorder()
	clock := r.start
	r.now = func() time.Time { clock = clock.Add(time.Millisecond); return clock }
	a, b := entry("bin/a", 1<<20), entry("lib/b", 100)
	r.Record(1, a, 4096, 4096)
	r.Record(0, b, 0, 100)
	r.Record(1, a, 0, 4096)      // touches: merges
	r.Record(1, a, 100000, 10)   // apart
	r.Record(1, a, 50000, 60000) // bridges the gap to the last
	r.Record(1, a, 0, 0)         // nothing read
	p, truncated, err := r.Profile(digest('a'), []string{digest('b'), digest('c')}, []string{"x"})
	if err != nil || truncated {
		t.Fatal(err, truncated)
	}
	if len(p.Files) != 2 || p.Files[0].Path != "bin/a" || p.Files[1].Path != "lib/b" {
		t.Fatalf("files not in first-access order: %+v", p.Files)
	}
	if got, want := fmt.Sprint(p.Files[0].Ranges), "[{0 8192} {50000 60000}]"; got != want {
		t.Errorf("ranges %s, want %s", got, want)
	}
	if p.Files[0].AtUS >= p.Files[1].AtUS {
		t.Errorf("first-access times %d, %d", p.Files[0].AtUS, p.Files[1].AtUS)
	}
}

// TestRecorderCoarsens: a file read in more than MaxRanges pieces keeps MaxRanges ranges
// covering every byte read.
func TestRecorderCoarsens(t *testing.T) {
	r := NewRecorder()
	e := entry("big", 1<<30)
	for i := range MaxRanges + 50 {
		r.Record(0, e, int64(i)*10000+int64(i%7)*100, 10)
	}
	p, _, err := r.Profile(digest('a'), []string{digest('b')}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rs := p.Files[0].Ranges
	if len(rs) != MaxRanges {
		t.Fatalf("%d ranges", len(rs))
	}
	for i := range MaxRanges + 50 {
		off := int64(i)*10000 + int64(i%7)*100
		covered := false
		for _, x := range rs {
			covered = covered || x.Off <= off && off+10 <= x.End()
		}
		if !covered {
			t.Fatalf("read at %d not covered", off)
		}
	}
}

func index(entries ...*format.Entry) *format.Index {
	ix := &format.Index{}
	for _, e := range entries {
		ix.Entries = append(ix.Entries, *e)
	}
	return ix
}

func TestPlan(t *testing.T) {
	lower := index(entry("usr/bin/python3", 1000), entry("usr/lib/libbig.so", 3*PlanGap), entry("etc/os-release", 50), &format.Entry{Name: "etc/link", Type: '1', Linkname: "etc/os-release"})
	upper := index(entry("app/main.py", 300), &format.Entry{Name: "etc/os-release", Type: '5'})
	p := &Profile{Subject: digest('a'), Layers: []string{digest('b'), digest('c'), digest('9')}, Files: []File{
		{Layer: 0, Path: "usr/bin/python3", Ranges: []Range{{0, 100}, {900, 500}, {2000, 10}}}, // bridged, clipped
		{Layer: 0, Path: "usr/lib/libbig.so", Ranges: []Range{{0, 10}, {PlanGap + 10, 10}, {2*PlanGap + 21, 10}}},
		{Layer: 1, Path: "app/gone.py", Ranges: []Range{{0, 1}}},     // stale
		{Layer: 0, Path: "etc/link", Ranges: []Range{{0, 50}}},       // hard link
		{Layer: 2, Path: "app/main.py", Ranges: []Range{{0, 300}}},   // other layer digest: by path
		{Layer: 2, Path: "etc/os-release", Ranges: []Range{{0, 50}}}, // now a directory
	}}
	wants, stale := p.Plan([]Layer{{digest('b'), lower}, {digest('c'), upper}})
	if got, want := fmt.Sprint(stale), "[app/gone.py etc/os-release]"; got != want {
		t.Errorf("stale %s, want %s", got, want)
	}
	if len(wants) != 4 {
		t.Fatalf("wants %+v", wants)
	}
	// A hole of at most PlanGap is fetched with its neighbours; a larger one is not.
	if w := wants[0]; w.Layer != 0 || w.Entry.Name != "usr/bin/python3" || fmt.Sprint(w.Ranges) != "[{0 1000}]" {
		t.Errorf("python3: %+v", w)
	}
	if w := wants[1]; w.Entry.Name != "usr/lib/libbig.so" || fmt.Sprint(w.Ranges) != fmt.Sprint([]Range{{0, PlanGap + 20}, {2*PlanGap + 21, 10}}) {
		t.Errorf("libbig.so: %+v", w)
	}
	if w := wants[2]; w.Layer != 0 || w.Entry.Name != "etc/os-release" {
		t.Errorf("hard link not resolved: %+v", w)
	}
	if w := wants[3]; w.Layer != 1 || w.Entry.Name != "app/main.py" {
		t.Errorf("by path: %+v", w)
	}
}

// parseBound is what Parse may allocate for a document of n bytes.
func parseBound(n int) uint64 { return 16*uint64(n) + 1<<20 }

// TestParseBounded: documents of MaxSize bytes made of the cheapest text for the costliest
// values (empty objects, each a File; empty strings; short ranges) decoded into 300 MiB to
// 1 GiB before their limits were checked. Now each array is counted first and decoded into
// exactly its length: Parse allocates at most parseBound, 16 times the document.
func TestParseBounded(t *testing.T) {
	head := `{"subject":"` + digest('a') + `","created":"2025-01-01T00:00:00Z","layers":[],`
	for _, c := range []struct{ name, pre, el, post, want string }{
		{"files", head + `"files":[`, `{}`, `]}`, "files, more than"},
		{"ranges", head + `"files":[{"layer":0,"path":"a","at_us":0,"ranges":[`, `[0,1]`, `]}]}`, "ranges, more than"},
		{"command", head + `"files":[],"command":[`, `""`, `]}`, "command arguments, more than"},
		{"layers", head + `"files":[],"layers":[`, `""`, `]}`, "layers, more than"},
		{"many files with ranges", head + `"files":[`, `{"ranges":[` + strings.Repeat(`[0,1],`, 27) + `[0,1]]}`, `]}`, "files[0]"},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := (MaxSize - len(c.pre) - len(c.post)) / (len(c.el) + 1)
			b := []byte(c.pre + strings.Repeat(c.el+",", n-1) + c.el + c.post)
			var err error
			a := testutil.Allocated(func() { _, err = Parse(b) })
			t.Logf("%d bytes: allocated %d: %v", len(b), a, err)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want one naming %q", err, c.want)
			}
			if a > parseBound(len(b)) {
				t.Fatalf("parsing %d bytes allocated %d, more than %d", len(b), a, parseBound(len(b)))
			}
		})
	}
}

// FuzzParse: Parse never panics, allocates at most parseBound, and what it accepts
// encodes to a document it accepts again, unchanged.
func FuzzParse(f *testing.F) {
	good, _ := sample().Marshal()
	f.Add(good)
	f.Add([]byte(`{"subject":"sha256:` + strings.Repeat("0", 64) + `","created":"2025-01-01T00:00:00Z","layers":[],"files":[]}`))
	f.Add([]byte(`{"files":[{"ranges":[[1,2]]}]}`))
	f.Add([]byte("null"))
	f.Add([]byte(`{"files":[{},{},{}],"command":["","",""],"layers":[""]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var p *Profile
		var err error
		if a := testutil.Allocated(func() { p, err = Parse(b) }); a > parseBound(len(b)) {
			t.Fatalf("parsing %d bytes allocated %d, more than %d", len(b), a, parseBound(len(b)))
		}
		if err != nil {
			return
		}
		out, err := p.Marshal()
		if err != nil {
			t.Fatalf("accepted profile does not marshal: %v", err)
		}
		q, err := Parse(out)
		if err != nil {
			t.Fatalf("re-encoded profile refused: %v\n%s", err, out)
		}
		out2, _ := q.Marshal()
		if !bytes.Equal(out, out2) {
			t.Fatalf("not stable:\n%s\n%s", out, out2)
		}
	})
}
