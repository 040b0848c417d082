package cmdline

import (
	"bytes"
	"errors"
	"os"
	"testing"
)

// TestUsagef: a usage error says what is wrong and is told apart from other errors.
func TestUsagef(t *testing.T) {
	err := Usagef("want %d, got %d", 1, 2)
	var ue *UsageError
	if !errors.As(err, &ue) || err.Error() != "want 1, got 2" {
		t.Fatalf("Usagef = %v (%T)", err, err)
	}
	if errors.As(errors.New("other"), &ue) {
		t.Fatal("another error taken for a usage error")
	}
}

// TestTerminal: a buffer and a regular file are no terminal.
func TestTerminal(t *testing.T) {
	if _, ok := Terminal(&bytes.Buffer{}); ok {
		t.Error("a buffer is a terminal")
	}
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, ok := Terminal(f); ok {
		t.Error("a regular file is a terminal")
	}
}
