package convert

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// maxManifestSize bounds how much of a manifest or config blob is read into memory.
const maxManifestSize = 64 << 20

// verifyReader passes a blob through while checking it against its descriptor: exactly
// desc.Size bytes that hash to desc.Digest. A failure is returned from Read in place of io.EOF,
// so nothing downstream mistakes a bad blob for a good one, and is remembered for Err.
type verifyReader struct {
	r      io.Reader
	h      hash.Hash
	want   v1.Hash
	size   int64
	n      int64
	err    error         // sticky: io.EOF once verified, else the failure
	onRead func(n int64) // optional; told the running byte count
}

func newVerifyReader(r io.Reader, desc v1.Descriptor, onRead func(int64)) (*verifyReader, error) {
	h, err := v1.Hasher(desc.Digest.Algorithm)
	if err != nil {
		return nil, fmt.Errorf("digest %s: %w", desc.Digest, err)
	}
	if desc.Size < 0 {
		return nil, fmt.Errorf("descriptor of %s has negative size %d", desc.Digest, desc.Size)
	}
	// One byte past the size is enough to tell a blob that is too long.
	return &verifyReader{r: io.LimitReader(r, desc.Size+1), h: h, want: desc.Digest, size: desc.Size, onRead: onRead}, nil
}

func (v *verifyReader) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.r.Read(p)
	if over := v.n + int64(n) - v.size; over > 0 {
		n -= int(over)
		err = fmt.Errorf("%w: blob is longer than the %d bytes its descriptor gives", ErrDigestMismatch, v.size)
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
		err = fmt.Errorf("%w: read %d of %d bytes", ErrTruncated, v.n, v.size)
	case err == io.EOF || v.n == v.size:
		// At the end (or at the end with an error from a lower, verifying reader): our own
		// hash decides.
		if got := v.sum(); got != v.want {
			err = fmt.Errorf("%w: content hashes to %s, descriptor says %s", ErrDigestMismatch, got, v.want)
		} else if err != io.EOF {
			err = fmt.Errorf("read blob: %w", err)
		}
	default:
		// The source failed part way through: a dropped connection, or a registry that
		// sent fewer bytes than the descriptor promises.
		err = fmt.Errorf("%w: read %d of %d bytes: %w", ErrTruncated, v.n, v.size, err)
	}
	v.err = err
	return n, err
}

func (v *verifyReader) sum() v1.Hash {
	return v1.Hash{Algorithm: v.want.Algorithm, Hex: hex.EncodeToString(v.h.Sum(nil))}
}

// Err reports why the blob failed verification, or nil if it has not (yet) failed.
func (v *verifyReader) Err() error {
	if v.err == io.EOF {
		return nil
	}
	return v.err
}

// finish reads whatever the consumer left unread and reports whether the whole blob verified.
func (v *verifyReader) finish() error {
	if _, err := io.Copy(io.Discard, v); err != nil {
		return err
	}
	return v.Err()
}

// readVerified reads a whole small blob (manifest, config) and checks it against desc.
func readVerified(r io.Reader, desc v1.Descriptor) ([]byte, error) {
	if desc.Size > maxManifestSize {
		return nil, fmt.Errorf("blob %s is %d bytes, more than the %d allowed for a manifest or config", desc.Digest, desc.Size, maxManifestSize)
	}
	vr, err := newVerifyReader(r, desc, nil)
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(vr)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// descriptorOf is the sha256 descriptor of b with media type mt.
func descriptorOf(b []byte, mt types.MediaType) v1.Descriptor {
	h, n, _ := v1.SHA256(bytes.NewReader(b)) // reading from memory cannot fail
	return v1.Descriptor{MediaType: mt, Digest: h, Size: n}
}
