package profile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"lazypull/format"
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

// UnmarshalJSON reads [offset, length].
func (r *Range) UnmarshalJSON(b []byte) error {
	var v []int64
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("range: want [offset, length]: %w", err)
	}
	if len(v) != 2 {
		return fmt.Errorf("range: want [offset, length], got %d numbers", len(v))
	}
	r.Off, r.Len = v[0], v[1]
	return nil
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

// Parse decodes and checks a profile document.
func Parse(b []byte) (*Profile, error) {
	if len(b) > MaxSize {
		return nil, fmt.Errorf("profile: %d bytes, more than %d: %w", len(b), MaxSize, ErrTooLarge)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	var p Profile
	if err := d.Decode(&p); err != nil {
		return nil, fmt.Errorf("profile: not a profile document: %w", err)
	}
	if _, err := d.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("profile: data after the document")
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
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
