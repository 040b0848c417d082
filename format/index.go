package format

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
	"sync"
	"unsafe"

	"github.com/klauspost/compress/zstd"
)

// Limits on what an index may declare. A decoder checks every count and length against
// these and against the bytes that remain before it allocates anything.
const (
	// MaxIndexSize bounds the compressed index payload.
	MaxIndexSize = 256 << 20
	// MaxIndexBodySize bounds the decompressed index body.
	MaxIndexBodySize = 1 << 30
	// MaxNameLen bounds a path or link target, in bytes.
	MaxNameLen = 64 << 10
	// MaxXattrs bounds the extended attributes of one entry.
	MaxXattrs = 1024
	// MaxXattrValueLen bounds one extended attribute value.
	MaxXattrValueLen = 64 << 10
	// MaxChunkSize bounds the uncompressed size of one frame. The writer cuts content
	// chunks at 512 KiB and header runs at 1 MiB; 64 MiB leaves room for other writers.
	MaxChunkSize = 64 << 20
)

// indexMagic starts every index payload; the two bytes after it are the version.
const indexMagic = "LZPINDEX"

// index payload layout (all integers little endian):
//
//	magic    [8]byte  "LZPINDEX"
//	version  uint16   1
//	flags    uint16   0; a reader refuses bits it does not know
//	reserved uint32   0
//	bodyLen  uint64   length of the decompressed body, <= MaxIndexBodySize
//	body     one zstd frame
const indexHeaderLen = 24

// Digest is a sha256 digest.
type Digest [32]byte

// String returns the digest as "sha256:<hex>".
func (d Digest) String() string { return "sha256:" + hex.EncodeToString(d[:]) }

// ParseDigest parses "sha256:<64 hex digits>".
func ParseDigest(s string) (Digest, error) {
	var d Digest
	h, ok := strings.CutPrefix(s, "sha256:")
	if !ok || len(h) != 64 {
		return d, fmt.Errorf("digest %q: want sha256:<64 hex digits>", s)
	}
	if _, err := hex.Decode(d[:], []byte(h)); err != nil {
		return d, fmt.Errorf("digest %q: %w", s, err)
	}
	return d, nil
}

// Frame is one zstd frame of the layer blob, in blob order.
type Frame struct {
	Offset     int64 // in the blob
	Size       int64 // compressed, in the blob
	TarOffset  int64 // of its first byte in the uncompressed tar stream
	TarSize    int64 // uncompressed
	ChunkIndex int   // index into Index.Digests; -1 for a frame of tar headers
}

// Entry is one tar entry.
type Entry struct {
	// Name is the entry's path, cleaned and confined to the layer root: never absolute,
	// never with a ".." element; "." is the root. The tar stream keeps the original bytes.
	Name     string
	Type     byte  // tar typeflag: '0' file, '1' hard link, '2' symlink, '3' char, '4' block, '5' dir, '6' fifo
	Mode     int64 // permission and setuid/setgid/sticky bits, as in the tar header
	UID, GID int
	ModSec   int64 // mtime, seconds since the epoch
	ModNsec  int32
	Size     int64  // content size; 0 but for regular files
	Linkname string // symlink target as written; hard link target cleaned like Name
	Devmajor int64
	Devminor int64
	Xattrs   []Xattr

	// Content of a regular file: Frames[FirstFrame:FirstFrame+NumFrames] hold its
	// chunks, in order. Digest is the sha256 of the whole content.
	FirstFrame int
	NumFrames  int
	Digest     Digest

	// A sparse entry's content is not laid out in chunks: its whole tar record, from
	// the header at TarOffset for TarLen bytes, must be read and decoded.
	Sparse    bool
	TarOffset int64
	TarLen    int64
}

// Xattr is one extended attribute (from a PAX SCHILY.xattr record).
type Xattr struct {
	Name  string
	Value string
}

// IsDir, IsRegular and the others tell the entry's type.
func (e *Entry) IsDir() bool      { return e.Type == typeDir }
func (e *Entry) IsRegular() bool  { return e.Type == typeReg }
func (e *Entry) IsHardlink() bool { return e.Type == typeLink }
func (e *Entry) IsSymlink() bool  { return e.Type == typeSymlink }

const (
	typeReg     = '0'
	typeLink    = '1'
	typeSymlink = '2'
	typeChar    = '3'
	typeBlock   = '4'
	typeDir     = '5'
	typeFifo    = '6'
)

// Index describes a layer: its frames, entries and chunk digests.
type Index struct {
	Frames  []Frame
	Entries []Entry
	// Digests holds the sha256 of each content chunk, indexed by Frame.ChunkIndex.
	Digests []Digest

	once   sync.Once
	byName map[string]int
}

// Chunk is one content chunk of a file, as a reader fetches it.
type Chunk struct {
	FileOffset int64 // of its first byte in the file
	Size       int64 // uncompressed
	Offset     int64 // of its frame in the blob
	CompSize   int64 // of its frame in the blob
	Digest     Digest
}

// Lookup finds an entry by path. The path is cleaned and confined to the root first, so
// "/a/../b", "b" and "./b" name the same entry. When a path occurs more than once in the
// layer (tar allows it), the last one wins, as when the layer is unpacked.
func (ix *Index) Lookup(p string) (*Entry, bool) {
	ix.once.Do(func() {
		ix.byName = make(map[string]int, len(ix.Entries))
		for i := range ix.Entries {
			ix.byName[ix.Entries[i].Name] = i
		}
	})
	i, ok := ix.byName[CleanName(p)]
	if !ok {
		return nil, false
	}
	return &ix.Entries[i], true
}

// Content returns the entry holding the content of e: e itself, or the target of a hard
// link (followed through chains of hard links, at most len(Entries) steps).
func (ix *Index) Content(e *Entry) (*Entry, error) {
	for range len(ix.Entries) + 1 {
		if e.Type != typeLink {
			return e, nil
		}
		t, ok := ix.Lookup(e.Linkname)
		if !ok {
			return nil, fmt.Errorf("hard link %q: target %q not in layer", e.Name, e.Linkname)
		}
		if t == e {
			return nil, fmt.Errorf("hard link %q: points at itself", e.Name)
		}
		e = t
	}
	return nil, fmt.Errorf("hard link %q: loop", e.Name)
}

// Chunks returns the content chunks of a regular file entry, in file order.
func (ix *Index) Chunks(e *Entry) []Chunk {
	if e.NumFrames == 0 {
		return nil
	}
	out := make([]Chunk, e.NumFrames)
	var off int64
	for i := range out {
		f := &ix.Frames[e.FirstFrame+i]
		out[i] = Chunk{FileOffset: off, Size: f.TarSize, Offset: f.Offset, CompSize: f.Size, Digest: ix.Digests[f.ChunkIndex]}
		off += f.TarSize
	}
	return out
}

// CleanName confines a tar path to the layer root: the result is never absolute and never
// has a ".." element ("../../etc/x" is "etc/x", as containerd unpacks it). The root is ".".
func CleanName(name string) string {
	c := path.Clean("/" + name)
	if c == "/" {
		return "."
	}
	return c[1:]
}

// Encode returns the index payload: header and zstd-compressed body.
func (ix *Index) Encode() ([]byte, error) {
	body, err := ix.encodeBody()
	if err != nil {
		return nil, err
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBetterCompression), zstd.WithEncoderCRC(false), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	defer enc.Close()
	out := make([]byte, indexHeaderLen, indexHeaderLen+len(body)/2)
	copy(out, indexMagic)
	binary.LittleEndian.PutUint16(out[8:], Version)
	binary.LittleEndian.PutUint64(out[16:], uint64(len(body)))
	out = enc.EncodeAll(body, out)
	if len(out) > MaxIndexSize {
		return nil, fmt.Errorf("index of %d entries is %d bytes, over the limit of %d", len(ix.Entries), len(out), MaxIndexSize)
	}
	return out, nil
}

// entry flag bits in the body
const (
	flagNsec     = 1 << 0
	flagLinkname = 1 << 1
	flagDevice   = 1 << 2
	flagXattrs   = 1 << 3
	flagContent  = 1 << 4 // has chunks: first frame (delta), frame count
	flagMulti    = 1 << 5 // more than one chunk: the file digest follows (else it is the chunk's)
	flagSparse   = 1 << 6 // tar offset and length of its record, and file digest
	flagNegMtime = 1 << 7
	knownFlags   = 1<<8 - 1
)

// body layout (uvarint unless noted; see docs/format.md):
//
//	frameCount, entryCount, chunkCount
//	frameCount x { usize<<1 | isChunk, csize }
//	entryCount x entry
//	chunkCount x [32]byte chunk digests, in frame order
//
// entry: shared-prefix length with the previous name, suffix length, suffix bytes, type
// byte, flags, mode, uid, gid, |mtime seconds|, then per flag: nsec; linkname length and
// bytes; devmajor, devminor; xattr count and (name len, name, value len, value)...;
// size; first frame minus the previous content entry's end, frame count; file digest;
// tar offset and length.
func (ix *Index) encodeBody() ([]byte, error) {
	var b []byte
	b = binary.AppendUvarint(b, uint64(len(ix.Frames)))
	b = binary.AppendUvarint(b, uint64(len(ix.Entries)))
	b = binary.AppendUvarint(b, uint64(len(ix.Digests)))
	next := 0
	for i, f := range ix.Frames {
		isChunk := uint64(0)
		if f.ChunkIndex >= 0 {
			if f.ChunkIndex != next {
				return nil, fmt.Errorf("frame %d: chunk index %d out of order", i, f.ChunkIndex)
			}
			next++
			isChunk = 1
		}
		b = binary.AppendUvarint(b, uint64(f.TarSize)<<1|isChunk)
		b = binary.AppendUvarint(b, uint64(f.Size))
	}
	if next != len(ix.Digests) {
		return nil, fmt.Errorf("%d chunk frames but %d digests", next, len(ix.Digests))
	}
	prev := ""
	frameEnd := 0
	for i := range ix.Entries {
		e := &ix.Entries[i]
		shared := commonPrefix(prev, e.Name)
		b = binary.AppendUvarint(b, uint64(shared))
		b = binary.AppendUvarint(b, uint64(len(e.Name)-shared))
		b = append(b, e.Name[shared:]...)
		prev = e.Name
		b = append(b, e.Type)
		var flags uint64
		if e.ModNsec != 0 {
			flags |= flagNsec
		}
		if e.Linkname != "" {
			flags |= flagLinkname
		}
		if e.Devmajor != 0 || e.Devminor != 0 {
			flags |= flagDevice
		}
		if len(e.Xattrs) > 0 {
			flags |= flagXattrs
		}
		if e.NumFrames > 0 {
			flags |= flagContent
			if e.NumFrames > 1 {
				flags |= flagMulti
			}
		}
		if e.Sparse {
			flags |= flagSparse
		}
		sec := e.ModSec
		if sec < 0 {
			flags |= flagNegMtime
			sec = -sec
		}
		b = binary.AppendUvarint(b, flags)
		b = binary.AppendUvarint(b, uint64(e.Mode))
		b = binary.AppendUvarint(b, uint64(e.UID))
		b = binary.AppendUvarint(b, uint64(e.GID))
		b = binary.AppendUvarint(b, uint64(sec))
		if flags&flagNsec != 0 {
			b = binary.AppendUvarint(b, uint64(e.ModNsec))
		}
		if flags&flagLinkname != 0 {
			b = binary.AppendUvarint(b, uint64(len(e.Linkname)))
			b = append(b, e.Linkname...)
		}
		if flags&flagDevice != 0 {
			b = binary.AppendUvarint(b, uint64(e.Devmajor))
			b = binary.AppendUvarint(b, uint64(e.Devminor))
		}
		if flags&flagXattrs != 0 {
			b = binary.AppendUvarint(b, uint64(len(e.Xattrs)))
			for _, x := range e.Xattrs {
				b = binary.AppendUvarint(b, uint64(len(x.Name)))
				b = append(b, x.Name...)
				b = binary.AppendUvarint(b, uint64(len(x.Value)))
				b = append(b, x.Value...)
			}
		}
		b = binary.AppendUvarint(b, uint64(e.Size))
		if flags&flagContent != 0 {
			if e.FirstFrame < frameEnd {
				return nil, fmt.Errorf("entry %q: frames out of order", e.Name)
			}
			b = binary.AppendUvarint(b, uint64(e.FirstFrame-frameEnd))
			b = binary.AppendUvarint(b, uint64(e.NumFrames))
			frameEnd = e.FirstFrame + e.NumFrames
		}
		if flags&(flagMulti|flagSparse) != 0 {
			b = append(b, e.Digest[:]...)
		}
		if flags&flagSparse != 0 {
			b = binary.AppendUvarint(b, uint64(e.TarOffset))
			b = binary.AppendUvarint(b, uint64(e.TarLen))
		}
	}
	for _, d := range ix.Digests {
		b = append(b, d[:]...)
	}
	if len(b) > MaxIndexBodySize {
		return nil, fmt.Errorf("index body of %d entries is %d bytes, over the limit of %d", len(ix.Entries), len(b), MaxIndexBodySize)
	}
	return b, nil
}

func commonPrefix(a, b string) int {
	n := min(len(a), len(b))
	for i := range n {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

// ErrNotIndex is returned when bytes do not start with the index magic.
var ErrNotIndex = errors.New("not a lazypull index")

var decoderPool = sync.Pool{New: func() any {
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(MaxIndexBodySize), zstd.WithDecoderMaxWindow(64<<20))
	if err != nil {
		panic(err) // only for invalid options
	}
	return d
}}

// DecodeIndex parses an index payload. It checks every count and offset, so a hostile
// payload yields an error, never a panic or an allocation beyond what the bytes justify.
func DecodeIndex(p []byte) (*Index, error) {
	if len(p) < indexHeaderLen || string(p[:8]) != indexMagic {
		return nil, ErrNotIndex
	}
	if v := binary.LittleEndian.Uint16(p[8:]); v != Version {
		return nil, fmt.Errorf("index version %d: this lazypull reads version %d", v, Version)
	}
	if f := binary.LittleEndian.Uint16(p[10:]); f != 0 {
		return nil, fmt.Errorf("index flags %#x: unknown", f)
	}
	bodyLen := binary.LittleEndian.Uint64(p[16:])
	if bodyLen > MaxIndexBodySize {
		return nil, fmt.Errorf("index body of %d bytes: over the limit of %d", bodyLen, MaxIndexBodySize)
	}
	// A zstd frame expands at most ~ (1<<17)/3 fold per byte in practice; refuse a body
	// length that no payload of this size could produce before allocating for it.
	if bodyLen > uint64(len(p))*1024 {
		return nil, fmt.Errorf("index body of %d bytes from %d compressed: implausible", bodyLen, len(p))
	}
	dec := decoderPool.Get().(*zstd.Decoder)
	defer decoderPool.Put(dec)
	body, err := dec.DecodeAll(p[indexHeaderLen:], make([]byte, 0, bodyLen))
	if err != nil {
		return nil, fmt.Errorf("decompress index: %w", err)
	}
	if uint64(len(body)) != bodyLen {
		return nil, fmt.Errorf("index body is %d bytes, header says %d", len(body), bodyLen)
	}
	return decodeBody(body)
}

type bodyReader struct {
	b   []byte
	err error
}

func (r *bodyReader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf(format, args...)
	}
}

func (r *bodyReader) uvarint(what string) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("index: bad varint for %s", what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

// count reads a count of items each taking at least minBytes of the remaining body.
func (r *bodyReader) count(what string, minBytes int) int {
	v := r.uvarint(what)
	if r.err == nil && v > uint64(len(r.b)/minBytes) {
		r.fail("index: %s %d: more than the %d bytes left can hold", what, v, len(r.b))
		return 0
	}
	return int(v)
}

// int63 reads a value that must fit in an int64 and be at most limit.
func (r *bodyReader) int63(what string, limit uint64) int64 {
	v := r.uvarint(what)
	if r.err == nil && v > limit {
		r.fail("index: %s %d: over the limit of %d", what, v, limit)
		return 0
	}
	return int64(v)
}

func (r *bodyReader) bytes(what string, max int) []byte {
	n := r.uvarint(what)
	if r.err != nil {
		return nil
	}
	if n > uint64(max) || n > uint64(len(r.b)) {
		r.fail("index: %s of %d bytes: over the limit or past the end", what, n)
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *bodyReader) fixed(what string, n int) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.fail("index: %s: truncated", what)
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func decodeBody(body []byte) (*Index, error) {
	r := &bodyReader{b: body}
	const maxOffset = 1 << 62
	nFrames := r.count("frame count", 2)
	nEntries := r.count("entry count", 8)
	nChunks := r.count("chunk count", 32)
	if r.err != nil {
		return nil, r.err
	}
	ix := &Index{Frames: make([]Frame, nFrames), Entries: make([]Entry, nEntries), Digests: make([]Digest, nChunks)}
	var off, tarOff int64
	chunk := 0
	for i := range ix.Frames {
		v := r.uvarint("frame size")
		cs := r.int63("frame compressed size", MaxChunkSize+MaxChunkSize/8+1024)
		us := int64(v >> 1)
		if us > MaxChunkSize || us == 0 {
			r.fail("index: frame %d: size %d out of range", i, us)
		}
		if r.err != nil {
			return nil, r.err
		}
		f := Frame{Offset: off, Size: cs, TarOffset: tarOff, TarSize: us, ChunkIndex: -1}
		if v&1 != 0 {
			if chunk >= nChunks {
				return nil, fmt.Errorf("index: frame %d: more chunk frames than the %d digests", i, nChunks)
			}
			f.ChunkIndex = chunk
			chunk++
		}
		ix.Frames[i] = f
		off += cs
		tarOff += us
	}
	if chunk != nChunks {
		return nil, fmt.Errorf("index: %d chunk frames but %d digests", chunk, nChunks)
	}
	prev := ""
	frameEnd := 0
	var names nameArena
	for i := range ix.Entries {
		e := &ix.Entries[i]
		shared := r.uvarint("name prefix")
		suffix := r.bytes("name", MaxNameLen)
		if r.err != nil {
			return nil, r.err
		}
		if shared > uint64(len(prev)) || shared+uint64(len(suffix)) > MaxNameLen {
			return nil, fmt.Errorf("index: entry %d: name prefix %d longer than the previous name", i, shared)
		}
		e.Name = names.concat(prev[:shared], suffix)
		prev = e.Name
		if e.Name == "" || CleanName(e.Name) != e.Name {
			return nil, fmt.Errorf("index: entry %d: name %q is not a clean relative path", i, e.Name)
		}
		t := r.fixed("type", 1)
		flags := r.uvarint("flags")
		e.Mode = r.int63("mode", 1<<32)
		e.UID = int(r.int63("uid", 1<<32))
		e.GID = int(r.int63("gid", 1<<32))
		e.ModSec = r.int63("mtime", maxOffset)
		if r.err != nil {
			return nil, r.err
		}
		e.Type = t[0]
		if flags&^knownFlags != 0 {
			return nil, fmt.Errorf("index: entry %q: unknown flags %#x", e.Name, flags)
		}
		if flags&flagNegMtime != 0 {
			e.ModSec = -e.ModSec
		}
		if flags&flagNsec != 0 {
			e.ModNsec = int32(r.int63("mtime nsec", 999_999_999))
		}
		if flags&flagLinkname != 0 {
			e.Linkname = string(r.bytes("link name", MaxNameLen))
		}
		if flags&flagDevice != 0 {
			e.Devmajor = r.int63("devmajor", 1<<32)
			e.Devminor = r.int63("devminor", 1<<32)
		}
		if flags&flagXattrs != 0 {
			n := r.count("xattr count", 2)
			if n > MaxXattrs {
				r.fail("index: entry %q: %d xattrs, over the limit of %d", e.Name, n, MaxXattrs)
			}
			if r.err == nil {
				e.Xattrs = make([]Xattr, n)
			}
			for j := range e.Xattrs {
				e.Xattrs[j].Name = string(r.bytes("xattr name", 255))
				e.Xattrs[j].Value = string(r.bytes("xattr value", MaxXattrValueLen))
			}
		}
		e.Size = r.int63("size", maxOffset)
		if flags&flagContent != 0 {
			gap := r.uvarint("first frame")
			n := r.uvarint("frame count")
			if r.err != nil {
				return nil, r.err
			}
			if gap > uint64(nFrames-frameEnd) || n == 0 || n > uint64(nFrames-frameEnd)-gap {
				return nil, fmt.Errorf("index: entry %q: frames past the end", e.Name)
			}
			e.FirstFrame = frameEnd + int(gap)
			e.NumFrames = int(n)
			frameEnd = e.FirstFrame + e.NumFrames
			var total int64
			for _, f := range ix.Frames[e.FirstFrame:frameEnd] {
				if f.ChunkIndex < 0 {
					return nil, fmt.Errorf("index: entry %q: content in a header frame", e.Name)
				}
				total += f.TarSize
			}
			if total != e.Size {
				return nil, fmt.Errorf("index: entry %q: chunks hold %d bytes, size is %d", e.Name, total, e.Size)
			}
			if e.Type != typeReg {
				return nil, fmt.Errorf("index: entry %q of type %q has content", e.Name, e.Type)
			}
		}
		if flags&flagMulti != 0 && flags&flagContent == 0 {
			return nil, fmt.Errorf("index: entry %q: multi-chunk flag without content", e.Name)
		}
		if flags&(flagMulti|flagSparse) != 0 {
			copy(e.Digest[:], r.fixed("file digest", 32))
		}
		if flags&flagSparse != 0 {
			e.Sparse = true
			e.TarOffset = r.int63("tar offset", maxOffset)
			e.TarLen = r.int63("tar length", maxOffset)
			if r.err == nil && (e.TarOffset > tarOff || e.TarLen > tarOff-e.TarOffset) {
				return nil, fmt.Errorf("index: entry %q: sparse record past the end of the tar stream", e.Name)
			}
			if flags&flagContent != 0 {
				return nil, fmt.Errorf("index: entry %q: sparse and chunked", e.Name)
			}
		}
		if r.err != nil {
			return nil, r.err
		}
	}
	for i := range ix.Digests {
		copy(ix.Digests[i][:], r.fixed("chunk digest", 32))
	}
	if r.err != nil {
		return nil, r.err
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("index: %d bytes after the last digest", len(r.b))
	}
	// Single-chunk files carry their chunk's digest.
	for i := range ix.Entries {
		e := &ix.Entries[i]
		switch {
		case e.NumFrames == 1:
			e.Digest = ix.Digests[ix.Frames[e.FirstFrame].ChunkIndex]
		case e.Type == typeReg && e.NumFrames == 0 && !e.Sparse:
			if e.Size != 0 {
				return nil, fmt.Errorf("index: entry %q: %d bytes but no chunks", e.Name, e.Size)
			}
			e.Digest = emptyDigest
		}
	}
	return ix, nil
}

// nameArena makes the entry names of an index out of few large allocations instead of
// one per entry; decoding a 100k-entry index is dominated by allocation otherwise.
type nameArena struct{ buf []byte }

func (a *nameArena) concat(prefix string, suffix []byte) string {
	n := len(prefix) + len(suffix)
	if n == 0 {
		return ""
	}
	if cap(a.buf)-len(a.buf) < n {
		// Strings made so far keep the old block alive; it is never written again.
		a.buf = make([]byte, 0, max(n, 256<<10))
	}
	start := len(a.buf)
	a.buf = append(a.buf, prefix...)
	a.buf = append(a.buf, suffix...)
	return unsafe.String(&a.buf[start], n)
}

// Names returns the sorted paths of all entries; for tests and tools.
func (ix *Index) Names() []string {
	out := make([]string, len(ix.Entries))
	for i := range ix.Entries {
		out[i] = ix.Entries[i].Name
	}
	sort.Strings(out)
	return out
}

// emptyDigest is the sha256 of no bytes: the digest of every empty file.
var emptyDigest = sum256(nil)

// sum256 is sha256.Sum256 as a Digest.
func sum256(b []byte) Digest { return sha256.Sum256(b) }
