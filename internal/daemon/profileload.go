package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/internal/fetch"
	"lazypull/internal/profile"
)

// ErrProfileNoRepository: a profile named by its digest alone, where there is no
// repository to find it in (the source is an OCI layout).
var ErrProfileNoRepository = errors.New("a digest names a profile in the source's repository, but the source is an OCI layout; give a file or a registry reference")

// LoadProfile reads the profile that arg names, for a conversion of src: a file holding the
// document, the digest of a profile artifact in src's repository, or a registry reference
// (to a profile artifact by digest, or to an image whose newest profile is taken; platform
// picks the image of an index, nil for this machine's). Registries are read through client,
// under its plain-HTTP rule.
func LoadProfile(ctx context.Context, arg, src string, client *fetch.Client, platform *v1.Platform) (*profile.Profile, error) {
	if fi, err := os.Stat(arg); err == nil && fi.Mode().IsRegular() {
		return loadProfileFile(arg, fi.Size())
	}
	ref := arg
	if _, err := v1.NewHash(arg); err == nil {
		if strings.HasPrefix(src, "oci:") {
			return nil, fmt.Errorf("%s: %w", arg, ErrProfileNoRepository)
		}
		r, err := name.ParseReference(src)
		if err != nil {
			return nil, fmt.Errorf("%s: source %q: %w", arg, src, err)
		}
		ref = r.Context().Digest(arg).String()
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("%q: neither a file nor a reference: %w", arg, err)
	}
	reg, err := client.Open(ref)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", arg, err)
	}
	if d, ok := r.(name.Digest); ok {
		h, err := v1.NewHash(d.DigestStr())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", arg, err)
		}
		p, err := ReadProfile(ctx, reg, h)
		if err == nil {
			return p, nil
		}
		if !errors.Is(err, ErrNotProfile) {
			return nil, fmt.Errorf("%s: %w", arg, err)
		}
	}
	img, err := reg.Resolve(ctx, "", platform)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", arg, err)
	}
	p, _, err := FindProfile(ctx, reg, img.Descriptor.Digest)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", arg, err)
	}
	if p == nil {
		return nil, fmt.Errorf("%s: image %s has no profile: record one with 'lazypull profile'", arg, img.Descriptor.Digest)
	}
	return p, nil
}

// loadProfileFile reads and parses the profile document in file, of size bytes.
func loadProfileFile(file string, size int64) (*profile.Profile, error) {
	if size > profile.MaxSize {
		return nil, fmt.Errorf("%s: %d bytes, more than %d: %w", file, size, profile.MaxSize, profile.ErrTooLarge)
	}
	return profile.ReadFile(file)
}
