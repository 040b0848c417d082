package profile

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"

	"lazypull/format"
)

// Auto is a profile a node recorded itself of the starts of an image (the daemon's
// automatic profiles), as the node keeps it: the profile, with what merging another start
// into it needs and what maps it onto another version of the image.
//
// Its document, kept in the node's store (a file anyone with root on the node could have
// written, so parsed as untrusted like any profile):
//
//	{"repository": "host/repo",      the repository the image was started from
//	 "starts": 3,                    the starts merged in, at least 1
//	 "seen": [3, 1, ...],            per file of the profile: how many of them read it
//	 "digests": ["sha256:..", ""],   per file: its content's sha256 ("" unknown), which finds
//	                                 it in another version of the image under another path
//	 "profile": {...}}               the profile document (Parse); each file's at_us is the
//	                                 average of its first-access times over the starts that
//	                                 read it, and the files are in that order
type Auto struct {
	Repository string
	Starts     int
	Seen       []int
	Digests    []string
	Profile    *Profile
}

type autoDoc struct {
	Repository string                     `json:"repository"`
	Starts     int                        `json:"starts"`
	Seen       list[int, filesLimit]      `json:"seen"`
	Digests    list[string, digestsLimit] `json:"digests"`
	Profile    json.RawMessage            `json:"profile"`
}

type digestsLimit struct{}

func (digestsLimit) limit() (int, string, bool) { return MaxFiles, "digests", false }

// maxRepository bounds the repository's name (a reference is at most a few hundred bytes).
const maxRepository = 4096

// Marshal encodes a, after checking it as ParseAuto would.
func (a *Auto) Marshal() ([]byte, error) {
	if err := a.validate(); err != nil {
		return nil, err
	}
	doc, err := a.Profile.Marshal()
	if err != nil {
		return nil, err
	}
	return json.Marshal(autoDoc{Repository: a.Repository, Starts: a.Starts, Seen: a.Seen, Digests: a.Digests, Profile: bytes.TrimSpace(doc)})
}

// ParseAuto decodes and checks an automatic profile's document (see Auto), of at most
// MaxSize plus what the files' counts and digests take.
func ParseAuto(b []byte) (*Auto, error) {
	if max := MaxSize + MaxFiles*80; len(b) > max {
		return nil, fmt.Errorf("automatic profile: %d bytes, more than %d: %w", len(b), max, ErrTooLarge)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	var doc autoDoc
	if err := d.Decode(&doc); err != nil {
		return nil, fmt.Errorf("automatic profile: not an automatic profile document: %w", err)
	}
	if _, err := d.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("automatic profile: data after the document")
	}
	p, err := Parse(doc.Profile)
	if err != nil {
		return nil, fmt.Errorf("automatic profile: %w", err)
	}
	a := &Auto{Repository: doc.Repository, Starts: doc.Starts, Seen: doc.Seen, Digests: doc.Digests, Profile: p}
	if err := a.validate(); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *Auto) validate() error {
	switch {
	case a.Profile == nil:
		return errors.New("automatic profile: no profile")
	case len(a.Repository) > maxRepository:
		return fmt.Errorf("automatic profile: repository of %d bytes, more than %d", len(a.Repository), maxRepository)
	case a.Starts < 1:
		return fmt.Errorf("automatic profile: %d starts, want at least 1", a.Starts)
	case len(a.Seen) != len(a.Profile.Files) || len(a.Digests) != len(a.Profile.Files):
		return fmt.Errorf("automatic profile: %d files, %d counts and %d digests: want one of each per file", len(a.Profile.Files), len(a.Seen), len(a.Digests))
	}
	for i, n := range a.Seen {
		if n < 1 || n > a.Starts {
			return fmt.Errorf("automatic profile: seen[%d] %d: want 1 to %d (the starts)", i, n, a.Starts)
		}
	}
	for i, d := range a.Digests {
		if _, err := format.ParseDigest(d); d != "" && err != nil {
			return fmt.Errorf("automatic profile: digests[%d] %q: %w", i, d, err)
		}
	}
	return nil
}

// AutoLimits bound a merged automatic profile.
type AutoLimits struct {
	Files int   // at most this many files (at most MaxFiles)
	Bytes int64 // at most this many bytes of ranges
}

// autoFile is one file of a merge.
type autoFile struct {
	f      File
	digest string
	seen   int
	at     float64 // average first access, µs
}

// Merge merges the start rec (a profile of a's image, with the content digest of each of
// its files, "" when unknown) into a, which may be nil (rec is the first start): the union
// of their files, each with the union of its ranges, ordered by the average of its
// first-access times over the starts that read it. Past lim, the files the fewest starts
// read go first, then the latest; then those past the byte bound. It returns the merge; a
// is not changed.
func Merge(a *Auto, repository string, rec *Profile, digests []string, lim AutoLimits) *Auto {
	out := &Auto{Repository: repository, Starts: 1, Profile: &Profile{Subject: rec.Subject, Created: rec.Created, Command: rec.Command}}
	layer := map[string]int{} // layer digest -> its index in out.Profile.Layers
	layerOf := func(d string) int {
		i, ok := layer[d]
		if !ok {
			i = len(out.Profile.Layers)
			layer[d] = i
			out.Profile.Layers = append(out.Profile.Layers, d)
		}
		return i
	}
	type key struct {
		layer int
		path  string
	}
	files := map[key]*autoFile{}
	var order []*autoFile
	add := func(p *Profile, f File, digest string, seen int) {
		k := key{layerOf(p.Layers[f.Layer]), f.Path}
		if af := files[k]; af != nil {
			af.at = (af.at*float64(af.seen) + float64(f.AtUS)*float64(seen)) / float64(af.seen+seen)
			af.seen += seen
			for _, r := range f.Ranges {
				af.f.Ranges = addRange(af.f.Ranges, r)
			}
			af.digest = cmp.Or(digest, af.digest)
			return
		}
		af := &autoFile{f: File{Layer: k.layer, Path: f.Path, Ranges: slices.Clone(f.Ranges)}, digest: digest, seen: seen, at: float64(f.AtUS)}
		files[k] = af
		order = append(order, af)
	}
	if a != nil && a.Profile.Subject == rec.Subject {
		out.Starts += a.Starts
		for i, f := range a.Profile.Files {
			add(a.Profile, f, a.Digests[i], a.Seen[i])
		}
	}
	for i, f := range rec.Files {
		d := ""
		if i < len(digests) {
			d = digests[i]
		}
		add(rec, f, d, 1)
	}
	out.bound(order, lim)
	return out
}

// bound keeps of files those within lim (see Merge), in first-access order.
func (a *Auto) bound(files []*autoFile, lim AutoLimits) {
	maxFiles := MaxFiles
	if lim.Files > 0 {
		maxFiles = min(lim.Files, MaxFiles)
	}
	if len(files) > maxFiles {
		slices.SortStableFunc(files, func(x, y *autoFile) int {
			return cmp.Or(cmp.Compare(y.seen, x.seen), cmp.Compare(x.at, y.at))
		})
		files = files[:maxFiles]
	}
	slices.SortStableFunc(files, func(x, y *autoFile) int { return cmp.Compare(x.at, y.at) })
	var bytes int64
	for _, af := range files {
		var n int64
		for _, r := range af.f.Ranges {
			n += r.Len
		}
		if lim.Bytes > 0 && bytes+n > lim.Bytes {
			continue
		}
		bytes += n
		af.f.AtUS = int64(af.at)
		a.Profile.Files = append(a.Profile.Files, af.f)
		a.Seen = append(a.Seen, af.seen)
		a.Digests = append(a.Digests, af.digest)
	}
	if a.Seen == nil {
		a.Seen, a.Digests = []int{}, []string{}
	}
}
