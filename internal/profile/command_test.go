package profile

import (
	"slices"
	"strings"
	"testing"
)

// TestProfileCommandProgramOnly: the recorded command is the program, never its arguments
// (a profile is pushed to the registry; arguments may hold secrets).
func TestProfileCommandProgramOnly(t *testing.T) {
	r := NewRecorder()
	p, _, err := r.Profile(digest('a'), []string{digest('b')}, []string{"app", "--token=s3cr3t", "-p", "hunter2"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(p.Command, []string{"app"}) {
		t.Errorf("command %q; want the program only", p.Command)
	}
	doc, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"s3cr3t", "hunter2"} {
		if strings.Contains(string(doc), secret) {
			t.Errorf("the document carries the argument %q:\n%s", secret, doc)
		}
	}
	if p, _, err := NewRecorder().Profile(digest('a'), nil, nil); err != nil || len(p.Command) != 0 {
		t.Errorf("no command: %q, %v", p.Command, err)
	}
}
