package daemon

import (
	"context"
	"log/slog"
	"path"
	"slices"
	"strings"

	"lazypull/format"
	"lazypull/internal/profile"
	"lazypull/internal/store"
)

// The files an update's added files name (docs/design.md, "Automatic profiles", the
// delta): code loads what it names, by name, from the directories a start loads from,
// files of the kinds it loads.
// python-v2's new yaml modules import datetime, base64, struct, warnings: files that v1
// and v2 both hold, that v1's start never read, and that v2's start reads one after
// another, a round trip each. Once the delta is fetched with the carried profile, its
// files are scanned for words, and a file of a directory the profile read a file from,
// whose name after its first dot is that of a file the profile read (its kind:
// cpython-311.pyc, so.6) and before it such a word (datetime of datetime.cpython-311.pyc),
// is fetched too, in one more request per layer, with what the delta's budget left. A
// guess costs bytes, bounded; nothing it brings is served unverified.
const (
	// namedMinWord is the shortest word matched: shorter ones name nearly anything.
	namedMinWord = 3
	// namedMaxWord is the longest word looked at.
	namedMaxWord = 255
	// namedMaxFile bounds an added file scanned; larger ones are not.
	namedMaxFile = 4 << 20
	// namedMaxScan bounds the bytes of added files scanned in all.
	namedMaxScan = 16 << 20
	// namedPiece is how much of a file is read at a time.
	namedPiece = 256 << 10
)

// namedCand is a file a word may name: in layer, its compressed bytes the store lacks.
type namedCand struct {
	layer int
	e     *format.Entry
	comp  int64
}

// fetchNamed fetches the files that the files the image added (c.added, fetched with
// the carried profile c.p) name, within c.left compressed bytes (named), and counts them in
// the prefetch's figures. Errors are the reads' to meet.
func (pf *prefetcher) fetchNamed(ctx context.Context, c carried, looked int64, log *slog.Logger) {
	im := pf.im
	np := im.named(ctx, c.p, len(c.p.Files)-len(c.added), c.left)
	if np == nil {
		return
	}
	per, wants, _, bytes, err := im.plan(np)
	if err != nil || len(wants) == 0 {
		return
	}
	for _, ws := range per {
		for _, w := range ws {
			im.lease.Pin(w.File)
		}
	}
	err = im.fetchPlanned(ctx, per, im.profiledRuns(wants))
	pf.mu.Lock()
	pf.st.Named, pf.st.Files, pf.st.Bytes = len(wants), pf.st.Files+len(wants), pf.st.Bytes+bytes
	pf.st.Requests = im.Registry.Stats().Requests - looked
	pf.mu.Unlock()
	if err != nil && ctx.Err() == nil {
		log.Info("files the image's added files name not prefetched", "image", im.Ref, "files", len(wants), "err", err)
		return
	}
	log.Info("prefetched the files the image's added files name", "image", im.Ref, "files", len(wants), "bytes", bytes)
}

// named returns, as a profile of im, the files that words of the files p added (p.Files
// from read on, as fetched) name and the store lacks (namedCands), at most budget
// compressed bytes; nil when there are none.
func (im *Image) named(ctx context.Context, p *profile.Profile, read int, budget int64) *profile.Profile {
	if budget <= 0 || len(im.Layers) == 0 || read < 0 || read > len(p.Files) {
		return nil
	}
	st := im.Layers[0].store
	cands := im.namedCands(st, p, read, budget)
	if len(cands) == 0 {
		return nil
	}
	var found []string // stems, in the order the words were met
	seen := map[string]bool{}
	scanned := int64(0)
	buf := make([]byte, namedPiece)
	for _, a := range p.Files[read:] {
		l, e := im.layerFile(p, a)
		if e == nil || e.Size > namedMaxFile || scanned+e.Size > namedMaxScan {
			continue
		}
		f, err := l.file(e)
		if err != nil || len(st.Missing(f)) > 0 {
			continue // not fetched: not read here either
		}
		scanned += e.Size
		w := wordScanner{match: func(word []byte) {
			if _, ok := cands[string(word)]; ok && !seen[string(word)] {
				seen[string(word)] = true
				found = append(found, string(word))
			}
		}}
		for off := int64(0); off < f.Size; off += namedPiece {
			n, err := st.ReadAt(ctx, blobSource{l.blob}, f, buf[:min(namedPiece, f.Size-off)], off)
			w.scan(buf[:n])
			if err != nil {
				break
			}
		}
		w.end()
	}
	np := &profile.Profile{Subject: im.Image.Descriptor.Digest.String()}
	for _, l := range im.Layers {
		np.Layers = append(np.Layers, l.Desc.Digest.String())
	}
	for _, stem := range found {
		for _, c := range cands[stem] {
			if c.comp > budget {
				continue
			}
			budget -= c.comp
			np.Files = append(np.Files, profile.File{Layer: c.layer, Path: c.e.Name, Ranges: []profile.Range{{Off: 0, Len: c.e.Size}}})
		}
	}
	if len(np.Files) == 0 {
		return nil
	}
	return np
}

// namedCands are the files a word may name, by their stem (the base name up to its first
// dot): regular files of the directories that the profile's first read files were read
// from, of a kind they were (the base name after its first dot), not named by p, shown by
// a merged view of im, that the store lacks, of at most budget compressed bytes each.
func (im *Image) namedCands(st *store.Store, p *profile.Profile, read int, budget int64) map[string][]namedCand {
	dirs, kinds, planned := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for i, f := range p.Files {
		planned[f.Path] = true
		if i < read {
			dirs[path.Dir(f.Path)] = true
			if _, kind, ok := strings.Cut(path.Base(f.Path), "."); ok && kind != "" {
				kinds[kind] = true
			}
		}
	}
	out := map[string][]namedCand{}
	for i, l := range im.Layers {
		for j := range l.Index.Entries {
			e := &l.Index.Entries[j]
			if !e.IsRegular() || e.Size == 0 || e.Sparse || !dirs[path.Dir(e.Name)] || planned[e.Name] {
				continue
			}
			stem, kind, _ := strings.Cut(path.Base(e.Name), ".")
			if len(stem) < namedMinWord || !kinds[kind] || im.hidden(i, e.Name) {
				continue
			}
			comp := missingBytes(st, l.Index, e)
			if comp > 0 && comp <= budget {
				out[stem] = append(out[stem], namedCand{layer: i, e: e, comp: comp})
			}
		}
	}
	return out
}

// layerFile finds the file a of the profile p in im: its layer and content entry.
func (im *Image) layerFile(p *profile.Profile, a profile.File) (*Layer, *format.Entry) {
	if a.Layer < 0 || a.Layer >= len(p.Layers) {
		return nil, nil
	}
	k := slices.IndexFunc(im.Layers, func(l *Layer) bool { return l.Desc.Digest.String() == p.Layers[a.Layer] })
	if k < 0 {
		return nil, nil
	}
	l := im.Layers[k]
	e, ok := l.Index.Lookup(a.Path)
	if !ok {
		return nil, nil
	}
	if e, err := l.Index.Content(e); err == nil && e.IsRegular() {
		return l, e
	}
	return nil, nil
}

// wordScanner splits bytes into words (runs of ASCII letters, digits, '_' and '-'), across
// the pieces it is given, and calls match with each of namedMinWord to namedMaxWord bytes.
type wordScanner struct {
	match func(word []byte)
	word  [namedMaxWord]byte
	n     int  // bytes of the word so far
	long  bool // the word is longer than namedMaxWord
}

func (w *wordScanner) scan(b []byte) {
	for _, c := range b {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' {
			if w.n < namedMaxWord {
				w.word[w.n] = c
				w.n++
			} else {
				w.long = true
			}
			continue
		}
		w.end()
	}
}

// end ends the word in progress.
func (w *wordScanner) end() {
	if w.n >= namedMinWord && !w.long {
		w.match(w.word[:w.n])
	}
	w.n, w.long = 0, false
}
