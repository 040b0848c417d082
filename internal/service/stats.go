package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"strings"

	"lazypull/internal/daemon"
	"lazypull/internal/progress"
	"lazypull/internal/store"
)

// Stats are the figures of the store at dir: counted by opening it when it is free, else
// what the process that holds it (a mount, the snapshotter) last wrote.
func Stats(dir string, log *slog.Logger) (daemon.Stats, error) {
	st, err := store.Open(dir, store.WithExisting(), store.WithLogger(log))
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

// WriteStats writes s, the figures of the store at dir, as `lazypull stats` shows them.
func WriteStats(w io.Writer, dir string, s daemon.Stats) {
	st := s.Store
	fmt.Fprintf(w, "store %s: %d objects and %d manifests or indexes (%s), %s in all (bound %s, pinned %s)\n", dir, st.Objects, st.Meta, humanBytes(st.MetaBytes), humanBytes(st.Bytes), boundString(st.MaxBytes), humanBytes(st.PinnedBytes))
	fmt.Fprintf(w, "reads: %d hits, %d misses; fetched %d chunks, %s; %d corrupt; %d evictions (%s)\n",
		st.Hits, st.Misses, st.ChunksFetched, humanBytes(st.BytesFetched), st.Corrupt, st.Evictions, humanBytes(st.EvictedBytes))
	if s.Fetch != nil {
		fmt.Fprintf(w, "registry: %d requests, %s read, %d retries, %d errors\n", s.Fetch.Requests, humanBytes(s.Fetch.Bytes), s.Fetch.Retries, s.Fetch.Errors)
	}
	if s.PID != 0 {
		fmt.Fprintf(w, "held by pid %d serving %s; figures of %s\n", s.PID, strings.Join(s.Images, ", "), s.Written.Format("15:04:05"))
	}
	for _, im := range s.Open {
		fmt.Fprintf(w, "image %s: %s\n", im.Image, imageState(im))
	}
	for _, p := range s.Prefetch {
		fmt.Fprintf(w, "profile of %s: %s\n", p.Image, profileUsed(p))
	}
}

// imageState says whether an image's layers are lazy, and why those that are not, with
// what its registry served.
func imageState(im daemon.ImageStats) string {
	if im.Err != "" {
		return "not lazy, every layer downloaded whole: " + im.Err
	}
	var b strings.Builder
	switch {
	case im.Layers > 0 && im.Lazy == im.Layers:
		b.WriteString("lazy")
	case im.Lazy > 0:
		b.WriteString("partly lazy")
	default:
		b.WriteString("not lazy")
	}
	fmt.Fprintf(&b, ", %d of %d layers", im.Lazy, im.Layers)
	if im.Plain > 0 {
		fmt.Fprintf(&b, "; %d not lazypull layers", im.Plain)
	}
	for _, r := range daemon.FallbackReasons {
		if n := im.Fallbacks[r]; n > 0 {
			fmt.Fprintf(&b, "; %d downloaded whole (%s)", n, r)
		}
	}
	if f := im.Fetch; f != nil {
		fmt.Fprintf(&b, "; registry: %d requests, %s read, %d errors", f.Requests, humanBytes(f.Bytes), f.Errors)
	}
	return b.String()
}

func boundString(n int64) string {
	if n == 0 {
		return "none"
	}
	return humanBytes(n)
}

func humanBytes(n int64) string { return progress.HumanBytes(n) }

// profileUsed says which profile an image's prefetch used, and how it was chosen.
func profileUsed(p daemon.PrefetchStats) string {
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

// VerifyStore hashes every object of the store at dir and every chunk location in them,
// removes what does not match its digest, and writes the counts to w; damaged: it removed
// something.
func VerifyStore(ctx context.Context, w io.Writer, dir string, log *slog.Logger) (damaged bool, err error) {
	st, err := store.Open(dir, store.WithExisting(), store.WithLogger(log))
	if err != nil {
		return false, fmt.Errorf("verify --store: %w", err)
	}
	defer st.Close()
	r, err := st.Verify(ctx)
	if err != nil {
		return false, fmt.Errorf("verify --store %s: %w", dir, err)
	}
	fmt.Fprintf(w, "store %s: %d objects (%s) hashed, %d damaged and removed; %d chunk locations checked, %d wrong and forgotten\n",
		dir, r.Objects, humanBytes(r.Bytes), r.Bad, r.Chunks, r.BadChunks)
	return r.Bad > 0 || r.BadChunks > 0, nil
}
