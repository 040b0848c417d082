package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"time"
)

// The indexed modes: the original gzip image, unconverted, with an index artifact that
// `lazypull index` pushed beside it (before the runs, never timed), pulled with `lazypull
// pull` and run on the lazypull snapshotter, which serves its layers lazily from the index.
// The image is the original's layout pushed again into a repository of its own, so that
// the referrers of the image plain runs (an index, a profile) are never mixed with it.
const (
	// ModeIndex: as ModeLazypull (prefetch off), on the indexed original image.
	ModeIndex Mode = "lazypull-index"
	// ModeIndexProfile: as ModeProfile, on the indexed original image; its profile is
	// recorded by `lazypull profile` on that image (no pack: there are no lazypull layers).
	ModeIndexProfile Mode = "lazypull-index-profile"

	// indexRepo is the repository of the indexed images, tagged by image name.
	indexRepo = "bench/indexed"
)

// isIndexed reports whether m runs the unconverted image with an index artifact.
func isIndexed(m Mode) bool { return m == ModeIndex || m == ModeIndexProfile }

// prefetches reports whether m's snapshotter looks up prefetch profiles.
func prefetches(m Mode) bool { return m == ModeProfile || m == ModeAuto || m == ModeIndexProfile }

// IndexedInfo describes an image's indexed copy, made for the indexed modes.
type IndexedInfo struct {
	// Seconds is the wall clock of `lazypull index` (from the registry, not through a link).
	Seconds float64 `json:"index_s"`
	// Profile is the prefetch profile recorded on the indexed image for ModeIndexProfile.
	Profile *ProfileInfo `json:"profile,omitempty"`
}

// pushIndexed pushes im's layout as REG/indexRepo:NAME, indexes it with `lazypull index`
// and, when ModeIndexProfile runs, records and pushes its profile (as ModeProfile does).
// Nothing here runs through a link.
func pushIndexed(ctx context.Context, cfg Config, reg string, im Image) (*IndexedInfo, error) {
	ref := reg + "/" + indexRepo + ":" + im.Name
	if _, err := command(ctx, nil, "skopeo", "copy", "--quiet", "--dest-tls-verify=false",
		"oci:"+filepath.Join(cfg.ImagesDir, im.Name)+":"+im.Name, "docker://"+ref); err != nil {
		return nil, err
	}
	t0 := time.Now()
	args := []string{"index", "--plain-http"}
	if cfg.IndexSpan > 0 {
		args = append(args, "--span", strconv.FormatInt(cfg.IndexSpan, 10))
	}
	args = append(args, ref)
	if _, err := command(ctx, nil, cfg.Lazypull, args...); err != nil {
		return nil, err
	}
	info := &IndexedInfo{Seconds: time.Since(t0).Seconds()}
	if slices.Contains(cfg.Modes, ModeIndexProfile) {
		p, err := recordProfile(ctx, cfg, im, ref, im.Name+".indexed.profile.json")
		if err != nil {
			return nil, fmt.Errorf("record the profile of the indexed image: %w", err)
		}
		info.Profile = p
	}
	return info, nil
}

// pushIndexedImages makes the indexed copy of each image when an indexed mode runs.
func pushIndexedImages(ctx context.Context, cfg Config, reg string, infos []ImageInfo, pg *progress) error {
	if !slices.ContainsFunc(cfg.Modes, isIndexed) {
		return nil
	}
	for i := range infos {
		im := infos[i].Image
		pg.step("indexing " + im.Name + " (lazypull index)")
		idx, err := pushIndexed(ctx, cfg, reg, im)
		if err != nil {
			return &StepError{Image: im.Name, Mode: ModeIndex, Step: "index and profile", Err: err, Msg: err.Error()}
		}
		infos[i].Indexed = idx
	}
	return nil
}
