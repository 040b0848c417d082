package store

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"lazypull/format"
)

// profilesName holds the profiles this node recorded of the images it started (automatic
// profiles, daemon/autoprofile.go), one file per image manifest, opaque to the store:
//
//	<dir>/profiles/<group>-<hex>   the profile of the image manifest whose sha256 is <hex>;
//	                               <group> is 16 hex digits of the sha256 of the name of
//	                               the group it is kept in (its repository), so that the
//	                               profiles of one repository are listed without reading any
//
// Unlike objects and metadata, a profile is not named by its own content: it is rewritten
// when another start is merged in (temp file, fsync, rename, fsync of the directory, so a
// crash leaves the old one or the new one). What is read back is the caller's to parse as
// untrusted bytes. Profiles do not count in the store's bytes: there are at most
// MaxProfiles of at most MaxProfileSize, and the oldest are removed past that.
const profilesName = "profiles"

// Limits of the profiles a store keeps.
const (
	// MaxProfileSize bounds one profile as kept (the document and what the daemon keeps
	// beside it to merge starts).
	MaxProfileSize = 16 << 20
	// MaxProfiles bounds the profiles kept; the least recently written go first.
	MaxProfiles = 256
	// profileTempAge is how old a temp file in profiles/ must be before a write removes
	// it: one a process that died left behind, not one being written.
	profileTempAge = 10 * time.Minute
)

// profileGroup is how the store names a group of profiles (a repository): 16 hex digits of
// the sha256 of its name.
func profileGroup(group string) string {
	h := sha256.Sum256([]byte(group))
	return hex.EncodeToString(h[:8])
}

// PutProfile keeps b as the profile of the image manifest d, in group (the image's
// repository), replacing the one kept before; the oldest profiles beyond MaxProfiles are
// removed.
func (s *Store) PutProfile(group string, d format.Digest, b []byte) error {
	if len(b) > MaxProfileSize {
		return fmt.Errorf("store: profile of %s: %d bytes, more than %d", d, len(b), MaxProfileSize)
	}
	if !s.enter() {
		return ErrClosed
	}
	defer s.exit()
	dir := s.path(profilesName)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("store: keep profile of %s: %w", d, err)
	}
	name := profileGroup(group) + "-" + hex.EncodeToString(d[:])
	// The same image kept under another group (pulled from another repository) is the
	// same profile: one file per image.
	if old, _ := s.profilePath(d); old != "" && filepath.Base(old) != name {
		_ = os.Remove(old)
	}
	if err := writeFileAtomic(filepath.Join(dir, name), dir, b); err != nil {
		return fmt.Errorf("store: keep profile of %s: %w", d, err)
	}
	return s.trimProfiles(dir)
}

// trimProfiles removes the least recently written profiles beyond MaxProfiles, and temp
// files older than profileTempAge.
func (s *Store) trimProfiles(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("store: profiles: %w", err)
	}
	type kept struct {
		name string
		at   time.Time
	}
	var all []kept
	for _, e := range ents {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() {
			continue
		}
		if strings.HasPrefix(e.Name(), ".") {
			if time.Since(info.ModTime()) > profileTempAge {
				_ = os.Remove(filepath.Join(dir, e.Name()))
			}
			continue
		}
		all = append(all, kept{e.Name(), info.ModTime()})
	}
	if len(all) <= MaxProfiles {
		return nil
	}
	slices.SortFunc(all, func(a, b kept) int { return b.at.Compare(a.at) })
	for _, k := range all[MaxProfiles:] {
		_ = os.Remove(filepath.Join(dir, k.name))
	}
	s.log.Info("store: removed the oldest profiles", "dir", dir, "removed", len(all)-MaxProfiles, "kept", MaxProfiles)
	return nil
}

// profilePath returns the file of the profile of d; "" when there is none.
func (s *Store) profilePath(d format.Digest) (string, error) {
	m, err := filepath.Glob(filepath.Join(s.path(profilesName), "*-"+hex.EncodeToString(d[:])))
	if err != nil || len(m) == 0 {
		return "", err
	}
	return m[0], nil
}

// Profile returns the profile kept of the image manifest d (PutProfile): bytes to parse as
// untrusted. It returns an error wrapping fs.ErrNotExist when there is none.
func (s *Store) Profile(d format.Digest) ([]byte, error) {
	if !s.enter() {
		return nil, ErrClosed
	}
	defer s.exit()
	p, err := s.profilePath(d)
	if err == nil && p == "" {
		err = fs.ErrNotExist
	}
	if err != nil {
		return nil, fmt.Errorf("store: profile of %s: %w", d, err)
	}
	b, err := readLimited(p, MaxProfileSize)
	if err != nil {
		return nil, fmt.Errorf("store: profile of %s (%s): %w", d, p, err)
	}
	return b, nil
}

// RemoveProfile removes the profile kept of the image manifest d, if any (one that does
// not parse).
func (s *Store) RemoveProfile(d format.Digest) error {
	if !s.enter() {
		return ErrClosed
	}
	defer s.exit()
	p, err := s.profilePath(d)
	if err != nil || p == "" {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("store: remove profile of %s: %w", d, err)
	}
	return nil
}

// Profiles lists the image manifests of group (PutProfile) whose profiles are kept, the
// most recently written first.
func (s *Store) Profiles(group string) ([]format.Digest, error) {
	if !s.enter() {
		return nil, ErrClosed
	}
	defer s.exit()
	prefix := profileGroup(group) + "-"
	ents, err := os.ReadDir(s.path(profilesName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: profiles: %w", err)
	}
	type kept struct {
		d  format.Digest
		at time.Time
	}
	var all []kept
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok {
			continue
		}
		d, ok := parseHexDigest(rest)
		info, err := e.Info()
		if !ok || err != nil || !info.Mode().IsRegular() {
			continue
		}
		all = append(all, kept{d, info.ModTime()})
	}
	slices.SortFunc(all, func(a, b kept) int { return b.at.Compare(a.at) })
	out := make([]format.Digest, len(all))
	for i, k := range all {
		out[i] = k.d
	}
	return out, nil
}
