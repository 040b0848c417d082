package ocilayout

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

var (
	// ErrDigestMismatch: a blob's bytes do not hash to its descriptor's digest, or are more
	// than its size.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrTruncated: a blob ended before its descriptor's size.
	ErrTruncated = errors.New("truncated blob")
)

// BlobPath is where the layout keeps the blob h. A digest becomes a path only if it is one
// v1.Hash would parse (a known algorithm, and its number of lowercase hex digits), so the
// path never leaves the layout.
func (l *Layout) BlobPath(h v1.Hash) (string, error) {
	if _, err := v1.NewHash(h.String()); err != nil {
		return "", fmt.Errorf("digest %q: %w", h.String(), err)
	}
	return filepath.Join(l.dir, "blobs", h.Algorithm, h.Hex), nil
}

// Blob opens the blob h for reading, unverified: the caller checks what it reads against the
// descriptor it came from (or uses ReadBlob).
func (l *Layout) Blob(h v1.Hash) (*os.File, error) {
	p, err := l.BlobPath(h)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("blob %s missing from %s: %w", h, l.dir, err)
	}
	return f, err
}

// ReadBlob reads a small blob (a manifest, an index, a config: at most MaxManifestSize
// bytes) and checks it against desc.
func (l *Layout) ReadBlob(desc v1.Descriptor) ([]byte, error) {
	if desc.Size > MaxManifestSize {
		return nil, fmt.Errorf("blob %s is %d bytes, more than the %d read into memory", desc.Digest, desc.Size, MaxManifestSize)
	}
	f, err := l.Blob(desc.Digest)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	vr, err := NewVerifyReader(f, desc, nil)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(vr)
}

// HasBlob reports whether the layout has the blob desc names: a file of its size under its
// digest (blobs are renamed into place only once checked, so one is trusted by its size).
func (l *Layout) HasBlob(desc v1.Descriptor) bool { return l.checkBlob(desc) == nil }

// checkBlob reports whether the blob desc names is in the layout, as large as desc says.
func (l *Layout) checkBlob(desc v1.Descriptor) error {
	p, err := l.BlobPath(desc.Digest)
	if err != nil {
		return err
	}
	fi, err := os.Stat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("blob %s missing from %s", desc.Digest, l.dir)
	case err != nil:
		return err
	case !fi.Mode().IsRegular() || fi.Size() != desc.Size:
		return fmt.Errorf("blob %s in %s is not a file of %d bytes", desc.Digest, l.dir, desc.Size)
	}
	return nil
}

// WriteBlob stores the blob desc names, read from r, unless the layout has a file of its size
// under its digest already (blobs are content-addressed). What r returns is checked against
// desc (ErrDigestMismatch, ErrTruncated) before it takes the digest's name.
func (l *Layout) WriteBlob(desc v1.Descriptor, r io.Reader) error {
	if l.HasBlob(desc) {
		return nil
	}
	p, err := l.BlobPath(desc.Digest)
	if err != nil {
		return err
	}
	vr, err := NewVerifyReader(r, desc, nil)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("write blob %s: %w", desc.Digest, err)
	}
	w, err := newTempFile(filepath.Dir(p), "."+desc.Digest.Hex+".tmp-*")
	if err != nil {
		return fmt.Errorf("write blob %s: %w", desc.Digest, err)
	}
	defer w.discard()
	if _, err := io.Copy(w.f, vr); err != nil {
		return fmt.Errorf("write blob %s: %w", desc.Digest, err)
	}
	if err := w.commit(p); err != nil {
		return fmt.Errorf("write blob %s: %w", desc.Digest, err)
	}
	return nil
}

// BlobWriter writes a sha256 blob whose digest is known only at its end (a layer compressed
// as it is written). Write, then Commit; Close discards what was not committed.
type BlobWriter struct {
	l *Layout
	t *tempFile
	h hash.Hash
	n int64
}

// NewBlob starts a blob of content yet unknown.
func (l *Layout) NewBlob() (*BlobWriter, error) {
	dir := filepath.Join(l.dir, "blobs", "sha256")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("new blob: %w", err)
	}
	t, err := newTempFile(dir, ".blob.tmp-*")
	if err != nil {
		return nil, fmt.Errorf("new blob: %w", err)
	}
	return &BlobWriter{l: l, t: t, h: sha256.New()}, nil
}

func (w *BlobWriter) Write(p []byte) (int, error) {
	n, err := w.t.f.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// Commit stores what was written under its digest and returns the digest and size.
func (w *BlobWriter) Commit() (v1.Hash, int64, error) {
	h := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(w.h.Sum(nil))}
	p, err := w.l.BlobPath(h)
	if err != nil {
		return v1.Hash{}, 0, err
	}
	if err := w.t.commit(p); err != nil {
		return v1.Hash{}, 0, fmt.Errorf("write blob %s: %w", h, err)
	}
	return h, w.n, nil
}

// Close discards the blob unless it was committed.
func (w *BlobWriter) Close() error {
	w.t.discard()
	return nil
}

// tempFile is a file written under a temporary name and renamed into place.
type tempFile struct {
	f    *os.File
	done bool
}

func newTempFile(dir, pattern string) (*tempFile, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	return &tempFile{f: f}, nil
}

// commit makes the file durable under path: mode 0644, fsync, rename, fsync of the directory.
func (t *tempFile) commit(path string) error {
	if t.done {
		return errors.New("already committed")
	}
	if err := t.f.Chmod(0o644); err != nil {
		return err
	}
	if err := t.f.Sync(); err != nil {
		return err
	}
	if err := t.f.Close(); err != nil {
		return err
	}
	if err := os.Rename(t.f.Name(), path); err != nil {
		return err
	}
	t.done = true
	return syncDir(filepath.Dir(path))
}

// discard removes the file unless it was committed.
func (t *tempFile) discard() {
	if t.done {
		return
	}
	t.done = true
	t.f.Close()
	os.Remove(t.f.Name())
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// VerifyReader passes a blob through while checking it against its descriptor: exactly
// desc.Size bytes that hash to desc.Digest. A failure (ErrDigestMismatch, ErrTruncated) is
// returned from Read in place of io.EOF, so nothing downstream mistakes a bad blob for a
// good one, and is remembered for Err.
type VerifyReader struct {
	r      io.Reader
	h      hash.Hash
	want   v1.Hash
	size   int64
	n      int64
	err    error         // sticky: io.EOF once verified, else the failure
	onRead func(n int64) // optional; told the running byte count
}

// NewVerifyReader checks r against desc as it is read; onRead, when not nil, is told the
// running byte count after each read.
func NewVerifyReader(r io.Reader, desc v1.Descriptor, onRead func(int64)) (*VerifyReader, error) {
	h, err := v1.Hasher(desc.Digest.Algorithm)
	if err != nil {
		return nil, fmt.Errorf("digest %s: %w", desc.Digest, err)
	}
	if desc.Size < 0 {
		return nil, fmt.Errorf("descriptor of %s has negative size %d", desc.Digest, desc.Size)
	}
	// One byte past the size is enough to tell a blob that is too long.
	return &VerifyReader{r: io.LimitReader(r, desc.Size+1), h: h, want: desc.Digest, size: desc.Size, onRead: onRead}, nil
}

func (v *VerifyReader) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.r.Read(p)
	if over := v.n + int64(n) - v.size; over > 0 {
		n -= int(over)
		err = fmt.Errorf("%w: blob %s is longer than the %d bytes its descriptor gives", ErrDigestMismatch, v.want, v.size)
	}
	v.h.Write(p[:n])
	v.n += int64(n)
	if v.onRead != nil && n > 0 {
		v.onRead(v.n)
	}
	switch {
	case err == nil:
		return n, nil
	case errors.Is(err, ErrDigestMismatch):
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
	case err == io.EOF && v.n < v.size:
		err = fmt.Errorf("%w: blob %s: read %d of %d bytes", ErrTruncated, v.want, v.n, v.size)
	case err == io.EOF || v.n == v.size:
		// At the end (or at the end with an error from a lower, verifying reader): our own
		// hash decides.
		if got := v.Sum(); got != v.want {
			err = fmt.Errorf("%w: blob hashes to %s, descriptor says %s", ErrDigestMismatch, got, v.want)
		} else if err != io.EOF {
			err = fmt.Errorf("read blob %s: %w", v.want, err)
		}
	default:
		// The source failed part way through: a dropped connection, or a registry that
		// sent fewer bytes than the descriptor promises.
		err = fmt.Errorf("%w: blob %s: read %d of %d bytes: %w", ErrTruncated, v.want, v.n, v.size, err)
	}
	v.err = err
	return n, err
}

// Sum is the digest of what was read so far.
func (v *VerifyReader) Sum() v1.Hash {
	return v1.Hash{Algorithm: v.want.Algorithm, Hex: hex.EncodeToString(v.h.Sum(nil))}
}

// Err reports why the blob failed verification, or nil if it has not (yet) failed.
func (v *VerifyReader) Err() error {
	if v.err == io.EOF {
		return nil
	}
	return v.err
}

// Finish reads whatever the consumer left unread and reports whether the whole blob
// verified.
func (v *VerifyReader) Finish() error {
	if _, err := io.Copy(io.Discard, v); err != nil {
		return err
	}
	return v.Err()
}
