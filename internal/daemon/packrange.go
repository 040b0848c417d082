package daemon

import (
	"context"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/format"
	"lazypull/internal/fetch"
	"lazypull/internal/profile"
	"lazypull/internal/store"
)

// A node that holds some of what a pack carries (it ran an earlier version of the image)
// reads only the records it lacks, by range: where each record lies follows from the
// profile and the layers' indexes, in the order Image.Pack writes them. Nothing of that is
// trusted either: a layout that does not end at the pack's size is not used (the pack is
// read whole, as a cold node reads it), and a record read by range is used only if its
// header is the one the layout expects (profile.RecordAt) and its bytes check against their
// digest as a streamed record's do. What is refused comes from the layer blobs.

// packRec is a record where a pack's layout puts it: its kind, digest, the offset of its
// header and the length of its bytes.
type packRec struct {
	k   profile.RecordKind
	d   format.Digest
	off int64
	n   int64
}

func (r packRec) span() fetch.Range {
	return fetch.Range{Off: r.off, Len: profile.RecordHeaderSize + r.n}
}

// packLayout is where Image.Pack puts the header run and chunk records of a profile's pack,
// by digest; end is where the last record ends, the pack's size.
type packLayout struct {
	runs, chunks map[format.Digest]packRec
	chunkBytes   int64 // of every chunk record, headers included
	end          int64
}

// packIndexEnd is where the index records of the pack of an image with these layers end,
// when every layer is a lazypull layer: Image.Pack writes one per layer, in order.
func packIndexEnd(layers []v1.Descriptor) (int64, bool) {
	end := int64(profile.HeaderSize)
	for _, d := range layers {
		loc, err := format.LocationFromAnnotations(d.Annotations)
		if err != nil {
			return 0, false
		}
		end += profile.RecordHeaderSize + loc.Size
	}
	return end, len(layers) > 0
}

// packIndexSpan is where the index records of the pack of an image with these layers lie
// from the first whose index the store does not keep to the last, when the store keeps
// one of them (the node ran an image that shares a layer, and is likely to hold some of
// the pack's chunks) and every layer is a lazypull layer.
func packIndexSpan(st *store.Store, layers []v1.Descriptor) (from, end int64, ok bool) {
	end = int64(profile.HeaderSize)
	from, kept := int64(-1), false
	for _, d := range layers {
		loc, err := format.LocationFromAnnotations(d.Annotations)
		if err != nil {
			return 0, 0, false
		}
		if st.HasMeta(loc.Digest) {
			kept = true
		} else if from < 0 {
			from = end
		}
		end += profile.RecordHeaderSize + loc.Size
	}
	return from, end, kept && from >= 0
}

// packLayout computes where the pack of the profile planned as per and wants (Image.plan)
// puts its records, as Image.Pack writes them; false when the image's layers do not allow
// it (one is not a lazypull layer or did not open) or it does not end at size.
func (im *Image) packLayout(per [][]store.Want, wants []profile.Want, size int64) (packLayout, bool) {
	off, ok := packIndexEnd(im.Image.Manifest.Layers)
	if !ok || len(im.Layers) != len(im.Image.Manifest.Layers) {
		return packLayout{}, false
	}
	for _, l := range im.Layers {
		if l == nil {
			return packLayout{}, false
		}
	}
	lay := packLayout{runs: map[format.Digest]packRec{}, chunks: map[format.Digest]packRec{}}
	items, _ := im.packRuns(wants)
	for _, it := range items {
		d, n := it.l.Index.RunDigests[it.r], it.l.tc.runs[it.r].CompSize(it.l.Index)
		lay.runs[d] = packRec{profile.RecordRun, d, off, n}
		off += profile.RecordHeaderSize + n
	}
	order, _ := packChunks(per, len(im.Layers))
	for _, it := range order {
		r := packRec{profile.RecordChunk, it.c.Digest, off, it.c.CompSize}
		lay.chunks[it.c.Digest] = r
		off += r.span().Len
		lay.chunkBytes += r.span().Len
	}
	lay.end = off
	return lay, off == size
}

// missingChunkBytes is what the chunk records of the chunks of per the store lacks hold,
// headers included.
func (lay packLayout) missingChunkBytes(st *store.Store, per [][]store.Want) int64 {
	var n int64
	seen := map[format.Digest]bool{}
	for _, ws := range per {
		for _, w := range ws {
			for _, c := range st.Missing(w.File) {
				if r, ok := lay.chunks[c.Digest]; ok && !seen[c.Digest] {
					seen[c.Digest] = true
					n += r.span().Len
				}
			}
		}
	}
	return n
}

// fetchRecords reads the records recs of the pack by range (multi-range requests, as layer
// reads are) and hands fn the bytes of each whose header is the one expected; a record
// that is not, or a request that fails, is logged and left out: fn's caller fetches what
// it lacks from the layers.
func (p *pack) fetchRecords(ctx context.Context, recs []packRec, fn func(r packRec, b []byte)) {
	if len(recs) == 0 {
		return
	}
	at := make(map[int64]packRec, len(recs))
	ranges := make([]fetch.Range, 0, len(recs))
	for _, r := range recs {
		at[r.off] = r
		ranges = append(ranges, r.span())
	}
	refused := 0
	err := p.blob.Fetch(ctx, ranges, func(rg fetch.Range, b []byte) error {
		r := at[rg.Off]
		rb, err := profile.RecordAt(b, r.k, r.d, r.n)
		if err != nil {
			if refused++; refused == 1 {
				p.log.Warn("profile pack: a record is not where its layout puts it; fetching from the layers", "pack", p.blob.Digest(), "err", err)
			}
			return nil
		}
		fn(r, rb)
		return nil
	})
	if err != nil && ctx.Err() == nil {
		p.log.Warn("profile pack: records unreadable; fetching from the layers", "pack", p.blob.Digest(), "err", err)
	}
}
