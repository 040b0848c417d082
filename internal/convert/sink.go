package convert

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
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
	if err := s.pusher.Put(ctx, s.ref.Context().Digest(desc.Digest.String()), rawManifest{raw, desc.MediaType}); err != nil {
		return fmt.Errorf("push manifest %s: %w", desc.Digest, describeRemoteError(err))
	}
	return nil
}

func (s *remoteSink) tag(ctx context.Context, desc v1.Descriptor, raw []byte) error {
	if err := s.pusher.Put(ctx, s.ref, rawManifest{raw, desc.MediaType}); err != nil {
		return fmt.Errorf("push manifest %s as %s: %w", desc.Digest, s.ref, describeRemoteError(err))
	}
	return nil
}

// rawManifest is a remote.Taggable of bytes already serialized.
type rawManifest struct {
	raw []byte
	mt  types.MediaType
}

func (m rawManifest) RawManifest() ([]byte, error)        { return m.raw, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return m.mt, nil }

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

// layoutSink writes to a directory in OCI image layout, creating it if needed. Blobs are
// written to a temp file and renamed into place; index.json is replaced atomically at the end.
type layoutSink struct {
	loc location
}

const ociLayoutFile = `{"imageLayoutVersion":"1.0.0"}`

func (s *layoutSink) check(context.Context) error {
	dir := s.loc.dir
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return fmt.Errorf("create OCI layout: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "oci-layout")); errors.Is(err, fs.ErrNotExist) {
		if err := writeFileAtomic(filepath.Join(dir, "oci-layout"), []byte(ociLayoutFile)); err != nil {
			return fmt.Errorf("create OCI layout: %w", err)
		}
	} else if err != nil {
		return err
	}
	// An index.json we could not update later is better found now.
	if _, err := os.Stat(filepath.Join(dir, "index.json")); err == nil {
		if _, err := readLayoutIndex(dir); err != nil {
			return err
		}
	}
	// Root ignores permission bits, so try a write rather than look at them.
	f, err := os.CreateTemp(blobs, ".probe-*")
	if err != nil {
		return fmt.Errorf("OCI layout not writable: %w", err)
	}
	f.Close()
	return os.Remove(f.Name())
}

func (s *layoutSink) putBlob(_ context.Context, desc v1.Descriptor, open func() (io.ReadCloser, error)) error {
	path := blobPath(s.loc.dir, desc.Digest)
	if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() && fi.Size() == desc.Size {
		return nil // content-addressed: already there
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	rc, err := open()
	if err != nil {
		return err
	}
	defer rc.Close()
	vr, err := newVerifyReader(rc, desc, nil)
	if err != nil {
		return err
	}
	if err := writeFileAtomicFrom(path, vr); err != nil {
		return fmt.Errorf("write blob %s: %w", desc.Digest, err)
	}
	return nil
}

func (s *layoutSink) putManifest(ctx context.Context, desc v1.Descriptor, raw []byte) error {
	return s.putBlob(ctx, desc, func() (io.ReadCloser, error) { return readerOf(raw), nil })
}

func (s *layoutSink) tag(ctx context.Context, desc v1.Descriptor, raw []byte) error {
	if err := s.putManifest(ctx, desc, raw); err != nil {
		return err
	}
	idx := &v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}
	if _, err := os.Stat(filepath.Join(s.loc.dir, "index.json")); err == nil {
		if idx, err = readLayoutIndex(s.loc.dir); err != nil {
			return err
		}
	}
	kept := idx.Manifests[:0]
	for _, d := range idx.Manifests {
		if d.Annotations[annotationRefName] != s.loc.tag {
			kept = append(kept, d)
		}
	}
	entry := v1.Descriptor{
		MediaType:   desc.MediaType,
		Digest:      desc.Digest,
		Size:        desc.Size,
		Annotations: map[string]string{annotationRefName: s.loc.tag},
	}
	idx.Manifests = append(kept, entry)
	b, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(s.loc.dir, "index.json"), append(b, '\n')); err != nil {
		return fmt.Errorf("update index.json: %w", err)
	}
	return nil
}

// writeFileAtomic replaces path with data: temp file, fsync, rename, fsync of the directory.
// Every blob goes through it, so by the time index.json names a manifest, all it refers to is
// durable.
func writeFileAtomic(path string, data []byte) error {
	return writeFileAtomicFrom(path, bytes.NewReader(data))
}

func writeFileAtomicFrom(path string, r io.Reader) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err = io.Copy(f, r); err != nil {
		return err
	}
	if err = f.Chmod(0o644); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
