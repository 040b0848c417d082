package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"lazypull/internal/cmdline"
)

// TestMistypedStore: stats, prune and verify --store on a directory that holds no store
// refuse, saying so, and do not make one there.
func TestMistypedStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "lazypul") // the store's name, mistyped
	for _, args := range [][]string{{"stats", "--store", dir}, {"prune", "--store", dir}, {"verify", "--store", "--store-dir", dir}} {
		code, _, stderr := run(t, args...)
		if code != cmdline.ExitFailure || !strings.Contains(stderr, "no lazypull store at "+dir) {
			t.Errorf("%q: exit %d, stderr %q; want %d and %q", args, code, stderr, cmdline.ExitFailure, "no lazypull store at "+dir)
		}
		if _, err := os.Stat(dir); err == nil {
			t.Fatalf("%q made %s", args, dir)
		}
	}
}
