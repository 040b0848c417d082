package profile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"lazypull/format"
	"lazypull/internal/jsonlimit"
)

// Media types of the profile artifact.
const (
	// ArtifactType is the artifactType of a profile's manifest, what referrers are
	// filtered by. It is also its config's media type (the config is "{}"): registries
	// that list referrers by their config's media type (go-containerregistry's own) then
	// agree with those that follow artifactType.
	ArtifactType = "application/vnd.lazypull.profile.v1"
	// MediaType is the media type of the profile document (the artifact's one layer).
	MediaType = "application/vnd.lazypull.profile.v1+json"
)

// Limits of a profile. A workload reads a few thousand files at start; these leave room
// for large ones while keeping a hostile profile from costing a mount more than a few
// MiB of memory and a few milliseconds.
const (
	// MaxSize bounds the document: about 40k files with a few ranges each.
	MaxSize = 8 << 20
	// MaxFiles bounds the files of a profile.
	MaxFiles = 100_000
	// MaxRanges bounds the ranges of one file; a Recorder coarsens past it.
	MaxRanges = 1024
	// MaxLayers bounds the layers a profile names (images have at most a few hundred).
	MaxLayers = 1024
	// maxPath bounds a path's length (Linux's PATH_MAX).
	maxPath = 4096
	// maxCommand bounds the recorded command, for display only.
	maxCommand = 64 << 10
)

// Profile is what a workload read at start.
type Profile struct {
	// Subject is the digest of the image manifest the profile was recorded on.
	Subject string `json:"subject"`
	// Created is when the recording ended.
	Created time.Time `json:"created"`
	// Command is the program that ran, for people reading the profile: one word, never its
	// arguments, which may carry secrets (a token, a password) and the profile is pushed to
	// the registry beside the image. Profiles recorded before kept the arguments; they still
	// parse.
	Command []string `json:"command,omitempty"`
	// Layers are the digests of the image's layer blobs, lowest first.
	Layers []string `json:"layers"`
	// Files are the files read, in first-access order.
	Files []File `json:"files"`
}

// File is one file a workload read.
type File struct {
	Layer  int     `json:"layer"` // index into Profile.Layers
	Path   string  `json:"path"`  // the entry's name in the layer's index
	AtUS   int64   `json:"at_us"` // first access, microseconds after the start
	Ranges []Range `json:"ranges"`
}

// Range is a byte range of a file: [Off, Off+Len).
type Range struct {
	Off, Len int64
}

// End is the offset just past the range.
func (r Range) End() int64 { return r.Off + r.Len }

// MarshalJSON writes a range as [offset, length]: profiles hold many, and pairs keep
// them small.
func (r Range) MarshalJSON() ([]byte, error) {
	return fmt.Appendf(nil, "[%d,%d]", r.Off, r.Len), nil
}

// UnmarshalJSON reads [offset, length]. It parses the pair itself: json.Unmarshal per
// range allocated some 300 bytes for each, 50 times the text of a small one.
func (r *Range) UnmarshalJSON(b []byte) error {
	s := bytes.TrimSpace(b)
	inner, open := bytes.CutPrefix(s, []byte("["))
	inner, closed := bytes.CutSuffix(inner, []byte("]"))
	if !open || !closed {
		return fmt.Errorf("range: want [offset, length], got %.20q", s)
	}
	if len(bytes.TrimSpace(inner)) == 0 {
		return errors.New("range: want [offset, length], got 0 numbers")
	}
	off, length, ok := bytes.Cut(inner, []byte(","))
	if !ok || bytes.IndexByte(length, ',') >= 0 {
		return fmt.Errorf("range: want [offset, length], got %d numbers", bytes.Count(inner, []byte(","))+1)
	}
	var err error
	if r.Off, err = parseInt(off); err == nil {
		r.Len, err = parseInt(length)
	}
	if err != nil {
		return fmt.Errorf("range: want [offset, length]: %w", err)
	}
	return nil
}

// parseInt parses a JSON integer (spaces around it allowed) that fits an int64.
func parseInt(b []byte) (int64, error) {
	b = bytes.TrimSpace(b)
	neg := len(b) > 0 && b[0] == '-'
	digits := b
	if neg {
		digits = b[1:]
	}
	if len(digits) == 0 || len(digits) > 1 && digits[0] == '0' {
		return 0, fmt.Errorf("%.24q: not an integer", b)
	}
	var v uint64
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%.24q: not an integer", b)
		}
		if v > (1<<63)/10 {
			return 0, fmt.Errorf("%.24q: out of range", b)
		}
		v = v*10 + uint64(c-'0')
	}
	switch {
	case neg && v <= 1<<63:
		return -int64(v), nil
	case !neg && v < 1<<63:
		return int64(v), nil
	}
	return 0, fmt.Errorf("%.24q: out of range", b)
}

// Bytes is the total length of the ranges of all files.
func (p *Profile) Bytes() int64 {
	var n int64
	for _, f := range p.Files {
		for _, r := range f.Ranges {
			n += r.Len
		}
	}
	return n
}

// Marshal encodes the profile, after checking it as Parse would.
func (p *Profile) Marshal() ([]byte, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	if len(b) > MaxSize {
		return nil, fmt.Errorf("profile: %d bytes encoded, more than the %d a mount accepts; profile a shorter start (--until, --duration)", len(b), MaxSize)
	}
	return append(b, '\n'), nil
}

// ErrTooLarge is wrapped by Parse's error for a document over MaxSize.
var ErrTooLarge = errors.New("profile too large")

// ReadFile reads and parses the profile document in file, reading no more of it than a
// document may hold; an error names the file.
func ReadFile(file string) (*Profile, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err == nil {
		var p *Profile
		if p, err = Parse(b); err == nil {
			return p, nil
		}
	}
	return nil, fmt.Errorf("%s: %w", file, err)
}

// Parse decodes and checks a profile document.
func Parse(b []byte) (*Profile, error) {
	if len(b) > MaxSize {
		return nil, fmt.Errorf("profile: %d bytes, more than %d: %w", len(b), MaxSize, ErrTooLarge)
	}
	// Each object is a File of 64 bytes or more, however short its text ("{}"): at most
	// MaxFiles of them (and the document's own), counted before decoding.
	if objects, _ := jsonlimit.Count(b); objects > MaxFiles+1 {
		return nil, fmt.Errorf("profile: %d objects, so %d or more files, more than %d: %w", objects, objects-1, MaxFiles, ErrTooLarge)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	var doc document
	if err := d.Decode(&doc); err != nil {
		return nil, fmt.Errorf("profile: not a profile document: %w", err)
	}
	if _, err := d.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("profile: data after the document")
	}
	p := Profile{Subject: doc.Subject, Created: doc.Created, Command: doc.Command, Layers: doc.Layers}
	if doc.Files != nil {
		p.Files = make([]File, len(doc.Files))
		for i, f := range doc.Files {
			p.Files[i] = File{Layer: f.Layer, Path: f.Path, AtUS: f.AtUS, Ranges: f.Ranges}
		}
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// document is a Profile as Parse decodes it: each array is counted before it is decoded,
// refused past its limit, and decoded into a slice of exactly its length. A slice grown
// by appending costs several times its size; a document of a million "" in its command
// cost 289 MiB to decode, of "[0,1]" ranges 430 MiB.
type document struct {
	Subject string                    `json:"subject"`
	Created time.Time                 `json:"created"`
	Command list[string, argsLimit]   `json:"command,omitempty"`
	Layers  list[string, layersLimit] `json:"layers"`
	Files   list[fileDoc, filesLimit] `json:"files"`
}

type fileDoc struct {
	Layer  int                      `json:"layer"`
	Path   string                   `json:"path"`
	AtUS   int64                    `json:"at_us"`
	Ranges list[Range, rangesLimit] `json:"ranges"`
}

// A limit says how many elements a list may hold, what they are, and whether its elements
// are objects to decode strictly (unknown fields refused).
type limit interface {
	limit() (n int, what string, strict bool)
}

type (
	argsLimit   struct{}
	layersLimit struct{}
	filesLimit  struct{}
	rangesLimit struct{}
)

func (argsLimit) limit() (int, string, bool)   { return maxCommand, "command arguments", false }
func (layersLimit) limit() (int, string, bool) { return MaxLayers, "layers", false }
func (filesLimit) limit() (int, string, bool)  { return MaxFiles, "files", true }
func (rangesLimit) limit() (int, string, bool) { return MaxRanges, "ranges", false }

// list is a JSON array of at most L's limit of T.
type list[T any, L limit] []T

func (l *list[T, L]) UnmarshalJSON(b []byte) error {
	var lim L
	max, what, strict := lim.limit()
	n := jsonlimit.Elements(b)
	if n > max {
		return fmt.Errorf("%d %s, more than %d: %w", n, what, max, ErrTooLarge)
	}
	v := make([]T, 0, n)
	if strict {
		d := json.NewDecoder(bytes.NewReader(b))
		d.DisallowUnknownFields()
		if err := d.Decode(&v); err != nil {
			return err
		}
	} else if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*l = v
	return nil
}

// Validate checks the profile's fields and limits; every error names the field at fault.
func (p *Profile) Validate() error {
	if _, err := format.ParseDigest(p.Subject); err != nil {
		return fmt.Errorf("profile: subject %q: %w", p.Subject, err)
	}
	n := 0
	for _, a := range p.Command {
		n += len(a)
	}
	if n > maxCommand {
		return fmt.Errorf("profile: command of %d bytes, more than %d", n, maxCommand)
	}
	if len(p.Layers) > MaxLayers {
		return fmt.Errorf("profile: %d layers, more than %d", len(p.Layers), MaxLayers)
	}
	for i, l := range p.Layers {
		if _, err := format.ParseDigest(l); err != nil {
			return fmt.Errorf("profile: layers[%d] %q: %w", i, l, err)
		}
	}
	if len(p.Files) > MaxFiles {
		return fmt.Errorf("profile: %d files, more than %d", len(p.Files), MaxFiles)
	}
	var at int64
	for i := range p.Files {
		f := &p.Files[i]
		if err := f.validate(len(p.Layers)); err != nil {
			return fmt.Errorf("profile: files[%d] (%q): %w", i, truncate(f.Path), err)
		}
		if f.AtUS < at {
			return fmt.Errorf("profile: files[%d] (%q): at_us %d before the previous file's %d: files must be in first-access order", i, truncate(f.Path), f.AtUS, at)
		}
		at = f.AtUS
	}
	return nil
}

func (f *File) validate(layers int) error {
	if f.Layer < 0 || f.Layer >= layers {
		return fmt.Errorf("layer %d: the profile has %d layers", f.Layer, layers)
	}
	if err := checkPath(f.Path); err != nil {
		return err
	}
	if f.AtUS < 0 {
		return fmt.Errorf("at_us %d: negative", f.AtUS)
	}
	if len(f.Ranges) == 0 {
		return errors.New("no ranges")
	}
	if len(f.Ranges) > MaxRanges {
		return fmt.Errorf("%d ranges, more than %d", len(f.Ranges), MaxRanges)
	}
	var end int64
	for j, r := range f.Ranges {
		if r.Off < 0 || r.Len <= 0 || r.Off > maxOffset-r.Len {
			return fmt.Errorf("ranges[%d] [%d, %d]: want offset >= 0 and length > 0", j, r.Off, r.Len)
		}
		if j > 0 && r.Off <= end {
			return fmt.Errorf("ranges[%d] [%d, %d]: starts at or before the end of the previous range (%d); ranges must be sorted and apart", j, r.Off, r.Len, end)
		}
		end = r.End()
	}
	return nil
}

// maxOffset bounds offsets and ends (1 EiB): no file is larger, and sums cannot overflow.
const maxOffset = 1 << 60

// checkPath accepts the names a layer index gives regular files: cleaned, relative, not
// the root, without "..".
func checkPath(p string) error {
	switch {
	case p == "":
		return errors.New("empty path")
	case len(p) > maxPath:
		return fmt.Errorf("path of %d bytes, more than %d", len(p), maxPath)
	case strings.IndexByte(p, 0) >= 0:
		return errors.New("path holds a NUL byte")
	case path.IsAbs(p) || path.Clean(p) != p || p == "." || p == ".." || strings.HasPrefix(p, "../"):
		return errors.New("path is not a cleaned relative path inside the image")
	}
	return nil
}

// truncate shortens a path for an error message.
func truncate(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}
