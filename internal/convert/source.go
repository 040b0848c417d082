package convert

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"lazypull/internal/ocilayout"
)

// source is where an image is read from. Everything it returns is checked by the caller
// against the descriptor it came from, except root, which has no descriptor to check against.
type source interface {
	// root returns the descriptor and bytes of the manifest or index the location names.
	root(ctx context.Context) (v1.Descriptor, []byte, error)
	// manifest returns the bytes of a manifest an index lists, verified against desc.
	manifest(ctx context.Context, desc v1.Descriptor) ([]byte, error)
	// blob opens a blob for reading. The reader is not verified: wrap it in a verifyReader.
	blob(ctx context.Context, desc v1.Descriptor) (io.ReadCloser, error)
}

var (
	_ source = (*remoteSource)(nil)
	_ source = (*layoutSource)(nil)
)

// remoteSource reads from a registry.
type remoteSource struct {
	ref    name.Reference
	puller *remote.Puller
}

func (s *remoteSource) root(ctx context.Context) (v1.Descriptor, []byte, error) {
	d, err := s.puller.Get(ctx, s.ref)
	if err != nil {
		return v1.Descriptor{}, nil, describeRemoteError(err)
	}
	desc := d.Descriptor
	desc.Annotations, desc.ArtifactType = nil, "" // ggcr copies these from the manifest
	return desc, d.Manifest, nil
}

func (s *remoteSource) manifest(ctx context.Context, desc v1.Descriptor) ([]byte, error) {
	d, err := s.puller.Get(ctx, s.ref.Context().Digest(desc.Digest.String()))
	if err != nil {
		return nil, describeRemoteError(err)
	}
	return readVerified(bytes.NewReader(d.Manifest), desc)
}

func (s *remoteSource) blob(ctx context.Context, desc v1.Descriptor) (io.ReadCloser, error) {
	l, err := s.puller.Layer(ctx, s.ref.Context().Digest(desc.Digest.String()))
	if err != nil {
		return nil, describeRemoteError(err)
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, describeRemoteError(err)
	}
	return rc, nil
}

// layoutSource reads from a directory in OCI image layout.
type layoutSource struct {
	loc location
}

func (s *layoutSource) layout() *ocilayout.Layout { return ocilayout.At(s.loc.dir) }

func (s *layoutSource) root(ctx context.Context) (v1.Descriptor, []byte, error) {
	idx, err := s.layout().Index()
	if err != nil {
		return v1.Descriptor{}, nil, err
	}
	found := ocilayout.Tagged(idx, s.loc.tag)
	tags := ocilayout.Tags(idx)
	// A layout written without tags (ggcr's layout.Write, for one) is still usable when it
	// holds exactly one manifest and no tag was asked for.
	if len(found) == 0 && !s.loc.tagGiven && len(idx.Manifests) == 1 && len(tags) == 0 {
		found = idx.Manifests
	}
	switch {
	case len(found) == 0:
		have := "no tagged manifests"
		if len(tags) > 0 {
			have = "tags: " + strings.Join(tags, ", ")
		}
		return v1.Descriptor{}, nil, fmt.Errorf("tag %q not found in %s/index.json (%s)", s.loc.tag, s.loc.dir, have)
	case len(found) > 1:
		return v1.Descriptor{}, nil, fmt.Errorf("tag %q names %d manifests in %s/index.json", s.loc.tag, len(found), s.loc.dir)
	}
	desc := found[0]
	raw, err := s.manifest(ctx, desc)
	if err != nil {
		return v1.Descriptor{}, nil, fmt.Errorf("manifest %s: %w", desc.Digest, err)
	}
	desc.Annotations = nil
	return desc, raw, nil
}

func (s *layoutSource) manifest(ctx context.Context, desc v1.Descriptor) ([]byte, error) {
	rc, err := s.blob(ctx, desc)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return readVerified(rc, desc)
}

func (s *layoutSource) blob(_ context.Context, desc v1.Descriptor) (io.ReadCloser, error) {
	return s.layout().Blob(desc.Digest)
}
