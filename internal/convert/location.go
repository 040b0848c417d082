package convert

import (
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// layoutPrefix starts a location that is an OCI image layout directory rather than a registry
// reference: oci:DIR[:TAG].
const layoutPrefix = "oci:"

// defaultTag is the tag a location without one means, in a registry and in a layout alike.
const defaultTag = "latest"

// location is a parsed SRC or DST: either a registry reference or a directory in OCI image
// layout with the tag (org.opencontainers.image.ref.name) of one of its manifests.
type location struct {
	raw string

	ref name.Reference // registry; nil for a layout

	dir      string // layout directory
	tag      string // layout tag
	tagGiven bool   // the tag was spelled out, not defaulted
}

func (l location) String() string { return l.raw }

func (l location) isLayout() bool { return l.ref == nil }

// parseLocation parses s as oci:DIR[:TAG] or as a registry reference. plainHTTP makes the
// registry be spoken to over http (loopback registries are anyway).
func parseLocation(s string, plainHTTP bool) (location, error) {
	loc := location{raw: s}
	if rest, ok := strings.CutPrefix(s, layoutPrefix); ok {
		loc.dir, loc.tag = rest, defaultTag
		// The tag follows the last colon, unless that colon is part of the path.
		if i := strings.LastIndex(rest, ":"); i >= 0 && !strings.Contains(rest[i+1:], "/") {
			loc.dir, loc.tag, loc.tagGiven = rest[:i], rest[i+1:], true
			if loc.tag == "" {
				return loc, fmt.Errorf("%q: empty tag after ':'", s)
			}
		}
		if loc.dir == "" {
			return loc, fmt.Errorf("%q: no directory after %q", s, layoutPrefix)
		}
		return loc, nil
	}
	if s == "" {
		return loc, errors.New("empty image reference")
	}
	if looksLikePath(s) {
		// name.ParseReference takes "/srv/app:v1" for a Docker Hub repository.
		return loc, fmt.Errorf("%q is a directory path, not a registry reference: an OCI image layout wants %s/abs/path[:tag] (here %s%s)",
			s, layoutPrefix, layoutPrefix, s)
	}
	var opts []name.Option
	if plainHTTP {
		opts = append(opts, name.Insecure)
	}
	ref, err := name.ParseReference(s, opts...)
	if err != nil {
		return loc, err
	}
	loc.ref = ref
	return loc, nil
}

// looksLikePath reports whether s is spelled as a file system path (absolute, or relative
// to "." or ".."), which no registry reference is.
func looksLikePath(s string) bool {
	return strings.HasPrefix(s, "/") || strings.HasPrefix(s, "./") || strings.HasPrefix(s, "../") || s == "." || s == ".."
}
