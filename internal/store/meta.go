package store

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"lazypull/format"
)

// metaName holds what opening an image reads before any file: manifests and layer indexes,
// by the sha256 of their bytes, so that an image can be opened again (a snapshotter
// restarting, a node rebooting) while its registry is unreachable. They are small and are
// not counted in the bound or evicted.
const metaName = "meta"

// maxMeta bounds one metadata blob: a manifest is a few KiB, an index of 100,000 files a
// few MiB.
const maxMeta = 256 << 20

// PutMeta keeps b, a manifest or an index, under its sha256 (returned), durably.
func (s *Store) PutMeta(b []byte) (format.Digest, error) {
	d := format.Digest(sha256.Sum256(b))
	if len(b) > maxMeta {
		return d, fmt.Errorf("store: metadata %s of %d bytes is over the limit of %d", d, len(b), maxMeta)
	}
	if !s.enter() {
		return d, ErrClosed
	}
	defer s.exit()
	dir := s.path(metaName)
	p := s.metaPath(d)
	if _, err := os.Stat(p); err == nil {
		return d, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return d, fmt.Errorf("store: keep metadata %s: %w", d, err)
	}
	if err := writeFileAtomic(p, dir, b); err != nil {
		return d, fmt.Errorf("store: keep metadata %s: %w", d, err)
	}
	return d, nil
}

// HasMeta reports whether metadata is kept under d (unchecked: Meta checks it).
func (s *Store) HasMeta(d format.Digest) bool {
	if !s.enter() {
		return false
	}
	defer s.exit()
	_, err := os.Stat(s.metaPath(d))
	return err == nil
}

// metaPath is where metadata d is kept.
func (s *Store) metaPath(d format.Digest) string {
	return filepath.Join(s.path(metaName), hex.EncodeToString(d[:]))
}

// Meta returns the metadata kept under d, checked against d. It returns an error wrapping
// fs.ErrNotExist when there is none, and ErrCorrupt (after removing it) when what is kept
// does not hash to d.
func (s *Store) Meta(d format.Digest) ([]byte, error) {
	if !s.enter() {
		return nil, ErrClosed
	}
	defer s.exit()
	p := s.metaPath(d)
	b, err := os.ReadFile(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("store: metadata %s: %w", d, fs.ErrNotExist)
		}
		return nil, fmt.Errorf("store: metadata %s: %w", d, err)
	}
	if format.Digest(sha256.Sum256(b)) != d {
		_ = os.Remove(p)
		s.log.Error("store: kept metadata does not match its digest; removed", "digest", d, "file", p)
		return nil, fmt.Errorf("store: metadata %s: %w", d, ErrCorrupt)
	}
	return b, nil
}
