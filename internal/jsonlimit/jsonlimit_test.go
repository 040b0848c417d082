package jsonlimit

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestCount(t *testing.T) {
	for _, c := range []struct {
		in   string
		o, a int
	}{
		{`{}`, 1, 0},
		{`{"a":[1,{"b":[]}]}`, 2, 2},
		{`{"a":"{[\"{"}`, 1, 0},
		{`["\\",{}]`, 1, 1},
		{`"\\\"{"`, 0, 0},
	} {
		if o, a := Count([]byte(c.in)); o != c.o || a != c.a {
			t.Errorf("Count(%s) = %d, %d; want %d, %d", c.in, o, a, c.o, c.a)
		}
	}
}

func TestCheck(t *testing.T) {
	small := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`
	if err := Check([]byte(small), "index"); err != nil {
		t.Error(err)
	}
	empties := `{"manifests":[` + strings.Repeat(`{},`, 100_000) + `{}]}`
	if err := Check([]byte(empties), "index"); err == nil || !strings.Contains(err.Error(), "index: 100003 objects and arrays") {
		t.Errorf("100k empty descriptors: %v", err)
	}
}

func TestElements(t *testing.T) {
	for _, c := range []struct {
		in string
		n  int
	}{
		{`[]`, 0},
		{` [ ] `, 0},
		{`[1]`, 1},
		{`[[1,2],[3,4]]`, 2},
		{`["a,b","c"]`, 2},
		{`[{"a":1,"b":[1,2]},{}]`, 2},
		{`["\"",1]`, 2},
		{`{"a":1}`, 0},
		{`null`, 0},
	} {
		if n := Elements([]byte(c.in)); n != c.n {
			t.Errorf("Elements(%s) = %d, want %d", c.in, n, c.n)
		}
	}
}

// FuzzElements: for a JSON array, Elements is the number of elements json decodes, and
// Count finds at least its own array.
func FuzzElements(f *testing.F) {
	for _, s := range []string{`[]`, `[1,"a,b",{"c":[1,2]}]`, `["\"]",[],{}]`, `[ 1 , 2 ]`, `{"a":[1]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var v []json.RawMessage
		if json.Unmarshal(b, &v) != nil || v == nil {
			return
		}
		if n := Elements(b); n != len(v) {
			t.Fatalf("Elements(%s) = %d, json decodes %d", b, n, len(v))
		}
		if _, a := Count(b); a < 1 {
			t.Fatalf("Count(%s): %d arrays", b, a)
		}
	})
}
