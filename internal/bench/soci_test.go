package bench

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestSociSkip: without soci-grpc the soci mode is dropped with a loud note (an error when it
// is the only mode); with it in the repository's bin/tools, nothing is dropped.
func TestSociSkip(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // no soci-grpc on PATH
	repo := t.TempDir()
	scripts := filepath.Join(repo, "scripts")

	cfg := Config{Scripts: scripts, Modes: []Mode{ModePlain, ModeSoci}}
	note, err := sociSkip(&cfg)
	if err != nil || !strings.Contains(note, "SKIPPED") || !strings.Contains(note, "soci-grpc") {
		t.Errorf("missing soci-grpc: note %q, err %v; want a note naming it", note, err)
	}
	if !slices.Equal(cfg.Modes, []Mode{ModePlain}) {
		t.Errorf("modes %v, want [plain]", cfg.Modes)
	}
	only := Config{Scripts: scripts, Modes: []Mode{ModeSoci}}
	if _, err := sociSkip(&only); err == nil {
		t.Error("only the soci mode, soci-grpc missing: no error")
	}

	bin := filepath.Join(repo, "bin", "tools", sociBinary)
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg = Config{Scripts: scripts, Modes: []Mode{ModePlain, ModeSoci}}
	if note, err := sociSkip(&cfg); note != "" || err != nil || len(cfg.Modes) != 2 {
		t.Errorf("soci-grpc in bin/tools: note %q, err %v, modes %v; want nothing dropped", note, err, cfg.Modes)
	}
	if got := findSoci(scripts); got != bin {
		t.Errorf("findSoci = %q, want %q", got, bin)
	}
}
