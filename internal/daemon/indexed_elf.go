package daemon

import (
	"context"
	"errors"
	"io"

	"lazypull/format"
	"lazypull/internal/elfdeps"
	"lazypull/internal/store"
)

// The walk of programs' needs (elfspec.go) over the layers of an unconverted image served
// from its index artifact: the same walk, what it reads and fetches going the index's way.
// A file of up to wholeFileMax bytes (most programs and libraries) comes whole at the
// walk's first read of it, as at a mount's (readStored); of a larger one (libnode, cc1),
// the spans holding what the loader maps are filled into the store, the loader's part
// first, as a profile's ranges are (fetchIndexed).

var _ elfLayer = (*indexedLayer)(nil)

// errNoSpans: a large file of a layer without span digests (a plain tar) is not walked.
var errNoSpans = errors.New("a large file of a layer without span digests")

func (l *indexedLayer) elfIndex() *format.Index { return l.Index }
func (l *indexedLayer) elfName() string         { return l.Desc.Digest.String() }

func (l *indexedLayer) elfOpen(ctx context.Context, w *elfWalk, e *format.Entry) (io.ReaderAt, int64, bool, error) {
	if e.Size > wholeFileMax && (!l.spans || l.spanTab == nil) {
		return nil, 0, false, errNoSpans
	}
	whole := e.Size <= wholeFileMax && w.take(e.Size)
	return indexedReader{ctx: ctx, l: l, e: e}, e.Size, whole, nil
}

// elfSegments fills the spans holding e's segments (elfWants) into the store: the
// loader's part first, in a Fill of its own, when there is more than elfSplitFrom to
// fetch. A small file is whole once read: nothing to do.
func (l *indexedLayer) elfSegments(ctx context.Context, w *elfWalk, e *format.Entry, ef *elfdeps.File) {
	if e.Size <= wholeFileMax {
		return
	}
	var first, rest []store.Want
	var total int64
	for _, wnt := range elfWants(store.File{Size: e.Size}, ef) {
		if !w.take(wnt.Len) {
			continue
		}
		total += wnt.Len
		if loaderFirst(ef, wnt.Off) {
			first = append(first, wnt)
		} else {
			rest = append(rest, wnt)
		}
	}
	if total <= elfSplitFrom {
		first, rest = nil, append(first, rest...)
	}
	seen := map[format.Digest]bool{}
	for _, ws := range [][]store.Want{first, rest} {
		var files []store.File
		for _, wnt := range ws {
			start, end := e.TarOffset+wnt.Off, e.TarOffset+min(wnt.Off+wnt.Len, e.Size)
			ss, ok := l.spanTab.spansOf(start, end)
			if !ok {
				continue // a span too large to store: left to the reads
			}
			for _, s := range ss {
				if !seen[s.Digest] {
					seen[s.Digest] = true
					files = append(files, spanFile(s))
				}
			}
		}
		if len(files) == 0 {
			continue
		}
		w.pending.Add(1)
		go func() {
			defer w.pending.Add(-1)
			// Errors are the readers' to meet, if they ever read these bytes.
			_ = l.store.Fill(ctx, tarSource{l}, files...)
		}()
	}
}

// elfUnread: a file the walk cannot read is left to its reads (a small one came whole
// with the walk's first read of it).
func (l *indexedLayer) elfUnread(*format.Entry) {}

// elfCheckLinks: an indexed layer's entries are checked with the index artifact, not by
// header runs: nothing to do.
func (l *indexedLayer) elfCheckLinks(context.Context, []*format.Entry) {}

func (l *indexedLayer) elfFetch(ctx context.Context, es []*format.Entry) {
	var files []store.File
	for _, e := range es {
		if e.Size > 0 && e.Size <= wholeFileMax {
			files = append(files, storeFile(e))
		}
	}
	if len(files) > 0 {
		// Errors are the readers' to meet, if they ever read these files.
		_ = l.store.Fill(ctx, tarSource{l}, files...)
	}
}

// indexedReader reads a file of an indexed layer for the walk, as a mount's read does
// (verified, through the store), without the walk's own reads being started again.
type indexedReader struct {
	ctx context.Context
	l   *indexedLayer
	e   *format.Entry
}

func (r indexedReader) ReadAt(p []byte, off int64) (int, error) { return r.l.read(r.ctx, r.e, p, off) }

// speculateELF notes a read of e at offset 0 whose bytes head show an ELF program or
// library: it and what it needs are walked, as for a converted layer (Layer.speculateELF).
func (l *indexedLayer) speculateELF(e *format.Entry, head []byte) {
	if l.im == nil || !elfdeps.IsProgram(head) || !l.im.speculating() {
		return
	}
	l.im.elf.add(l.im, []elfTarget{{l: l, e: e}})
}
