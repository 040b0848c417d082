package service

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strings"

	"lazypull/internal/daemon"
	"lazypull/internal/store"
)

// Stats are the figures of the store at dir: counted by opening it when it is free, else
// what the process that holds it (a mount, the snapshotter) last wrote.
func Stats(dir string, log *slog.Logger) (daemon.Stats, error) {
	st, err := store.Open(dir, store.WithLogger(log))
	if err == nil {
		defer st.Close()
		return daemon.Stats{Store: st.Stats()}, nil
	}
	if !strings.Contains(err.Error(), "in use") {
		return daemon.Stats{}, err
	}
	s, rerr := daemon.ReadStats(dir)
	if errors.Is(rerr, fs.ErrNotExist) {
		return daemon.Stats{}, fmt.Errorf("%w; and it wrote no %s yet", err, daemon.StatsFile)
	}
	return s, rerr
}

// ProfileUsed says which profile an image's prefetch used, and how it was chosen.
func ProfileUsed(p daemon.PrefetchStats) string {
	policy := string(p.Policy)
	if policy == "" {
		policy = "unknown" // written by a lazypull before the policies
	}
	switch {
	case p.Err != "" && p.Profile != "":
		return fmt.Sprintf("%s failed (policy %s, %s): %s", p.Profile, policy, p.Source, p.Err)
	case p.Err != "":
		return fmt.Sprintf("none (policy %s): %s", policy, p.Err)
	case p.Profile != "":
		return fmt.Sprintf("%s (policy %s, %s; %s)", p.Profile, policy, p.Source, p.Why)
	case !p.Done:
		return fmt.Sprintf("looking up (policy %s)", policy)
	}
	return fmt.Sprintf("none (policy %s: %s)", policy, p.Why)
}

// Prune removes content no mount uses from the store at dir, down to target bytes (0:
// everything it can).
func Prune(ctx context.Context, dir string, target int64, log *slog.Logger) (store.PruneResult, error) {
	if target < 0 {
		return store.PruneResult{}, errors.New("-to must not be negative")
	}
	st, err := store.Open(dir, store.WithLogger(log))
	if err != nil {
		return store.PruneResult{}, err
	}
	defer st.Close()
	return st.Prune(ctx, target)
}

// VerifyStore hashes every object of the store at dir and every chunk location in them,
// and removes what does not match its digest.
func VerifyStore(ctx context.Context, dir string, log *slog.Logger) (store.VerifyResult, error) {
	st, err := store.Open(dir, store.WithLogger(log))
	if err != nil {
		return store.VerifyResult{}, fmt.Errorf("verify --store: %w", err)
	}
	defer st.Close()
	r, err := st.Verify(ctx)
	if err != nil {
		return r, fmt.Errorf("verify --store %s: %w", dir, err)
	}
	return r, nil
}
