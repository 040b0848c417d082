package service

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"lazypull/internal/daemon"
	"lazypull/internal/fetch"
	"lazypull/internal/store"
)

// TestWriteStats: what `lazypull stats` prints of a held store's figures: sizes in binary
// units, the bound, the registry's figures, the holder and each image's profile.
func TestWriteStats(t *testing.T) {
	s := daemon.Stats{
		Store:  store.Stats{Objects: 3, Bytes: 3 << 20, MaxBytes: 0, BytesFetched: 1536},
		Fetch:  &fetch.Stats{Requests: 7, Bytes: 512},
		PID:    42,
		Images: []string{"r/a", "r/b"},
		Prefetch: []daemon.PrefetchStats{
			{Image: "r/a", Policy: daemon.PolicyPinned, Profile: "sha256:p", Source: "pin", Why: "pinned", Done: true},
			{Image: "r/b", Done: false},
		},
	}
	wantStats(t, s,
		"store /st: 3 objects and 0 manifests or indexes (0 B), 3.0 MiB in all (bound none, pinned 0 B)\n",
		"fetched 0 chunks, 1.5 KiB;",
		"registry: 7 requests, 512 B read, 0 retries, 0 errors\n",
		"held by pid 42 serving r/a, r/b;",
		"profile of r/a: sha256:p (policy pinned, pin; pinned)\n",
		"profile of r/b: looking up (policy unknown)\n",
	)
}

// TestPruneVerifyStore: prune and verify --store open the store themselves, and refuse a
// negative target.
func TestPruneVerifyStore(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	ctx := context.Background()
	if _, err := Prune(ctx, dir, t.TempDir(), -1, discard()); err == nil {
		t.Error("Prune to -1 bytes: no error")
	}
	if _, err := Prune(ctx, dir, t.TempDir(), 0, discard()); err != nil {
		t.Errorf("Prune: %v", err)
	}
	var b bytes.Buffer
	damaged, err := VerifyStore(ctx, &b, dir, discard())
	if err != nil || damaged || !strings.Contains(b.String(), "0 damaged and removed") {
		t.Errorf("VerifyStore of an empty store: %v, damaged %t, %q", err, damaged, b.String())
	}
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// wantStats checks that the stats text of s (of the store /st) holds each of want.
func wantStats(t *testing.T, s daemon.Stats, want ...string) {
	t.Helper()
	var b bytes.Buffer
	WriteStats(&b, "/st", s)
	for _, w := range want {
		if !strings.Contains(b.String(), w) {
			t.Errorf("stats do not say %q:\n%s", w, b.String())
		}
	}
}
