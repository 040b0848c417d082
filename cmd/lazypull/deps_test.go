package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoBenchInProduct: the product binary links no benchmark harness and no chart code:
// those are cmd/lazypull-bench's (internal/bench, image/png). It asks the go command for
// cmd/lazypull's dependencies, as the build sees them.
func TestNoBenchInProduct(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	out, err := exec.Command(goBin, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 || !contains(deps, "lazypull/internal/cli") {
		t.Fatalf("go list -deps listed %d packages, without lazypull/internal/cli: %q", len(deps), out)
	}
	for _, p := range deps {
		if p == "lazypull/internal/bench" || strings.HasPrefix(p, "lazypull/internal/bench/") ||
			p == "image/png" || strings.HasPrefix(p, "image/") || p == "image" ||
			strings.Contains(p, "chart") || strings.Contains(p, "plot") {
			t.Errorf("cmd/lazypull depends on %s: the bench harness and its charts belong to cmd/lazypull-bench", p)
		}
	}
}

func contains(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}
