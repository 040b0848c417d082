package imageindex

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"lazypull/format"
)

// Table is a layer's file table: its tar entries in tar order, each with the metadata
// format's index carries (format.Entry: name, type, mode, owner, mtime, size, link name,
// device, xattrs, and a regular file's sha256). Where content lies is in the uncompressed
// tar stream, not in frames: a regular file's TarOffset is its content's first byte and
// TarLen its Size; a sparse file's, as in format, are its whole tar record's, header
// included. FirstFrame and NumFrames are unused (zero).
type Table struct {
	TarSize int64 // the uncompressed tar stream's length
	Entries []format.Entry
}

// Limits of a table's encoding. Decode allocates at most MemFactor times its input plus
// MemSlack, and never more than MaxMemory.
const (
	// MaxTableSize bounds an encoded table: about 2 million entries.
	MaxTableSize = 256 << 20
	MemFactor    = 32
	MemSlack     = 4 << 10
	MaxMemory    = 1 << 30
)

// tableVersion is the encoding Encode writes and DecodeTable reads.
const tableVersion = 1

// tableMagic starts every encoded table; a big-endian uint16 version follows.
const tableMagic = "LZPFTABL"

// ErrCorrupt is wrapped by every error of DecodeTable and DecodeLayer.
var ErrCorrupt = errors.New("imageindex: corrupt index")

// entry flag bits in the encoding: which optional fields follow.
// The low bits are format's Meta bits, the optional fields encoded as format's index does.
const (
	flagNsec     = format.MetaNsec
	flagLinkname = format.MetaLinkname
	flagDevice   = format.MetaDevice
	flagXattrs   = format.MetaXattrs
	flagSparse   = 1 << 4
	flagsKnown   = 1<<5 - 1
)

const typeReg = '0'

// minEntryLen is the shortest encoding of an entry: flags, a one-byte name with its
// length, type, mode, uid, gid and mtime.
const minEntryLen = 8

// minXattrLen is the shortest encoding of an xattr: a one-byte name with its length, an
// empty value's length.
const minXattrLen = 3

// Encode returns the table's binary form:
//
//	magic "LZPFTABL", version uint16 (big endian), tar size, entry count, entries
//	entry: flags byte, name, type byte, mode, uid, gid, mtime seconds (zigzag),
//	       [nsec] [link name] [devmajor devminor] [xattr count, (name value)...]
//	       regular file: size, sha256, tar offset, tar length
//
// Integers are uvarints, strings a uvarint length and the bytes.
func (t *Table) Encode() []byte {
	b := append([]byte(tableMagic), 0, tableVersion)
	b = binary.AppendUvarint(b, uint64(t.TarSize))
	b = binary.AppendUvarint(b, uint64(len(t.Entries)))
	for i := range t.Entries {
		b = appendEntry(b, &t.Entries[i])
	}
	return b
}

func appendEntry(b []byte, e *format.Entry) []byte {
	flags := byte(e.MetaFlags())
	if e.Sparse {
		flags |= flagSparse
	}
	b = append(b, flags)
	b = appendString(b, e.Name)
	b = append(b, e.Type)
	b = binary.AppendUvarint(b, uint64(e.Mode))
	b = binary.AppendUvarint(b, uint64(e.UID))
	b = binary.AppendUvarint(b, uint64(e.GID))
	b = binary.AppendVarint(b, e.ModSec)
	b = e.AppendMeta(b, uint64(flags))
	if e.Type == typeReg {
		b = binary.AppendUvarint(b, uint64(e.Size))
		b = append(b, e.Digest[:]...)
		b = binary.AppendUvarint(b, uint64(e.TarOffset))
		b = binary.AppendUvarint(b, uint64(e.TarLen))
	}
	return b
}

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// DecodeTable parses an encoded table. It treats data as hostile: every length is checked
// against the bytes that remain and against format's limits (names, xattrs) before
// anything is allocated, varints must be canonical, names clean (format.CleanName), and
// each regular file's range within the tar stream, after the previous one's; it allocates
// at most MemFactor*len(data)+MemSlack bytes (and MaxMemory), whatever data claims.
func DecodeTable(data []byte) (*Table, error) {
	body, err := header(data, "table", tableMagic, tableVersion, MaxTableSize)
	if err != nil {
		return nil, err
	}
	d := &decoder{
		b:      body,
		budget: min(MemFactor*int64(len(data))+MemSlack, MaxMemory),
	}
	// One string holds every name, link name and xattr: entries slice it.
	d.charge(int64(len(d.b)))
	d.s = string(d.b)
	t := &Table{TarSize: d.int()}
	n := d.int()
	if d.err == nil && n > int64(len(d.b))/minEntryLen {
		d.fail("%d entries in %d bytes", n, len(d.b))
	}
	d.charge(n * int64(unsafe.Sizeof(format.Entry{})))
	if d.err != nil {
		return nil, d.err
	}
	t.Entries = make([]format.Entry, n)
	var end int64 // of the previous regular file's range
	for i := range t.Entries {
		e := &t.Entries[i]
		d.entry(e)
		if d.err == nil && e.Type == typeReg {
			if e.TarOffset < end || e.TarLen > t.TarSize-e.TarOffset {
				d.fail("entry %d (%q): tar range %d+%d outside %d..%d", i, e.Name, e.TarOffset, e.TarLen, end, t.TarSize)
			}
			end = e.TarOffset + e.TarLen
		}
		if d.err != nil {
			return nil, fmt.Errorf("%w (entry %d)", d.err, i)
		}
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the last entry", ErrCorrupt, len(d.b))
	}
	return t, nil
}

// header checks the start of one of the package's encodings, what (a table, a layer): its
// size at most maxSize, its magic, and its version (a big-endian uint16 after the magic).
// It returns the bytes after them.
func header(data []byte, what, magic string, version uint16, maxSize int) ([]byte, error) {
	if len(data) > maxSize {
		return nil, fmt.Errorf("%w: %s of %d bytes, over the limit of %d", ErrCorrupt, what, len(data), maxSize)
	}
	if len(data) < len(magic)+2 || string(data[:len(magic)]) != magic {
		return nil, fmt.Errorf("%w: no %s magic", ErrCorrupt, what)
	}
	if v := binary.BigEndian.Uint16(data[len(magic):]); v != version {
		return nil, fmt.Errorf("%w: %s version %d, want %d", ErrCorrupt, what, v, version)
	}
	return data[len(magic)+2:], nil
}

// decoder reads a table's encoding: b is what remains, s the same bytes as one string
// (names are sliced from it), budget what it may still allocate.
type decoder struct {
	b      []byte
	s      string
	budget int64
	err    error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
	}
}

// charge draws n bytes from the budget, failing when it runs out.
func (d *decoder) charge(n int64) {
	if d.err == nil && (n < 0 || n > d.budget) {
		d.fail("needs %d more bytes than its size allows", n-d.budget)
	}
	d.budget -= n
}

// int reads a canonical uvarint of at most 2^62.
func (d *decoder) int() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 || v > 1<<62 || n != len(binary.AppendUvarint(nil, v)) {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return int64(v)
}

// byte reads one byte.
func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) == 0 {
		d.fail("truncated")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

// str reads a string of at most max bytes, sliced from d.s.
func (d *decoder) str(what string, max int) string {
	n := d.int()
	if d.err != nil {
		return ""
	}
	if n > int64(max) || n > int64(len(d.b)) {
		d.fail("%s of %d bytes (%d left, limit %d)", what, n, len(d.b), max)
		return ""
	}
	off := len(d.s) - len(d.b)
	d.b = d.b[n:]
	return d.s[off : off+int(n)]
}

// entry reads one entry into e.
func (d *decoder) entry(e *format.Entry) {
	flags := d.byte()
	if flags&^flagsKnown != 0 {
		d.fail("unknown flags %#x", flags)
	}
	e.Name = d.str("name", format.MaxNameLen)
	if d.err == nil && (e.Name == "" || format.CleanName(e.Name) != e.Name) {
		d.fail("name %q is not clean", e.Name)
	}
	e.Type = d.byte()
	e.Mode = d.int()
	if e.Mode > 0o7777 {
		d.fail("mode %#o", e.Mode)
	}
	e.UID, e.GID = int(d.int()), int(d.int())
	e.ModSec = d.varint()
	if flags&flagNsec != 0 {
		if v := d.int(); v == 0 || v >= 1e9 {
			d.fail("nanoseconds %d", v)
		} else {
			e.ModNsec = int32(v)
		}
	}
	if flags&flagLinkname != 0 {
		if e.Linkname = d.str("link name", format.MaxNameLen); d.err == nil && e.Linkname == "" {
			d.fail("empty link name")
		}
	}
	if flags&flagDevice != 0 {
		if e.Devmajor, e.Devminor = d.int(), d.int(); d.err == nil && e.Devmajor == 0 && e.Devminor == 0 {
			d.fail("device 0,0 flagged")
		}
	}
	if flags&flagXattrs != 0 {
		d.xattrs(e)
	}
	e.Sparse = flags&flagSparse != 0
	if e.Type != typeReg {
		if e.Sparse {
			d.fail("sparse entry of type %q", e.Type)
		}
		return
	}
	e.Size = d.int()
	if d.err == nil && len(d.b) < len(e.Digest) {
		d.fail("truncated digest")
	}
	if d.err != nil {
		return
	}
	d.b = d.b[copy(e.Digest[:], d.b):]
	e.TarOffset, e.TarLen = d.int(), d.int()
	if d.err == nil && !e.Sparse && e.TarLen != e.Size {
		d.fail("content of %d bytes for a size of %d", e.TarLen, e.Size)
	}
}

// varint reads a canonical zigzag varint.
func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 || n != len(binary.AppendVarint(nil, v)) {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// xattrs reads an entry's xattrs.
func (d *decoder) xattrs(e *format.Entry) {
	n := d.int()
	if d.err != nil {
		return
	}
	if n == 0 || n > format.MaxXattrs || n > int64(len(d.b))/minXattrLen {
		d.fail("%d xattrs in %d bytes", n, len(d.b))
		return
	}
	d.charge(n * int64(unsafe.Sizeof(format.Xattr{})))
	if d.err != nil {
		return
	}
	e.Xattrs = make([]format.Xattr, n)
	for i := range e.Xattrs {
		x := &e.Xattrs[i]
		if x.Name = d.str("xattr name", format.MaxNameLen); d.err == nil && x.Name == "" {
			d.fail("empty xattr name")
		}
		x.Value = d.str("xattr value", format.MaxXattrValueLen)
	}
}
