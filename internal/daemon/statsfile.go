package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"lazypull/internal/fetch"
	"lazypull/internal/store"
)

// StatsFile is the name, in the store directory, of the figures the process that holds the
// store writes for `lazypull stats` (the store is open in one process at a time).
const StatsFile = "stats.json"

// Stats is what `lazypull stats` reports.
type Stats struct {
	Store   store.Stats  `json:"store"`
	Fetch   *fetch.Stats `json:"fetch,omitempty"`
	PID     int          `json:"pid,omitempty"`
	Written time.Time    `json:"written"`
	Images  []string     `json:"images,omitempty"`
	// Open has one entry per image open (or that failed to open, for the snapshotter):
	// whether its layers are mounted lazily, and its registry's figures.
	Open []ImageStats `json:"open,omitempty"`
	// Prefetch has one entry per image that looked for a profile.
	Prefetch []PrefetchStats `json:"prefetch,omitempty"`
	// BackgroundFetch has one entry per image with a background fill.
	BackgroundFetch []FillStats `json:"background_fetch,omitempty"`
}

// ImageStats is one image as `lazypull stats` lists it.
type ImageStats struct {
	Image string `json:"image"`
	// Layers is the image's layers; Lazy those mounted (or to be mounted) lazily.
	Layers int `json:"layers"`
	Lazy   int `json:"lazy"`
	// Plain is the layers that are no lazypull layers (unpacked as usual by design);
	// Fallbacks the lazypull layers downloaded whole instead, by reason (FallbackReasons).
	Plain     int            `json:"plain,omitempty"`
	Fallbacks map[string]int `json:"fallbacks,omitempty"`
	// Err is why the image did not open at all (every layer downloaded whole).
	Err   string       `json:"err,omitempty"`
	Fetch *fetch.Stats `json:"fetch,omitempty"`
}

// imageStats is what Stats lists of im.
func imageStats(im *Image) ImageStats {
	lazy := len(im.Layers) + len(im.indexed) // indexed: served from the image's index artifact
	s := ImageStats{Image: im.Ref, Layers: lazy + len(im.Failed), Lazy: lazy}
	for _, err := range im.Failed {
		if errors.Is(err, ErrNotLazy) {
			s.Plain++
			continue
		}
		if s.Fallbacks == nil {
			s.Fallbacks = map[string]int{}
		}
		s.Fallbacks[fallbackReason(indexError{err})]++ // as Mount names it (SnapshotFS.layer)
	}
	r := im.Registry.Stats()
	s.Fetch = &r
	return s
}

// CollectStats gathers the store's figures and the fetch figures of the given images.
func CollectStats(st *store.Store, images []*Image) Stats {
	s := Stats{Store: st.Stats()}
	var fs fetch.Stats
	for _, im := range images {
		r := im.Registry.Stats()
		fs.Requests += r.Requests
		fs.Bytes += r.Bytes
		fs.Delivered += r.Delivered
		fs.Retries += r.Retries
		fs.Errors += r.Errors
		fs.Fallbacks += r.Fallbacks
		s.Images = append(s.Images, im.Ref)
		s.Open = append(s.Open, imageStats(im))
		if ps, ok := im.PrefetchStats(); ok {
			s.Prefetch = append(s.Prefetch, ps)
		}
		if fs, ok := im.FillStats(); ok {
			s.BackgroundFetch = append(s.BackgroundFetch, fs)
		}
	}
	s.Fetch = &fs
	return s
}

// WriteStats writes s atomically into dir/stats.json.
func WriteStats(dir string, s Stats) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".stats-*")
	if err != nil {
		return fmt.Errorf("write stats: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write stats: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write stats: %w", err)
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, StatsFile))
}

// ReadStats reads what the store's owner last wrote.
func ReadStats(dir string) (Stats, error) {
	var s Stats
	b, err := os.ReadFile(filepath.Join(dir, StatsFile))
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("%s: %w", filepath.Join(dir, StatsFile), err)
	}
	return s, nil
}

// KeepStats writes stats every interval until ctx ends, and once more then; and at once
// when kick fires (an image opened, a layer mounted), so that `lazypull stats` right after
// a container starts shows it.
func KeepStats(ctx context.Context, dir string, interval time.Duration, kick <-chan struct{}, collect func() Stats) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		s := collect()
		s.PID, s.Written = os.Getpid(), time.Now().UTC()
		_ = WriteStats(dir, s) // best effort: figures for humans, never worth failing a mount
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-kick:
		}
	}
}
