package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"lazypull/format"
)

// checkedName holds, per layer (a key the caller derives from the layer's blob and index
// digests), which of its header runs a reader found to match
// the layer's tar stream (format.Index.CheckRun): a bitmap, one bit per run, followed by
// its sha256 (damage makes it unreadable, not wrong). It saves a restarted reader from
// fetching the header frames again, and lets it serve a layer the store holds while the
// registry is unreachable. It is a cache like the rest: losing it costs a fetch.
const checkedName = "checked"

// Checked returns the run bitmap kept under key, or nil.
func (s *Store) Checked(key format.Digest) []byte {
	if !s.enter() {
		return nil
	}
	defer s.exit()
	b, err := os.ReadFile(s.checkedPath(key))
	if err != nil || len(b) < sha256.Size {
		return nil
	}
	bits, sum := b[:len(b)-sha256.Size], b[len(b)-sha256.Size:]
	if h := sha256.Sum256(bits); !bytes.Equal(h[:], sum) {
		_ = os.Remove(s.checkedPath(key))
		return nil
	}
	return bits
}

// PutChecked keeps bits as the run bitmap under key. It
// replaces the file atomically but does not fsync it: a power loss costs a fetch.
func (s *Store) PutChecked(key format.Digest, bits []byte) error {
	if !s.enter() {
		return ErrClosed
	}
	defer s.exit()
	dir := s.path(checkedName)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("store: keep checked runs of %s: %w", key, err)
	}
	sum := sha256.Sum256(bits)
	f, err := os.CreateTemp(dir, ".checked-*")
	if err != nil {
		return fmt.Errorf("store: keep checked runs of %s: %w", key, err)
	}
	_, err = f.Write(append(bits[:len(bits):len(bits)], sum[:]...))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), s.checkedPath(key))
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("store: keep checked runs of %s: %w", key, err)
	}
	return nil
}

func (s *Store) checkedPath(key format.Digest) string {
	return filepath.Join(s.path(checkedName), hex.EncodeToString(key[:]))
}
