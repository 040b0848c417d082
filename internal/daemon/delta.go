package daemon

import (
	"cmp"
	"fmt"
	"path"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/format"
	"lazypull/internal/profile"
	"lazypull/internal/store"
)

// The delta of an update (docs/design.md, "Automatic profiles", the delta): a profile
// carried from v1 of an image onto v2 names what v1's start read, but not the files v2
// added, which v2's start is likely to read (new code is added to be run: python-v2 of the
// bench imports a package v1 did not have, 21 of the 30 files its start reads and v1's
// did not). So the prefetch of a carried profile also fetches, in the same batch, the
// files of v2's layers whose content v1 had nowhere, nearest the profile's reads first,
// up to AutoProfileOptions.DeltaBytes compressed bytes; then, with what is left, the files
// they name (named.go). v1's files are known from its manifest and layer indexes, which
// the node kept when it ran v1; without them there is no delta (and no request to find
// one).

// DefaultAutoDeltaBytes bounds the compressed bytes of the files an update added, and of
// those they name, that the prefetch of a carried profile fetches with it
// (AutoProfileOptions.DeltaBytes): about
// four bandwidth-delay products of a 100 Mbit/s + 20 ms link, a few percent of a plain
// pull of an application layer.
const DefaultAutoDeltaBytes = 1 << 20

// deltaFile is a file an update added: in layer (of the image), its compressed bytes
// missing from the store, and how close it is to what the profile read (closeness).
type deltaFile struct {
	layer int
	e     *format.Entry
	comp  int64
	near  int
}

// delta returns the files of im that are new compared with the image p was recorded on
// (p.Subject, whose manifest and indexes st keeps), as profile files to prefetch after
// p's (ranges: whole), at most budget compressed bytes of what st lacks; what is left of
// the budget; and why there are none, when there are none for a reason worth a log line.
func (im *Image) delta(st *store.Store, p *profile.Profile, budget int64) ([]profile.File, int64, string) {
	if budget <= 0 || len(im.Layers) == 0 {
		return nil, 0, ""
	}
	old, err := im.recordedOn(st, p.Subject)
	if err != nil {
		return nil, 0, err.Error()
	}
	planned := map[string]bool{}
	for _, f := range p.Files {
		planned[f.Path] = true
	}
	dirs := readDirs(p)
	had := hadContent(old)
	var cands []deltaFile
	for i, l := range im.Layers {
		if slices.ContainsFunc(old, func(o *format.Index) bool { return o == l.Index }) {
			continue // a layer v1 had: nothing new in it
		}
		for j := range l.Index.Entries {
			e := &l.Index.Entries[j]
			if !e.IsRegular() || e.Size == 0 || e.Sparse || planned[e.Name] || im.hidden(i, e.Name) || had(e) {
				continue
			}
			near := closeness(dirs, e.Name)
			if near == 0 {
				continue // under a top directory the start never read
			}
			comp := missingBytes(st, l.Index, e)
			if comp > 0 && comp <= budget {
				cands = append(cands, deltaFile{layer: i, e: e, comp: comp, near: near})
			}
		}
	}
	// The nearest first; among equals, in the layers' order, so that the chunks taken lie
	// next to each other (fewer ranges).
	slices.SortStableFunc(cands, func(a, b deltaFile) int { return cmp.Compare(b.near, a.near) })
	var at int64
	if n := len(p.Files); n > 0 {
		at = p.Files[n-1].AtUS
	}
	layerOf := map[int]int{}
	var out []profile.File
	for _, c := range cands {
		if c.comp > budget {
			continue
		}
		budget -= c.comp
		li, ok := layerOf[c.layer]
		if !ok {
			li = slices.Index(p.Layers, im.Layers[c.layer].Desc.Digest.String())
			if li < 0 {
				li = len(p.Layers)
				p.Layers = append(p.Layers, im.Layers[c.layer].Desc.Digest.String())
			}
			layerOf[c.layer] = li
		}
		out = append(out, profile.File{Layer: li, Path: c.e.Name, AtUS: at, Ranges: []profile.Range{{Off: 0, Len: c.e.Size}}})
	}
	return out, budget, ""
}

// missingBytes is the compressed bytes of e's content (of the layer index ix) that st
// lacks: 0 when it has them all, or e has no content it can tell.
func missingBytes(st *store.Store, ix *format.Index, e *format.Entry) int64 {
	f, err := store.FileOf(ix, e)
	if err != nil {
		return 0
	}
	var n int64
	for _, c := range st.Missing(f) {
		n += c.CompSize
	}
	return n
}

// recordedOn returns the layer indexes of the image manifest subject as st keeps them, or
// an error saying which is not kept; a layer im shares is im's own index.
func (im *Image) recordedOn(st *store.Store, subject string) ([]*format.Index, error) {
	d, err := format.ParseDigest(subject)
	if err != nil {
		return nil, fmt.Errorf("profile's subject %q: %w", subject, err)
	}
	raw, err := st.Meta(d)
	if err != nil {
		return nil, fmt.Errorf("manifest of %s not kept on this node", subject)
	}
	img, err := manifestImage(im.repository(), raw, v1.Hash{Algorithm: "sha256", Hex: strings.TrimPrefix(subject, "sha256:")}, "")
	if err != nil {
		return nil, err
	}
	var out []*format.Index
	for _, desc := range img.Manifest.Layers {
		if k := slices.IndexFunc(im.Layers, func(l *Layer) bool { return l.Desc.Digest == desc.Digest }); k >= 0 {
			out = append(out, im.Layers[k].Index)
			continue
		}
		loc, err := format.LocationFromAnnotations(desc.Annotations)
		if err != nil {
			return nil, fmt.Errorf("layer %s of %s: %w", desc.Digest, subject, err)
		}
		if ix := st.SharedIndex(loc.Digest); ix != nil {
			out = append(out, ix) // v1 is still open: its index, decoded and checked
			continue
		}
		b, err := st.Meta(loc.Digest)
		if err != nil {
			return nil, fmt.Errorf("index of layer %s of %s not kept on this node", desc.Digest, subject)
		}
		ix, err := format.ReadIndexBytes(b, desc.Size, loc)
		if err != nil {
			return nil, fmt.Errorf("index of layer %s of %s: %w", desc.Digest, subject, err)
		}
		out = append(out, ix)
	}
	return out, nil
}

// hidden reports whether a layer of im above layer i has an entry at name (the file of
// layer i is not the one a merged view shows).
func (im *Image) hidden(i int, name string) bool {
	for _, l := range im.Layers[i+1:] {
		if _, ok := l.Index.Lookup(name); ok {
			return true
		}
	}
	return false
}

// hadContent returns whether one of the indexes old has a regular file with an entry's
// content: at its path, or (a file moved) at any other, found in a table of old's content
// digests built at the first question that needs it.
func hadContent(old []*format.Index) func(e *format.Entry) bool {
	var digests map[format.Digest]bool
	return func(e *format.Entry) bool {
		for _, ix := range old {
			if o, ok := ix.Lookup(e.Name); ok && o.IsRegular() && o.Digest == e.Digest {
				return true
			}
		}
		if digests == nil {
			digests = map[format.Digest]bool{}
			for _, ix := range old {
				for k := range ix.Entries {
					if o := &ix.Entries[k]; o.IsRegular() && o.Size > 0 {
						digests[o.Digest] = true
					}
				}
			}
		}
		return digests[e.Digest]
	}
}

// readDirs are the directories of the files p names, and their ancestors, each with its
// depth ("a/b": 2).
func readDirs(p *profile.Profile) map[string]int {
	dirs := map[string]int{}
	for _, f := range p.Files {
		for d := path.Dir(f.Path); d != "." && d != "/" && d != ""; d = path.Dir(d) {
			if _, ok := dirs[d]; ok {
				break
			}
			dirs[d] = strings.Count(d, "/") + 1
		}
	}
	return dirs
}

// closeness is the depth of the deepest directory holding name that holds a file the
// profile read (readDirs): 0 when none does.
func closeness(dirs map[string]int, name string) int {
	for d := path.Dir(name); d != "." && d != "/" && d != ""; d = path.Dir(d) {
		if n, ok := dirs[d]; ok {
			return n
		}
	}
	return 0
}
