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

// Limits on what an index may declare. An index comes from the image producer through the
// registry: it is untrusted input, and what decoding it may allocate is bounded twice, by a
// small factor of its size and by hard caps (docs/format.md, "Limits a reader enforces").
// A decoder checks every count and length against these, against the bytes that remain and
// against its decode budget before it allocates anything.
const (
	// MaxIndexSize bounds the compressed index payload, and so what reading one may hold
	// before it is verified (its size is the manifest's word, its bytes the registry's).
	// A real index decodes into 12-15 times its payload, so a larger one could not decode
	// within MaxIndexMemory anyway; 64 MiB is about 2 million files (an index of 100,000
	// files is a few MiB, the python test image's about 1 MiB).
	MaxIndexSize = 64 << 20
	// MaxIndexBodySize bounds the decompressed index body.
	MaxIndexBodySize = 1 << 30
	// MaxIndexBodyRatio bounds the declared body length by the compressed payload's:
	// bodyLen <= MaxIndexBodyRatio*len(payload) + IndexBodySlack. Real indexes compress
	// 1.5-6 fold (chunk digests do not compress); zstd could expand far more.
	MaxIndexBodyRatio = 32
	// IndexBodySlack lets a small index compress better than the ratio.
	IndexBodySlack = 64 << 10
	// IndexMemFactor and IndexMemSlack make the decode budget of a payload of n bytes:
	// IndexMemFactor*n + IndexMemSlack, at most MaxIndexMemory. Everything decoding
	// allocates draws from it: the body, the frame, entry and digest arrays, names, link
	// names and xattrs. A real index takes 12-15 times its payload decoded, one of only
	// empty files or directories up to ~60 times (names compress well, Entry is 200 bytes).
	IndexMemFactor = 48
	IndexMemSlack  = 8 << 20
	// MaxIndexMemory bounds the decode budget of any index (about 3 million entries).
	MaxIndexMemory = 1 << 30
	// MaxNameLen bounds a path or link target, in bytes.
	MaxNameLen = 64 << 10
	// MaxXattrs bounds the extended attributes of one entry.
	MaxXattrs = 1024
	// MaxXattrValueLen bounds one extended attribute value.
	MaxXattrValueLen = 64 << 10
	// MaxChunkSize bounds the uncompressed size of one frame. The writer cuts content
	// chunks at 512 KiB and header runs at 1 MiB; 64 MiB leaves room for other writers.
	MaxChunkSize = 64 << 20
	// MaxSparseSize bounds the size of a sparse file a reader serves. A sparse file is
	// served by decoding its tar record again for each read (ReadSparseAt): memory stays
	// at one frame, but the time of a read grows with the file, holes included.
	MaxSparseSize = 1 << 30
)

// IndexBudget returns the decode budget of an index payload of n bytes: what decoding it
// may allocate, body included.
func IndexBudget(n int) int64 {
	return min(IndexMemFactor*int64(n)+IndexMemSlack, MaxIndexMemory)
}

// indexMagic starts every index payload; the two bytes after it are the version.
const indexMagic = "LZPINDEX"

// Index payload versions. Version 1 gives header frames no digest; version 2 adds, after
// the chunk digests, a digest per header run (Index.RunDigests). A reader reads both;
// Encode writes version 2 when the index has run digests (the writer always gives them).
const (
	IndexVersion1 = 1
	IndexVersion2 = 2
)

// index payload layout (all integers little endian):
//
//	magic    [8]byte  "LZPINDEX"
//	version  uint16   1 or 2
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
	// RunDigests holds, for each header run (a maximal sequence of consecutive header
	// frames, in blob order: HeaderRuns' runs when it succeeds), the sha256 of its
	// compressed frames as the blob holds them, from its first frame's offset to its last
	// one's end. Nil for a version 1 index, which gives header frames no digest.
	RunDigests []Digest

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
	version := uint16(IndexVersion1)
	if ix.RunDigests != nil {
		version = IndexVersion2
	}
	binary.LittleEndian.PutUint16(out[8:], version)
	binary.LittleEndian.PutUint64(out[16:], uint64(len(body)))
	out = enc.EncodeAll(body, out)
	if len(out) > MaxIndexSize {
		return nil, fmt.Errorf("index of %d entries is %d bytes, over the limit of %d", len(ix.Entries), len(out), MaxIndexSize)
	}
	// Refuse to write what no reader would decode: a layer whose index compresses better
	// than the ratio, or decodes to more than its budget.
	if len(body) > MaxIndexBodyRatio*len(out)+IndexBodySlack {
		return nil, fmt.Errorf("index of %d entries: %w: a body of %d bytes compressed to %d, over %d times", len(ix.Entries), errOverBudget, len(body), len(out), MaxIndexBodyRatio)
	}
	budget := IndexBudget(len(out))
	r := &bodyReader{budget: budget - int64(len(body)), limit: budget, dry: true}
	if r.budget < 0 || !ix.drawBudget(r) {
		return nil, fmt.Errorf("index of %d entries: %w: %v", len(ix.Entries), errOverBudget, r.err)
	}
	return out, nil
}

// errOverBudget is what Encode returns for an index a reader would refuse to decode.
var errOverBudget = errors.New("over the decode budget of its payload")

// drawBudget draws from r what decoding the index allocates, in the decoder's order, and
// reports whether it fits.
func (ix *Index) drawBudget(r *bodyReader) bool {
	r.alloc("frame list", len(ix.Frames), int(unsafe.Sizeof(Frame{})))
	r.alloc("entry list", len(ix.Entries), int(unsafe.Sizeof(Entry{})))
	r.alloc("chunk digests", len(ix.Digests), int(unsafe.Sizeof(Digest{})))
	if ix.RunDigests != nil {
		r.alloc("run digests", len(ix.RunDigests), int(unsafe.Sizeof(Digest{})))
	}
	var names nameArena
	for i := range ix.Entries {
		e := &ix.Entries[i]
		names.reserve(r, len(e.Name))
		if e.Linkname != "" {
			r.alloc("link name", len(e.Linkname), 1)
		}
		if len(e.Xattrs) > 0 {
			r.alloc("xattrs", len(e.Xattrs), int(unsafe.Sizeof(Xattr{})))
			for _, x := range e.Xattrs {
				r.alloc("xattr name", len(x.Name), 1)
				r.alloc("xattr value", len(x.Value), 1)
			}
		}
		if r.err != nil {
			return false
		}
	}
	return true
}

// Entry metadata bits: which of an entry's optional metadata fields are set (Entry.MetaFlags),
// the low bits of the index's entry flags. Other encodings of an Entry (a layer's file table
// in an image index) carry them too, with Entry.AppendMeta.
const (
	MetaNsec     = 1 << 0 // ModNsec
	MetaLinkname = 1 << 1 // Linkname
	MetaDevice   = 1 << 2 // Devmajor, Devminor
	MetaXattrs   = 1 << 3 // Xattrs
)

// entry flag bits in the body
const (
	flagNsec     = MetaNsec
	flagLinkname = MetaLinkname
	flagDevice   = MetaDevice
	flagXattrs   = MetaXattrs
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
//	version 2: runCount, runCount x [32]byte header run digests, in blob order
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
	b, err := ix.appendFrames(b)
	if err != nil {
		return nil, err
	}
	prev := ""
	frameEnd := 0
	for i := range ix.Entries {
		e := &ix.Entries[i]
		if e.NumFrames > 0 && e.FirstFrame < frameEnd {
			return nil, fmt.Errorf("entry %q: frames out of order", e.Name)
		}
		b = appendEntry(b, e, prev, frameEnd)
		prev = e.Name
		if e.NumFrames > 0 {
			frameEnd = e.FirstFrame + e.NumFrames
		}
	}
	for _, d := range ix.Digests {
		b = append(b, d[:]...)
	}
	if ix.RunDigests != nil {
		if n := ix.headerRunCount(); n != len(ix.RunDigests) {
			return nil, fmt.Errorf("%d header runs but %d run digests", n, len(ix.RunDigests))
		}
		b = binary.AppendUvarint(b, uint64(len(ix.RunDigests)))
		for _, d := range ix.RunDigests {
			b = append(b, d[:]...)
		}
	}
	if len(b) > MaxIndexBodySize {
		return nil, fmt.Errorf("index body of %d entries is %d bytes, over the limit of %d", len(ix.Entries), len(b), MaxIndexBodySize)
	}
	return b, nil
}

// appendFrames appends the frame table: each frame's tar size (with whether it is a chunk)
// and compressed size. Chunk frames must name the chunks in order.
func (ix *Index) appendFrames(b []byte) ([]byte, error) {
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
	return b, nil
}

// MetaFlags returns the Meta bits of the optional metadata fields e has.
func (e *Entry) MetaFlags() uint64 {
	var flags uint64
	if e.ModNsec != 0 {
		flags |= MetaNsec
	}
	if e.Linkname != "" {
		flags |= MetaLinkname
	}
	if e.Devmajor != 0 || e.Devminor != 0 {
		flags |= MetaDevice
	}
	if len(e.Xattrs) > 0 {
		flags |= MetaXattrs
	}
	return flags
}

// AppendMeta appends the optional metadata fields of e that flags names (its Meta bits;
// other bits are ignored) as the index encodes them: [mtime nanoseconds] [link name]
// [devmajor devminor] [xattr count, (name value)...], integers as uvarints and strings as
// a uvarint length and the bytes.
func (e *Entry) AppendMeta(b []byte, flags uint64) []byte {
	if flags&MetaNsec != 0 {
		b = binary.AppendUvarint(b, uint64(e.ModNsec))
	}
	if flags&MetaLinkname != 0 {
		b = appendString(b, e.Linkname)
	}
	if flags&MetaDevice != 0 {
		b = binary.AppendUvarint(b, uint64(e.Devmajor))
		b = binary.AppendUvarint(b, uint64(e.Devminor))
	}
	if flags&MetaXattrs != 0 {
		b = binary.AppendUvarint(b, uint64(len(e.Xattrs)))
		for _, x := range e.Xattrs {
			b = appendString(b, x.Name)
			b = appendString(b, x.Value)
		}
	}
	return b
}

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// entryFlags returns the flags that say which optional fields of e are encoded.
func entryFlags(e *Entry) uint64 {
	flags := e.MetaFlags()
	if e.NumFrames > 0 {
		flags |= flagContent
		if e.NumFrames > 1 {
			flags |= flagMulti
		}
	}
	if e.Sparse {
		flags |= flagSparse
	}
	if e.ModSec < 0 {
		flags |= flagNegMtime
	}
	return flags
}

// appendEntry appends e, its name relative to prev and its first frame relative to
// frameEnd, the end of the previous content entry's frames (the caller checks the order).
func appendEntry(b []byte, e *Entry, prev string, frameEnd int) []byte {
	shared := commonPrefix(prev, e.Name)
	b = binary.AppendUvarint(b, uint64(shared))
	b = binary.AppendUvarint(b, uint64(len(e.Name)-shared))
	b = append(b, e.Name[shared:]...)
	b = append(b, e.Type)
	flags := entryFlags(e)
	sec := e.ModSec
	if sec < 0 {
		sec = -sec
	}
	b = binary.AppendUvarint(b, flags)
	b = binary.AppendUvarint(b, uint64(e.Mode))
	b = binary.AppendUvarint(b, uint64(e.UID))
	b = binary.AppendUvarint(b, uint64(e.GID))
	b = binary.AppendUvarint(b, uint64(sec))
	b = e.AppendMeta(b, flags)
	b = binary.AppendUvarint(b, uint64(e.Size))
	if flags&flagContent != 0 {
		b = binary.AppendUvarint(b, uint64(e.FirstFrame-frameEnd))
		b = binary.AppendUvarint(b, uint64(e.NumFrames))
	}
	if flags&(flagMulti|flagSparse) != 0 {
		b = append(b, e.Digest[:]...)
	}
	if flags&flagSparse != 0 {
		b = binary.AppendUvarint(b, uint64(e.TarOffset))
		b = binary.AppendUvarint(b, uint64(e.TarLen))
	}
	return b
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

// decoderPool holds index body decoders. DecodeAll is limited to the capacity of its
// destination (WithDecodeAllCapLimit): a frame that decodes to more than the declared body
// length fails instead of growing the buffer.
var decoderPool = sync.Pool{New: func() any {
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(MaxIndexBodySize),
		zstd.WithDecoderMaxWindow(64<<20), zstd.WithDecodeAllCapLimit(true))
	if err != nil {
		panic(err) // only for invalid options
	}
	return d
}}

// DecodeIndex parses an index payload. It checks every count and offset, so a hostile
// payload yields an error, never a panic; what it allocates, body included, stays within
// IndexBudget(len(p)).
func DecodeIndex(p []byte) (*Index, error) {
	if len(p) < indexHeaderLen || string(p[:8]) != indexMagic {
		return nil, ErrNotIndex
	}
	v := binary.LittleEndian.Uint16(p[8:])
	if v != IndexVersion1 && v != IndexVersion2 {
		return nil, fmt.Errorf("index version %d: this lazypull reads versions %d and %d", v, IndexVersion1, IndexVersion2)
	}
	if f := binary.LittleEndian.Uint16(p[10:]); f != 0 {
		return nil, fmt.Errorf("index flags %#x: unknown", f)
	}
	bodyLen := binary.LittleEndian.Uint64(p[16:])
	if bodyLen > MaxIndexBodySize {
		return nil, fmt.Errorf("index body of %d bytes: over the limit of %d", bodyLen, MaxIndexBodySize)
	}
	if bodyLen > MaxIndexBodyRatio*uint64(len(p))+IndexBodySlack {
		return nil, fmt.Errorf("index body of %d bytes from a %d-byte payload: over the limit of %d times the payload", bodyLen, len(p), MaxIndexBodyRatio)
	}
	budget := IndexBudget(len(p))
	if int64(bodyLen) > budget {
		return nil, fmt.Errorf("index body of %d bytes: over the decode budget of %d for a %d-byte payload", bodyLen, budget, len(p))
	}
	dec := decoderPool.Get().(*zstd.Decoder)
	defer decoderPool.Put(dec)
	body, err := dec.DecodeAll(p[indexHeaderLen:], make([]byte, 0, bodyLen))
	if err != nil {
		return nil, fmt.Errorf("decompress index body of %d bytes: %w", bodyLen, err)
	}
	if uint64(len(body)) != bodyLen {
		return nil, fmt.Errorf("index body is %d bytes, header says %d", len(body), bodyLen)
	}
	return decodeBody(body, budget-int64(bodyLen), int(v))
}

// bodyReader reads an index body. Every allocation the decoded index makes draws from
// budget first (alloc); the first failure sticks in err.
type bodyReader struct {
	b      []byte
	err    error
	budget int64 // bytes the decoded index may still allocate
	limit  int64 // the budget it started with, for errors
	dry    bool  // only counting what decoding would draw (Index.drawBudget)
}

// alloc draws n items of size bytes from the budget, or fails naming what.
func (r *bodyReader) alloc(what string, n, size int) bool {
	if r.err != nil {
		return false
	}
	need := int64(n) * int64(size) // n <= len(body) <= 1 GiB and size < 1 KiB: no overflow
	if need > r.budget {
		r.fail("index: %s: %d bytes, over what is left (%d) of the decode budget of %d", what, need, r.budget, r.limit)
		return false
	}
	r.budget -= need
	return true
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

// Minimum body bytes of each item: a frame is two varints, an entry a name prefix and
// length, type, flags, mode, uid, gid, mtime and size; a chunk digest 32 bytes.
const minFrameBytes, minEntryBytes, minDigestBytes = 2, 9, 32

// decodeBody parses an index body of the given payload version, allocating at most budget
// bytes.
func decodeBody(body []byte, budget int64, version int) (*Index, error) {
	r := &bodyReader{b: body, budget: budget, limit: budget}
	ix, nChunks, err := r.lists()
	if err != nil {
		return nil, err
	}
	tarEnd, err := r.frames(ix, nChunks)
	if err != nil {
		return nil, err
	}
	d := entryDecoder{r: r, ix: ix, tarEnd: tarEnd}
	for i := range ix.Entries {
		if err := d.entry(i); err != nil {
			return nil, err
		}
	}
	for i := range ix.Digests {
		copy(ix.Digests[i][:], r.fixed("chunk digest", 32))
	}
	if r.err != nil {
		return nil, r.err
	}
	if version >= IndexVersion2 {
		if err := r.runDigests(ix); err != nil {
			return nil, err
		}
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

// maxOffset bounds offsets, sizes and times in an index body.
const maxOffset = 1 << 62

// lists reads the three counts and allocates the index's frame, entry and digest lists,
// within the budget and what the bytes left can hold.
func (r *bodyReader) lists() (*Index, int, error) {
	nFrames := r.count("frame count", minFrameBytes)
	nEntries := r.count("entry count", minEntryBytes)
	nChunks := r.count("chunk count", minDigestBytes)
	if r.err != nil {
		return nil, 0, r.err
	}
	// Each count fits the bytes left alone; together they must too.
	if need := uint64(nFrames)*minFrameBytes + uint64(nEntries)*minEntryBytes + uint64(nChunks)*minDigestBytes; need > uint64(len(r.b)) {
		return nil, 0, fmt.Errorf("index: %d frames, %d entries and %d chunks take at least %d bytes, %d left", nFrames, nEntries, nChunks, need, len(r.b))
	}
	r.alloc("frame list", nFrames, int(unsafe.Sizeof(Frame{})))
	r.alloc("entry list", nEntries, int(unsafe.Sizeof(Entry{})))
	r.alloc("chunk digests", nChunks, int(unsafe.Sizeof(Digest{})))
	if r.err != nil {
		return nil, 0, fmt.Errorf("%w (%d frames, %d entries, %d chunks)", r.err, nFrames, nEntries, nChunks)
	}
	return &Index{Frames: make([]Frame, nFrames), Entries: make([]Entry, nEntries), Digests: make([]Digest, nChunks)}, nChunks, nil
}

// frames reads the frame table into ix.Frames and returns the tar stream's length.
func (r *bodyReader) frames(ix *Index, nChunks int) (int64, error) {
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
			return 0, r.err
		}
		f := Frame{Offset: off, Size: cs, TarOffset: tarOff, TarSize: us, ChunkIndex: -1}
		if v&1 != 0 {
			if chunk >= nChunks {
				return 0, fmt.Errorf("index: frame %d: more chunk frames than the %d digests", i, nChunks)
			}
			f.ChunkIndex = chunk
			chunk++
		}
		ix.Frames[i] = f
		off += cs
		tarOff += us
	}
	if chunk != nChunks {
		return 0, fmt.Errorf("index: %d chunk frames but %d digests", chunk, nChunks)
	}
	return tarOff, nil
}

// runDigests reads the header run digests of a version 2 body.
func (r *bodyReader) runDigests(ix *Index) error {
	n := r.count("run count", minDigestBytes)
	if r.err != nil {
		return r.err
	}
	if want := ix.headerRunCount(); n != want {
		return fmt.Errorf("index: %d run digests for %d header runs", n, want)
	}
	if !r.alloc("run digests", n, int(unsafe.Sizeof(Digest{}))) {
		return r.err
	}
	ix.RunDigests = make([]Digest, n)
	for i := range ix.RunDigests {
		copy(ix.RunDigests[i][:], r.fixed("run digest", 32))
	}
	return r.err
}

// entryDecoder reads the entries of a body in order: each name is relative to the one
// before, each first frame to the end of the previous content entry's frames.
type entryDecoder struct {
	r        *bodyReader
	ix       *Index
	tarEnd   int64 // the tar stream's length, from the frames
	prev     string
	frameEnd int
	names    nameArena
}

func (d *entryDecoder) entry(i int) error {
	r, e := d.r, &d.ix.Entries[i]
	if err := d.name(i, e); err != nil {
		return err
	}
	t := r.fixed("type", 1)
	flags := r.uvarint("flags")
	e.Mode = r.int63("mode", 1<<32)
	e.UID = int(r.int63("uid", 1<<32))
	e.GID = int(r.int63("gid", 1<<32))
	e.ModSec = r.int63("mtime", maxOffset)
	if r.err != nil {
		return r.err
	}
	e.Type = t[0]
	if flags&^knownFlags != 0 {
		return fmt.Errorf("index: entry %q: unknown flags %#x", e.Name, flags)
	}
	if flags&flagNegMtime != 0 {
		e.ModSec = -e.ModSec
	}
	d.optional(e, flags)
	e.Size = r.int63("size", maxOffset)
	if flags&flagContent != 0 {
		if err := d.content(e); err != nil {
			return err
		}
	}
	if flags&flagMulti != 0 && flags&flagContent == 0 {
		return fmt.Errorf("index: entry %q: multi-chunk flag without content", e.Name)
	}
	if flags&(flagMulti|flagSparse) != 0 {
		copy(e.Digest[:], r.fixed("file digest", 32))
	}
	if flags&flagSparse != 0 {
		e.Sparse = true
		e.TarOffset = r.int63("tar offset", maxOffset)
		e.TarLen = r.int63("tar length", maxOffset)
		if r.err == nil && (e.TarOffset > d.tarEnd || e.TarLen > d.tarEnd-e.TarOffset) {
			return fmt.Errorf("index: entry %q: sparse record past the end of the tar stream", e.Name)
		}
		if flags&flagContent != 0 {
			return fmt.Errorf("index: entry %q: sparse and chunked", e.Name)
		}
	}
	return r.err
}

// name reads entry i's name: a prefix shared with the previous name and a suffix.
func (d *entryDecoder) name(i int, e *Entry) error {
	r := d.r
	shared := r.uvarint("name prefix")
	suffix := r.bytes("name", MaxNameLen)
	if r.err != nil {
		return r.err
	}
	if shared > uint64(len(d.prev)) || shared+uint64(len(suffix)) > MaxNameLen {
		return fmt.Errorf("index: entry %d: name prefix %d longer than the previous name", i, shared)
	}
	e.Name = d.names.concat(r, d.prev[:shared], suffix)
	if r.err != nil {
		return fmt.Errorf("%w, at entry %d (a name of %d bytes)", r.err, i, shared+uint64(len(suffix)))
	}
	d.prev = e.Name
	if !isCleanName(e.Name) {
		return fmt.Errorf("index: entry %d: name %q is not a clean relative path", i, e.Name)
	}
	return nil
}

// optional reads the fields flags say e has: mtime nanoseconds, link name, device numbers
// and xattrs. Errors stay in r.
func (d *entryDecoder) optional(e *Entry, flags uint64) {
	r := d.r
	if flags&flagNsec != 0 {
		e.ModNsec = int32(r.int63("mtime nsec", 999_999_999))
	}
	if flags&flagLinkname != 0 {
		if b := r.bytes("link name", MaxNameLen); r.alloc("link name", len(b), 1) {
			e.Linkname = string(b)
		}
	}
	if flags&flagDevice != 0 {
		e.Devmajor = r.int63("devmajor", 1<<32)
		e.Devminor = r.int63("devminor", 1<<32)
	}
	if flags&flagXattrs == 0 {
		return
	}
	n := r.count("xattr count", 2)
	if n > MaxXattrs {
		r.fail("index: entry %q: %d xattrs, over the limit of %d", e.Name, n, MaxXattrs)
	}
	if r.alloc("xattrs", n, int(unsafe.Sizeof(Xattr{}))) {
		e.Xattrs = make([]Xattr, n)
	}
	for j := range e.Xattrs {
		if b := r.bytes("xattr name", 255); r.alloc("xattr name", len(b), 1) {
			e.Xattrs[j].Name = string(b)
		}
		if b := r.bytes("xattr value", MaxXattrValueLen); r.alloc("xattr value", len(b), 1) {
			e.Xattrs[j].Value = string(b)
		}
	}
}

// content reads a regular file's frames and checks they are chunk frames holding its size.
func (d *entryDecoder) content(e *Entry) error {
	r, nFrames := d.r, len(d.ix.Frames)
	gap := r.uvarint("first frame")
	n := r.uvarint("frame count")
	if r.err != nil {
		return r.err
	}
	if gap > uint64(nFrames-d.frameEnd) || n == 0 || n > uint64(nFrames-d.frameEnd)-gap {
		return fmt.Errorf("index: entry %q: frames past the end", e.Name)
	}
	e.FirstFrame = d.frameEnd + int(gap)
	e.NumFrames = int(n)
	d.frameEnd = e.FirstFrame + e.NumFrames
	var total int64
	for _, f := range d.ix.Frames[e.FirstFrame:d.frameEnd] {
		if f.ChunkIndex < 0 {
			return fmt.Errorf("index: entry %q: content in a header frame", e.Name)
		}
		total += f.TarSize
	}
	if total != e.Size {
		return fmt.Errorf("index: entry %q: chunks hold %d bytes, size is %d", e.Name, total, e.Size)
	}
	if e.Type != typeReg {
		return fmt.Errorf("index: entry %q of type %q has content", e.Name, e.Type)
	}
	return nil
}

// headerRunCount counts the header runs of the frame list: its maximal sequences of
// consecutive header frames.
func (ix *Index) headerRunCount() int {
	n := 0
	for i, f := range ix.Frames {
		if f.ChunkIndex < 0 && (i == 0 || ix.Frames[i-1].ChunkIndex >= 0) {
			n++
		}
	}
	return n
}

// nameArena makes the entry names of an index out of few large allocations instead of
// one per entry; decoding a 100k-entry index is dominated by allocation otherwise. Each
// block draws from the decode budget, so names sharing long prefixes (a few bytes in the
// body each) cannot expand past it.
type nameArena struct {
	buf  []byte
	free int // bytes left in buf's block
}

// nameBlock is the size of an arena block.
const nameBlock = 256 << 10

func (a *nameArena) concat(r *bodyReader, prefix string, suffix []byte) string {
	n := len(prefix) + len(suffix)
	if !a.reserve(r, n) {
		return ""
	}
	start := len(a.buf)
	a.buf = append(a.buf, prefix...)
	a.buf = append(a.buf, suffix...)
	return unsafe.String(unsafe.SliceData(a.buf[start:]), n)
}

// reserve makes room for a name of n bytes, drawing a new block from the budget if the
// current one lacks it. An encoder's dry run (drawBudget) uses it without buf: then only
// free counts.
func (a *nameArena) reserve(r *bodyReader, n int) bool {
	if n == 0 || a.free >= n {
		a.free -= n
		return true
	}
	// Strings made so far keep the old block alive; it is never written again.
	size := max(n, min(nameBlock, int(r.budget)))
	if !r.alloc("names", size, 1) {
		return false
	}
	if !r.dry {
		a.buf = make([]byte, 0, size)
	}
	a.free = size - n
	return true
}

// isCleanName reports whether CleanName(s) == s and s is not empty, without allocating:
// "." or elements that are neither empty, "." nor "..".
func isCleanName(s string) bool {
	if s == "." {
		return true
	}
	if s == "" {
		return false
	}
	start := 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) && s[i] != '/' {
			continue
		}
		switch s[start:i] {
		case "", ".", "..":
			return false
		}
		start = i + 1
	}
	return true
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
