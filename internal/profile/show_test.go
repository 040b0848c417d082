package profile

import "testing"

// TestPrintablePath: Print prints a profile's paths (from the registry) so that none
// sends the terminal a control sequence.
func TestPrintablePath(t *testing.T) {
	for in, want := range map[string]string{
		"usr/bin/python3":   "/usr/bin/python3",
		"usr/lib/é.py":      "/usr/lib/é.py",
		"x\x1b]0;pwned\x07": `"/x\x1b]0;pwned\a"`,
		"a\tb":              `"/a\tb"`,
		"line\nbreak":       `"/line\nbreak"`,
	} {
		if got := printablePath(in); got != want {
			t.Errorf("printablePath(%q) = %s, want %s", in, got, want)
		}
	}
}
