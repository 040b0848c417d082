package service

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Size is a number of bytes as a flag or a config key takes it: a plain number of bytes
// ("1073741824"), or one with a unit: K, M, G, T and KiB, MiB, GiB, TiB are powers of
// 1024 (as in du, ls -h and Docker), KB, MB, GB, TB powers of 1000; a fraction is allowed
// ("1.5G"); case does not matter. A store's bound may also be SizeAuto.
type Size int64

// SizeAuto, spelled "auto", bounds the store by the file system holding it (AutoBound).
const SizeAuto Size = -1

// AutoFraction is the part of its file system's size that an "auto" store bound allows:
// a quarter. The store is a cache that keeps a node's lazily read content, on the disk
// that containerd's images and containers and the pods' logs share: a quarter leaves
// the rest to them and to kubelet's thresholds (image GC from 85% used, eviction at 90%),
// so that the store alone never pushes a node into them, and is still room for the
// content a node's images read at start many times over (a few percent of each image).
const AutoFraction = 4

var units = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kib": 1 << 10, "kb": 1e3,
	"m": 1 << 20, "mib": 1 << 20, "mb": 1e6,
	"g": 1 << 30, "gib": 1 << 30, "gb": 1e9,
	"t": 1 << 40, "tib": 1 << 40, "tb": 1e12,
}

// ParseSize parses a size (see Size); not "auto", and never negative.
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	}
	mult, ok := units[unit]
	if num == "" || !ok {
		return 0, fmt.Errorf("size %q: want bytes, or a number with a unit (K, M, G, T, KiB, ..., KB, ...), like 10G or 512MiB", s)
	}
	if n, err := strconv.ParseInt(num, 10, 64); err == nil {
		if n > math.MaxInt64/mult {
			return 0, fmt.Errorf("size %q: too large", s)
		}
		return Size(n * mult), nil
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", s, errors.Unwrap(err))
	}
	if b := f * float64(mult); b < math.MaxInt64 {
		return Size(b), nil
	}
	return 0, fmt.Errorf("size %q: too large", s)
}

// String spells the size as Set takes it: "auto", bytes, or a whole number of a binary
// unit.
func (z Size) String() string {
	if z == SizeAuto {
		return "auto"
	}
	for _, u := range []string{"T", "G", "M", "K"} {
		if m := units[strings.ToLower(u)]; z != 0 && int64(z)%m == 0 {
			return strconv.FormatInt(int64(z)/m, 10) + u
		}
	}
	return strconv.FormatInt(int64(z), 10)
}

// Set parses s (ParseSize), or "auto".
func (z *Size) Set(s string) error {
	if strings.EqualFold(strings.TrimSpace(s), "auto") {
		*z = SizeAuto
		return nil
	}
	n, err := ParseSize(s)
	if err != nil {
		return err
	}
	*z = n
	return nil
}

// Bytes is the bound the store at dir gets from z: z itself, or for SizeAuto, the
// AutoFraction of the size of the file system dir is (or will be) on.
func (z Size) Bytes(dir string) (int64, error) {
	if z != SizeAuto {
		return int64(z), nil
	}
	return AutoBound(dir)
}

// AutoBound is the "auto" bound of a store at dir: the AutoFraction of the size of the
// file system holding it (of the nearest existing parent, before the store is made).
func AutoBound(dir string) (int64, error) {
	p, err := filepath.Abs(dir)
	if err != nil {
		return 0, fmt.Errorf("store bound auto: %w", err)
	}
	for {
		var st unix.Statfs_t
		err := unix.Statfs(p, &st)
		if err == nil {
			return int64(st.Blocks) * st.Bsize / AutoFraction, nil
		}
		if p == "/" || !errors.Is(err, unix.ENOENT) {
			return 0, fmt.Errorf("store bound auto: size of the file system of %s: %w", dir, err)
		}
		p = filepath.Dir(p)
	}
}
