package cli

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"lazypull/format"
	"lazypull/internal/store"
	"lazypull/internal/testutil"
)

// TestVerifyStoreCLI: verify --store refuses a store another process holds, and removes a
// damaged object from one it can open, exiting 1.
func TestVerifyStoreCLI(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.PutMeta([]byte("x")); err != nil {
		t.Fatal(err)
	}
	code, _, errs := run(t, "verify", "--store", "--store-dir", dir)
	if code != 1 || !strings.Contains(errs, "in use by another process") {
		t.Errorf("held store: exit %d; want 1 naming the lock\n%s", code, errs)
	}
	st.Close()
	// An object under a name that is not its content's digest: what a bad disk leaves.
	d := sha256.Sum256([]byte("right"))
	p := filepath.Join(dir, "objects", format.Digest(d).String()[7:9], format.Digest(d).String()[7:])
	testutil.WriteFile(t, p, []byte("wrong"), 0o444)
	code, out, errs := run(t, "verify", "--store", "--store-dir", dir)
	if code != 1 || !strings.Contains(out, "1 damaged and removed") {
		t.Errorf("damaged store: exit %d\n%s%s", code, out, errs)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Errorf("damaged object still there: %v", err)
	}
	code, out, _ = run(t, "verify", "--store", "--store-dir", dir)
	if code != 0 || !strings.Contains(out, "0 damaged") {
		t.Errorf("after removal: exit %d\n%s", code, out)
	}
}
