package jsonlimit

import (
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
