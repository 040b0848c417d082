package daemon

import (
	"bytes"
	"slices"
	"testing"
)

// words scans b in pieces split at cuts, and returns the words matched.
func words(b []byte, cuts ...int) []string {
	var out []string
	w := wordScanner{match: func(word []byte) { out = append(out, string(word)) }}
	prev := 0
	for _, c := range append(cuts, len(b)) {
		w.scan(b[prev:c])
		prev = c
	}
	w.end()
	return out
}

// FuzzWordScanner: the words of an added file are the same however its bytes are cut into
// pieces, each of namedMinWord to namedMaxWord word bytes, and a longer run gives none.
func FuzzWordScanner(f *testing.F) {
	f.Add([]byte("\x00\x08datetime\xda\x06struct)"), 5)
	f.Add([]byte("libyaml-0.so.2\x00ab\x00"+string(bytes.Repeat([]byte("x"), 300))), 100)
	f.Fuzz(func(t *testing.T, b []byte, cut int) {
		if len(b) > 1<<16 {
			return
		}
		whole := words(b)
		cut = max(0, min(len(b), cut))
		if got := words(b, cut); !slices.Equal(got, whole) {
			t.Fatalf("cut at %d: %q; whole: %q", cut, got, whole)
		}
		for _, w := range whole {
			if len(w) < namedMinWord || len(w) > namedMaxWord || !bytes.Contains(b, []byte(w)) {
				t.Fatalf("word %q", w)
			}
		}
	})
}

func TestWordScanner(t *testing.T) {
	b := []byte("\x00\x08datetime\xda\x06struct)libyaml-0.so.2 ab " + string(bytes.Repeat([]byte("y"), 256)) + ".abc")
	if got, want := words(b, 7, 20), []string{"datetime", "struct", "libyaml-0", "abc"}; !slices.Equal(got, want) {
		t.Errorf("words %q; want %q", got, want)
	}
}
