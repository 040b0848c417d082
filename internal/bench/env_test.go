package bench

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestReadInFollowsLibraries: a dynamically linked program is read back with its
// interpreter and libraries (ls needs libc), each once; a program that does not exist is
// an error naming it.
func TestReadInFollowsLibraries(t *testing.T) {
	seen := map[string]bool{}
	if err := readIn("ls", seen); err != nil {
		t.Fatal(err)
	}
	var libc, interp bool
	for p := range seen {
		libc = libc || strings.HasPrefix(filepath.Base(p), "libc.so")
		interp = interp || strings.HasPrefix(filepath.Base(p), "ld-linux")
	}
	if !libc || !interp {
		t.Errorf("read %v; want ls, its interpreter and libc", seen)
	}
	err := readIn("lazypull-no-such-program", seen)
	if err == nil || !strings.Contains(err.Error(), "lazypull-no-such-program") {
		t.Errorf("readIn of a missing program: %v", err)
	}
}
