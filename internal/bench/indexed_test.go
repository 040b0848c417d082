package bench

import (
	"log/slog"
	"strings"
	"testing"
)

// TestIndexedModes: the indexed modes run the original image from a repository of its own
// on the lazypull snapshotter, the profile mode alone with prefetch on; Validate takes them.
func TestIndexedModes(t *testing.T) {
	p := unreachableProxy(t)
	for _, tc := range []struct {
		m                       Mode
		indexed, prefetch, lazy bool
		wantRef                 string
	}{
		{ModePlain, false, false, false, "/bench/python:orig"},
		{ModeLazypull, false, false, true, "/bench/python:lazy"},
		{ModeProfile, false, true, true, "/bench/python:lazy"},
		{ModeIndex, true, false, true, "/bench/indexed:python"},
		{ModeIndexProfile, true, true, true, "/bench/indexed:python"},
	} {
		if isIndexed(tc.m) != tc.indexed || prefetches(tc.m) != tc.prefetch || tc.m.lazy() != tc.lazy {
			t.Errorf("mode %s: indexed %v, prefetch %v, lazy %v; want %v, %v, %v", tc.m,
				isIndexed(tc.m), prefetches(tc.m), tc.m.lazy(), tc.indexed, tc.prefetch, tc.lazy)
		}
		if got := ref(p, Image{Name: "python"}, tc.m); got != p.Addr()+tc.wantRef {
			t.Errorf("ref in mode %s: %s, want %s%s", tc.m, got, p.Addr(), tc.wantRef)
		}
	}
	cfg := Config{Images: []string{"python"}, Links: []Link{{Name: "l"}}, Modes: []Mode{ModeIndex, ModeIndexProfile}, N: 1}
	if err := cfg.Validate(); err != nil {
		t.Errorf("indexed modes refused: %v", err)
	}
	cfg.Modes = []Mode{"lazypull-indexed"}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "lazypull-index-profile") {
		t.Errorf("unknown mode: %v; want an error listing the known ones", err)
	}
}

// unreachableProxy is a link in front of nothing, closed when the test ends: for the addresses
// ref gives.
func unreachableProxy(t *testing.T) *Proxy {
	t.Helper()
	p, err := NewProxy("127.0.0.1:1", Link{Name: "l", Rate: 1e6}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}
