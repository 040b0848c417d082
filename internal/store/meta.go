package store

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"lazypull/format"
)

// metaName holds what opening an image reads before any file: manifests and layer indexes,
// by the sha256 of their bytes, so that an image can be opened again (a snapshotter
// restarting, a node rebooting) while its registry is unreachable. They count in the
// store's bytes and bound like objects (Stats.Bytes, Stats.MetaBytes), and are evicted in
// the same least-recently-used order: a read (Meta, HasMeta) or a write (PutMeta) is a
// use. An evicted manifest or index costs a fetch from the registry the next time its
// image is opened.
const metaName = "meta"

// metaTemp is the name of metadata being written in meta/: "." + hex + "-" + digits.
// Open removes these, and nothing else it does not know, from meta/.
func metaTemp(d format.Digest) string { return "." + hex.EncodeToString(d[:]) + "-*" }

// maxMeta bounds one metadata blob: a manifest is a few KiB, an index of 100,000 files a
// few MiB.
const maxMeta = 256 << 20

// PutMeta keeps b, a manifest or an index, under its sha256 (returned), durably.
func (s *Store) PutMeta(b []byte) (format.Digest, error) {
	d := format.Digest(sha256.Sum256(b))
	if len(b) > maxMeta {
		return d, fmt.Errorf("store: metadata %s of %d bytes is over the limit of %d", d, len(b), maxMeta)
	}
	if s.maxBytes > 0 && int64(len(b)) > s.maxBytes {
		// Kept, it would evict everything else and then itself.
		return d, fmt.Errorf("store: metadata %s of %d bytes is larger than the store's bound of %d", d, len(b), s.maxBytes)
	}
	if !s.enter() {
		return d, ErrClosed
	}
	defer s.exit()
	if s.useMeta(d) != nil {
		return d, nil
	}
	dir := s.path(metaName)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return d, fmt.Errorf("store: keep metadata %s: %w", d, err)
	}
	tmp, err := writeSynced(dir, metaTemp(d), b)
	if err != nil {
		return d, fmt.Errorf("store: keep metadata %s: %w", d, err)
	}
	// The rename and the index change together, as commit does for objects: eviction
	// never sees a file the index does not, nor the other way round.
	s.mu.Lock()
	if s.metas[d] != nil {
		s.mu.Unlock()
		_ = os.Remove(tmp)
		return d, nil
	}
	if err := os.Rename(tmp, s.metaPath(d)); err != nil {
		s.mu.Unlock()
		_ = os.Remove(tmp)
		return d, fmt.Errorf("store: keep metadata %s: %w", d, err)
	}
	o := &object{digest: d, size: int64(len(b)), stamp: time.Now().Unix(), meta: true}
	o.elem = s.lru.PushFront(o)
	s.metas[d] = o
	s.bytes += o.size
	s.metaBytes += o.size
	s.changes.Add(1)
	s.enforceLocked()
	s.mu.Unlock()
	if err := syncDir(dir); err != nil {
		return d, fmt.Errorf("store: keep metadata %s: %w", d, err)
	}
	return d, nil
}

// useMeta marks metadata d as just used, and returns it; nil if the store has none.
func (s *Store) useMeta(d format.Digest) *object {
	s.mu.Lock()
	o := s.metas[d]
	stamp := o != nil && s.touchLocked(o)
	s.mu.Unlock()
	if stamp {
		s.stamp(o)
	}
	return o
}

// HasMeta reports whether metadata is kept under d (unchecked: Meta checks it).
func (s *Store) HasMeta(d format.Digest) bool {
	if !s.enter() {
		return false
	}
	defer s.exit()
	return s.useMeta(d) != nil
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
	o := s.useMeta(d)
	if o == nil {
		return nil, fmt.Errorf("store: metadata %s: %w", d, fs.ErrNotExist)
	}
	p := s.metaPath(d)
	b, err := readLimited(p, maxMeta)
	switch {
	case err == nil && format.Digest(sha256.Sum256(b)) == d:
		return b, nil
	case errors.Is(err, fs.ErrNotExist):
		s.mu.Lock()
		if s.metas[d] == o {
			s.forgetLocked(o) // removed behind the store's back
		}
		s.mu.Unlock()
		return nil, fmt.Errorf("store: metadata %s: %w", d, fs.ErrNotExist)
	case err != nil && !errors.Is(err, errTooLarge):
		return nil, fmt.Errorf("store: metadata %s: %w", d, err)
	}
	s.mu.Lock()
	if s.metas[d] == o {
		_ = s.removeLocked(o)
	}
	s.mu.Unlock()
	s.log.Error("store: kept metadata does not match its digest; removed", "digest", d, "file", p, "err", err)
	return nil, fmt.Errorf("store: metadata %s: %w", d, ErrCorrupt)
}

var errTooLarge = errors.New("metadata over the size limit")

// readLimited reads a file of at most limit bytes.
func readLimited(p string, limit int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err == nil && int64(len(b)) > limit {
		err = fmt.Errorf("%w of %d bytes", errTooLarge, limit)
	}
	return b, err
}

// scanMeta indexes meta/ for Open: files named by a sha256 hex. It removes the temp files a
// process that died left there (metaTemp), and leaves anything else alone.
func (s *Store) scanMeta() ([]scanned, error) {
	dir := s.path(metaName)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", s.dir, err)
	}
	var out []scanned
	var removed int
	var others []string
	for _, e := range ents {
		name := e.Name()
		d, ok := parseHexDigest(name)
		switch {
		case ok && e.Type().IsRegular():
			info, err := e.Info()
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					continue
				}
				return nil, fmt.Errorf("store %s: %w", s.dir, err)
			}
			out = append(out, scanned{d: d, size: info.Size(), mtime: info.ModTime().Unix(), meta: true})
		case e.Type().IsRegular() && strings.HasPrefix(name, ".") && len(name) > 65 && isTempOf(name, "."+name[1:65]+"-*"):
			if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("store %s: remove temp file: %w", s.dir, err)
			}
			removed++
		default:
			others = append(others, name)
		}
	}
	if removed > 0 {
		s.log.Info("store: removed temp files of an earlier run", "dir", dir, "count", removed)
	}
	if len(others) > 0 {
		s.log.Warn("store: leaving files in its metadata directory that it did not make", "dir", dir, "files", strings.Join(others, ","))
	}
	return out, nil
}
