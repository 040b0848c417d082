package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"golang.org/x/sync/errgroup"

	"lazypull/internal/profile"
	"lazypull/internal/store"
)

// fetchIndexed is the prefetch of an image served from its index artifact (fetch's, for
// im.indexed): the profiled files of up to wholeFileMax bytes are filled into the store,
// one Fill per layer (tarSource reads files close in the tar stream together), and
// pinned while the image is open. A larger file is not fetched ahead: it is served span
// by span and not stored (indexed.go), so a prefetch of it would be decoded and dropped.
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
	var bytes int64
	large := 0
	for _, w := range wants {
		switch {
		case w.Entry.Size > wholeFileMax:
			large++
			continue
		case w.Entry.Size == 0:
			continue
		}
		f := storeFile(w.Entry)
		im.lease.Pin(f) // what the workload reads at start stays while the image is mounted
		per[w.Layer] = append(per[w.Layer], f)
		bytes += f.Size
	}
	if large > 0 {
		log.Info("profiled files over the size an image index fetches ahead are left to their reads", "image", im.Ref, "files", large, "max", wholeFileMax)
	}
	pf.mu.Lock()
	pf.st.Profile, pf.st.Files, pf.st.Stale, pf.st.Bytes = desc, len(wants)-large, len(stale), bytes
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
