// Package verify checks a lazypull image against itself: its layer indexes against the
// layers' tar streams, chunks and digests, as `lazypull verify REF` reports it.
package verify

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/format"
	"lazypull/internal/fetch"
)

// ErrMismatch: the check ran and found a mismatch (written already).
var ErrMismatch = errors.New("verify: mismatch found")

// Image reads every layer of the image at ref whole, as a plain pull does, and checks
// what a lazy mount would serve against what an unpacking runtime sees: each layer's blob
// against its digest in the manifest, its tar stream against the diff ID in the config,
// every chunk against its digest in the index, and every entry of the index against its tar
// header. It writes one line per layer to w, and returns ErrMismatch when any does not
// match (or the image has no lazypull layer).
func Image(ctx context.Context, w io.Writer, ref string, platform *v1.Platform, client *fetch.Client) error {
	reg, err := client.Open(ref)
	if err != nil {
		return err
	}
	img, err := reg.Resolve(ctx, "", platform)
	if err != nil {
		return err
	}
	raw, err := reg.Blob(img.Manifest.Config.Digest, img.Manifest.Config.Size).ReadAll(ctx)
	if err != nil {
		return fmt.Errorf("image %s: config: %w", img.Name, err)
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(raw))
	if err != nil {
		return fmt.Errorf("image %s: config: %w", img.Name, err)
	}
	layers := img.Manifest.Layers
	if n := len(cfg.RootFS.DiffIDs); n != len(layers) {
		fmt.Fprintf(w, "image %s: the config lists %d diff IDs for %d layers\n", img.Name, n, len(layers))
		return ErrMismatch
	}
	failed, lazy := 0, 0
	for i, desc := range layers {
		where := fmt.Sprintf("layer %d %s", i, desc.Digest)
		if !format.IsLayer(desc.Annotations) {
			fmt.Fprintf(w, "%s: not a lazypull layer (no %s annotation): no index to check; skipped\n", where, format.AnnotationIndexDigest)
			continue
		}
		lazy++
		res, err := layer(ctx, reg, desc, cfg.RootFS.DiffIDs[i])
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			failed++
			var m *format.MismatchError
			var d *format.RunDigestError
			switch {
			case errors.As(err, &m):
				fmt.Fprintf(w, "%s: MISMATCH entry %q: %s: index says %s, tar says %s\n", where, m.Entry, m.Field, m.Index, m.Tar)
			case errors.As(err, &d):
				fmt.Fprintf(w, "%s: MISMATCH header run %d (up to entry %q): run digest: index says %s, blob has %s\n", where, d.Run, d.Entry, d.Index, d.Got)
			default:
				fmt.Fprintf(w, "%s: MISMATCH %v\n", where, err)
			}
			continue
		}
		runs := "no header run digests (index version 1)"
		if res.Runs > 0 {
			runs = fmt.Sprintf("%d header runs", res.Runs)
		}
		fmt.Fprintf(w, "%s: ok (%d entries, %d chunks, %s, diff ID %s)\n", where, res.Entries, res.Chunks, runs, res.DiffID)
	}
	if failed > 0 {
		fmt.Fprintf(w, "image %s: %d of %d layers do not match\n", img.Name, failed, len(layers))
		return ErrMismatch
	}
	if lazy == 0 {
		fmt.Fprintf(w, "image %s: not a lazypull image: no layer has an index\n", img.Name)
		return ErrMismatch
	}
	fmt.Fprintf(w, "image %s: %d layers verified\n", img.Name, lazy)
	return nil
}

// layer streams one layer blob through format.VerifyLayer and compares what it
// found with the manifest (blob digest) and the config (diff ID).
func layer(ctx context.Context, reg *fetch.Registry, desc v1.Descriptor, diffID v1.Hash) (format.LayerCheck, error) {
	loc, err := format.LocationFromAnnotations(desc.Annotations)
	if err != nil {
		return format.LayerCheck{}, err
	}
	blob := reg.Layer(desc)
	ix, err := format.ReadIndex(blob.ReaderAt(ctx), desc.Size, &loc)
	if err != nil {
		return format.LayerCheck{}, fmt.Errorf("index: %w", err)
	}
	rc, err := blob.Open(ctx)
	if err != nil {
		return format.LayerCheck{}, err
	}
	defer rc.Close()
	// Open checks the blob's digest at its end: VerifyLayer reads to it.
	res, err := format.VerifyLayer(io.LimitReader(rc, desc.Size+1), ix, loc.Offset)
	if err != nil {
		return res, err
	}
	if res.Blob.String() != desc.Digest.String() {
		return res, fmt.Errorf("blob has digest %s, the manifest says %s", res.Blob, desc.Digest)
	}
	if res.DiffID.String() != diffID.String() {
		return res, fmt.Errorf("tar stream has digest %s, the config's diff ID is %s", res.DiffID, diffID)
	}
	return res, nil
}
