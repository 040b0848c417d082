package convert

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/internal/artifact"
	"lazypull/internal/ocilayout"
)

// sink is where a converted image is written. Convert calls putBlob for every blob, then
// putManifest for the manifests an index lists, then tag exactly once, last: until tag
// succeeds nothing under the destination's name has changed.
type sink interface {
	// check fails early if the destination cannot be written at all.
	check(ctx context.Context) error
	// putBlob stores a blob. open may be called more than once (a retried upload) and must
	// return the same desc.Size bytes each time.
	putBlob(ctx context.Context, desc v1.Descriptor, open func() (io.ReadCloser, error)) error
	// putManifest stores a manifest by digest without tagging it.
	putManifest(ctx context.Context, desc v1.Descriptor, raw []byte) error
	// tag stores a manifest and points the destination's tag at it.
	tag(ctx context.Context, desc v1.Descriptor, raw []byte) error
}

var (
	_ sink = (*remoteSink)(nil)
	_ sink = (*layoutSink)(nil)
)

// remoteSink writes to a registry.
type remoteSink struct {
	ref       name.Reference
	pusher    *remote.Pusher
	keychain  authn.Keychain
	transport http.RoundTripper
}

func (s *remoteSink) check(ctx context.Context) error {
	if err := remote.CheckPushPermission(s.ref, s.keychain, s.transport); err != nil {
		return fmt.Errorf("cannot push: %w", describeRemoteError(err))
	}
	return nil
}

func (s *remoteSink) putBlob(ctx context.Context, desc v1.Descriptor, open func() (io.ReadCloser, error)) error {
	if err := s.pusher.Upload(ctx, s.ref.Context(), &blobLayer{desc: desc, open: open}); err != nil {
		return fmt.Errorf("push blob %s: %w", desc.Digest, describeRemoteError(err))
	}
	return nil
}

func (s *remoteSink) putManifest(ctx context.Context, desc v1.Descriptor, raw []byte) error {
	if err := s.pusher.Put(ctx, s.ref.Context().Digest(desc.Digest.String()), artifact.Raw{Bytes: raw, Type: desc.MediaType}); err != nil {
		return fmt.Errorf("push manifest %s: %w", desc.Digest, describeRemoteError(err))
	}
	return nil
}

func (s *remoteSink) tag(ctx context.Context, desc v1.Descriptor, raw []byte) error {
	if err := s.pusher.Put(ctx, s.ref, artifact.Raw{Bytes: raw, Type: desc.MediaType}); err != nil {
		return fmt.Errorf("push manifest %s as %s: %w", desc.Digest, s.ref, describeRemoteError(err))
	}
	return nil
}

// blobLayer is the v1.Layer ggcr's pusher uploads: a blob of known digest and size.
type blobLayer struct {
	desc v1.Descriptor
	open func() (io.ReadCloser, error)
}

var _ v1.Layer = (*blobLayer)(nil)

var errNotUncompressed = errors.New("blob layer: uncompressed form not available")

func (l *blobLayer) Digest() (v1.Hash, error)             { return l.desc.Digest, nil }
func (l *blobLayer) Size() (int64, error)                 { return l.desc.Size, nil }
func (l *blobLayer) MediaType() (types.MediaType, error)  { return l.desc.MediaType, nil }
func (l *blobLayer) Compressed() (io.ReadCloser, error)   { return l.open() }
func (l *blobLayer) DiffID() (v1.Hash, error)             { return v1.Hash{}, errNotUncompressed }
func (l *blobLayer) Uncompressed() (io.ReadCloser, error) { return nil, errNotUncompressed }

// layoutSink writes to a directory in OCI image layout, creating it if needed. The layout
// (internal/ocilayout) checks every blob against its descriptor and renames it into place,
// and replaces index.json atomically at the end.
type layoutSink struct {
	loc location
}

func (s *layoutSink) layout() *ocilayout.Layout { return ocilayout.At(s.loc.dir) }

func (s *layoutSink) check(context.Context) error {
	l := s.layout()
	if err := l.Init(); err != nil {
		return err
	}
	// An index.json we could not update later is better found now.
	if l.HasIndex() {
		if _, err := l.Index(); err != nil {
			return err
		}
	}
	// Root ignores permission bits, so try a write rather than look at them.
	f, err := os.CreateTemp(filepath.Join(s.loc.dir, "blobs", "sha256"), ".probe-*")
	if err != nil {
		return fmt.Errorf("OCI layout not writable: %w", err)
	}
	f.Close()
	return os.Remove(f.Name())
}

func (s *layoutSink) putBlob(_ context.Context, desc v1.Descriptor, open func() (io.ReadCloser, error)) error {
	l := s.layout()
	if l.HasBlob(desc) {
		return nil // content-addressed: already there
	}
	rc, err := open()
	if err != nil {
		return err
	}
	defer rc.Close()
	return l.WriteBlob(desc, rc)
}

func (s *layoutSink) putManifest(ctx context.Context, desc v1.Descriptor, raw []byte) error {
	return s.putBlob(ctx, desc, func() (io.ReadCloser, error) { return readerOf(raw), nil })
}

func (s *layoutSink) tag(ctx context.Context, desc v1.Descriptor, raw []byte) error {
	if err := s.putManifest(ctx, desc, raw); err != nil {
		return err
	}
	return s.layout().Tag(v1.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size}, s.loc.tag)
}
