package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"golang.org/x/sync/errgroup"

	"lazypull/format"
	"lazypull/internal/profile"
	"lazypull/internal/store"
)

// fetchIndexed is the prefetch of an image served from its index artifact (fetch's, for
// im.indexed): the profiled files of up to wholeFileMax bytes, and the spans of the tar
// stream holding the profiled ranges of larger ones (indexed_large.go), are filled into
// the store, one Fill per layer (tarSource reads files and spans close in the tar stream
// together, in runs of up to tarGroupMax bytes), and pinned while the image is open. A
// large file held by a span too large to store is left to its reads.
func (pf *prefetcher) fetchIndexed(ctx context.Context, p *profile.Profile, desc string, looked int64, log *slog.Logger) error {
	im := pf.im
	layers := make([]profile.Layer, len(im.indexed))
	for i, l := range im.indexed {
		layers[i] = profile.Layer{Digest: l.Desc.Digest.String(), Index: l.Index}
	}
	wants, stale := p.Plan(layers)
	if len(stale) > 0 {
		ex := stale[:min(len(stale), 5)]
		log.Warn("profile names files the image no longer has; skipping them", "image", im.Ref, "profile", desc,
			"stale", len(stale), "of", len(p.Files), "first", strings.Join(ex, ", "))
	}
	per := make([][]store.File, len(im.indexed))
	seen := make([]map[format.Digest]bool, len(im.indexed)) // spans of large files planned, by layer
	var bytes int64
	left := 0
	for _, w := range wants {
		var files []store.File
		switch {
		case w.Entry.Size > wholeFileMax:
			if seen[w.Layer] == nil {
				seen[w.Layer] = map[format.Digest]bool{}
			}
			ss, ok := im.indexed[w.Layer].profiledSpans(w, seen[w.Layer])
			if !ok {
				left++
				continue
			}
			files = ss
		case w.Entry.Size == 0:
			continue
		default:
			files = []store.File{storeFile(w.Entry)}
		}
		for _, f := range files {
			im.lease.Pin(f) // what the workload reads at start stays while the image is mounted
			bytes += f.Size
		}
		per[w.Layer] = append(per[w.Layer], files...)
	}
	if left > 0 {
		log.Info("profiled files over the size an image index fetches ahead, in spans too large to store, are left to their reads", "image", im.Ref, "files", left, "max", wholeFileMax)
	}
	pf.mu.Lock()
	pf.st.Profile, pf.st.Files, pf.st.Stale, pf.st.Bytes = desc, len(wants)-left, len(stale), bytes
	pf.mu.Unlock()
	g, gctx := errgroup.WithContext(ctx)
	for i, files := range per {
		if len(files) == 0 {
			continue
		}
		l := im.indexed[i]
		g.Go(func() error {
			if err := l.store.Fill(gctx, tarSource{l}, files...); err != nil {
				return fmt.Errorf("layer %s: %w", l.Desc.Digest, err)
			}
			return nil
		})
	}
	err := g.Wait()
	pf.mu.Lock()
	pf.st.Requests = im.Registry.Stats().Requests - looked
	pf.mu.Unlock()
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil // the image was closed
	}
	return err
}
