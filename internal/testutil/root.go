package testutil

import (
	"os"
	"testing"
)

// NeedRoot skips the test unless it runs as root; why says what needs root.
func NeedRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("SKIP: needs root (%s)", why)
	}
}
