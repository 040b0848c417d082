package format

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// IndexLocation says where a layer's index payload lies and what it must hash to. From a
// manifest's layer annotations it is the link in the chain of trust between the manifest
// digest and the chunk digests.
type IndexLocation struct {
	Offset int64
	Size   int64
	Digest Digest
}

// LocationFromAnnotations reads the index location from a layer descriptor's annotations.
func LocationFromAnnotations(a map[string]string) (IndexLocation, error) {
	var loc IndexLocation
	if v, ok := a[AnnotationVersion]; ok && v != strconv.Itoa(Version) {
		return loc, fmt.Errorf("annotation %s=%q: this lazypull reads version %d", AnnotationVersion, v, Version)
	}
	d, ok := a[AnnotationIndexDigest]
	if !ok {
		return loc, fmt.Errorf("no %s annotation: not a lazypull layer", AnnotationIndexDigest)
	}
	var err error
	if loc.Digest, err = ParseDigest(d); err != nil {
		return loc, fmt.Errorf("annotation %s: %w", AnnotationIndexDigest, err)
	}
	for _, f := range []struct {
		key string
		dst *int64
	}{{AnnotationIndexOffset, &loc.Offset}, {AnnotationIndexSize, &loc.Size}} {
		v, err := strconv.ParseInt(a[f.key], 10, 64)
		if err != nil || v < 0 {
			return loc, fmt.Errorf("annotation %s=%q: want a non-negative integer", f.key, a[f.key])
		}
		*f.dst = v
	}
	if loc.Size > MaxIndexSize {
		return loc, fmt.Errorf("annotation %s=%d: an index over the limit of %d bytes", AnnotationIndexSize, loc.Size, MaxIndexSize)
	}
	return loc, nil
}

// tailRead is how much of a blob's end ReadIndex reads at once when it has no location:
// enough for the footer and the index of most layers, so one request usually does. It is
// also the first step of reading a payload whose size is a claim (readPayload).
const tailRead = 256 << 10

// Check says whether the location can be that of the index of a layer blob of the given
// size: a payload of at most MaxIndexSize bytes followed by the footer frame alone, so
// that a blob of any other size is truncated or extended.
func (loc IndexLocation) Check(size int64) error {
	if loc.Size > MaxIndexSize {
		return fmt.Errorf("index at %d+%d: over the limit of %d bytes", loc.Offset, loc.Size, MaxIndexSize)
	}
	if loc.Offset < skippableHeaderLen || loc.Size < 0 || loc.Offset+loc.Size+FooterSize != size {
		return fmt.Errorf("index at %d+%d: does not end %d bytes before the end of the %d-byte layer", loc.Offset, loc.Size, FooterSize, size)
	}
	return nil
}

// ReadIndex reads, verifies and decodes the index of a layer blob of the given size. With
// a location (from the manifest) it reads just the payload and checks it against the
// location's digest; without one (loc == nil) it finds the index through the footer, and
// the digest checked is the footer's own. Either way the payload's size is a claim: it is
// read in steps that grow as its bytes arrive (readPayload), so a blob shorter than its
// descriptor says costs what it holds. A reader of a registry should rather stream the
// payload in one request (ReadIndexFrom). Every call decodes an Index of its own; a
// caller that keeps indexes shares them (internal/store's ShareIndex).
func ReadIndex(ra io.ReaderAt, size int64, loc *IndexLocation) (*Index, error) {
	var payload []byte
	var want Digest
	if loc != nil {
		if err := loc.Check(size); err != nil {
			return nil, err
		}
		var err error
		if payload, err = readPayload(io.NewSectionReader(ra, loc.Offset, loc.Size), loc.Offset, loc.Size); err != nil {
			return nil, err
		}
		want = loc.Digest
	} else {
		if size < FooterSize {
			return nil, fmt.Errorf("layer of %d bytes: too short for a lazypull footer", size)
		}
		n := min(size, tailRead)
		tail := make([]byte, n)
		if _, err := ra.ReadAt(tail, size-n); err != nil {
			return nil, fmt.Errorf("read layer tail: %w", err)
		}
		off, plen, d, err := parseFooter(tail[n-FooterSize:])
		if err != nil {
			return nil, err
		}
		if plen > MaxIndexSize || off < skippableHeaderLen || off+plen+FooterSize != size {
			return nil, fmt.Errorf("footer: index at %d+%d outside the %d-byte layer", off, plen, size)
		}
		if start := off - (size - n); start >= 0 {
			payload = tail[start : start+plen]
		} else if payload, err = readPayload(io.NewSectionReader(ra, off, plen), off, plen); err != nil {
			return nil, err
		}
		want = d
	}
	return indexOf(payload, size, want)
}

// ReadIndexFrom reads the index payload at loc from r, the stream of the layer blob's
// loc.Size bytes at loc.Offset (one Range request), then verifies and decodes it as
// ReadIndex does. It returns the payload too. loc.Size is the manifest's word: the buffer
// grows as bytes arrive, and a stream that ends before loc.Size bytes is an error that
// says how many came.
func ReadIndexFrom(r io.Reader, size int64, loc IndexLocation) (*Index, []byte, error) {
	if err := loc.Check(size); err != nil {
		return nil, nil, err
	}
	payload, err := readPayload(r, loc.Offset, loc.Size)
	if err != nil {
		return nil, nil, err
	}
	ix, err := indexOf(payload, size, loc.Digest)
	if err != nil {
		return nil, nil, err
	}
	return ix, payload, nil
}

// ReadIndexBytes verifies and decodes the index payload b of the layer blob, read already
// (kept in a store, or brought by a profile's pack), as ReadIndex does.
func ReadIndexBytes(b []byte, size int64, loc IndexLocation) (*Index, error) {
	if err := loc.Check(size); err != nil {
		return nil, err
	}
	if int64(len(b)) != loc.Size {
		return nil, fmt.Errorf("index at %d+%d: %d bytes", loc.Offset, loc.Size, len(b))
	}
	return indexOf(b, size, loc.Digest)
}

// readPayload reads the n bytes of the index payload at off from r into a buffer that
// starts at tailRead bytes and at most doubles as they arrive: what it allocates is at most
// three times what came (and about twice n when all of it does), whatever n claimed.
func readPayload(r io.Reader, off, n int64) ([]byte, error) {
	buf := make([]byte, 0, min(n, tailRead))
	for int64(len(buf)) < n {
		if len(buf) == cap(buf) {
			grown := make([]byte, len(buf), min(n, 2*int64(cap(buf))))
			buf = grown[:copy(grown, buf)]
		}
		k, err := io.ReadFull(r, buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+k]
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, fmt.Errorf("index at %d+%d: %d of its %d bytes arrived: %w", off, n, len(buf), n, err)
			}
			return nil, fmt.Errorf("index at %d+%d: read after %d of its %d bytes: %w", off, n, len(buf), n, err)
		}
	}
	return buf, nil
}

// indexOf verifies a payload against its digest and decodes it.
func indexOf(payload []byte, size int64, want Digest) (*Index, error) {
	if got := sum256(payload); got != want {
		return nil, fmt.Errorf("index digest %s, want %s", got, want)
	}
	ix, err := DecodeIndex(payload)
	if err != nil {
		return nil, err
	}
	if n := len(ix.Frames); n > 0 {
		last := ix.Frames[n-1]
		if last.Offset+last.Size > size {
			return nil, fmt.Errorf("index: frames end at %d, past the %d-byte layer", last.Offset+last.Size, size)
		}
	}
	return ix, nil
}

// ErrNoFooter is returned for a blob that does not end in a lazypull footer.
var ErrNoFooter = errors.New("no lazypull footer: not a lazypull layer")

func parseFooter(b []byte) (offset, size int64, d Digest, err error) {
	if len(b) != FooterSize || binary.LittleEndian.Uint32(b) != footerFrameMagic ||
		binary.LittleEndian.Uint32(b[4:]) != footerPayloadLen || string(b[8:16]) != footerMagic {
		return 0, 0, d, ErrNoFooter
	}
	o := binary.LittleEndian.Uint64(b[16:])
	s := binary.LittleEndian.Uint64(b[24:])
	if o > 1<<62 || s > 1<<62 {
		return 0, 0, d, fmt.Errorf("footer: index at %d+%d: out of range", o, s)
	}
	copy(d[:], b[32:])
	return int64(o), int64(s), d, nil
}

var chunkDecoders = sync.Pool{New: func() any {
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(MaxChunkSize), zstd.WithDecoderMaxWindow(MaxChunkSize))
	if err != nil {
		panic(err) // only for invalid options
	}
	return d
}}

// DecodeFrame decompresses one frame into dst (reusing its capacity) and checks that it
// yields exactly want bytes.
func DecodeFrame(dst, frame []byte, want int64) ([]byte, error) {
	if want < 0 || want > MaxChunkSize {
		return nil, fmt.Errorf("frame of %d bytes: over the limit of %d", want, MaxChunkSize)
	}
	dec := chunkDecoders.Get().(*zstd.Decoder)
	defer chunkDecoders.Put(dec)
	if int64(cap(dst)) < want {
		dst = make([]byte, 0, want)
	}
	out, err := dec.DecodeAll(frame, dst[:0])
	if err != nil {
		return nil, fmt.Errorf("decompress frame: %w", err)
	}
	if int64(len(out)) != want {
		return nil, fmt.Errorf("frame decompressed to %d bytes, want %d", len(out), want)
	}
	return out, nil
}

// Decode decompresses the chunk's frame into dst (reusing its capacity) and verifies it
// against the chunk's digest: no byte leaves here unverified.
func (c Chunk) Decode(dst, frame []byte) ([]byte, error) {
	out, err := DecodeFrame(dst, frame, c.Size)
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", c.Digest, err)
	}
	if got := sum256(out); got != c.Digest {
		return nil, fmt.Errorf("chunk %s: content hashes to %s", c.Digest, got)
	}
	return out, nil
}

// Layer is a lazypull layer blob opened through its index.
type Layer struct {
	ra    io.ReaderAt
	size  int64
	Index *Index
}

// Open reads the index of a layer blob. annotations are those of the layer descriptor;
// when they carry the index location it is used and checked, else the footer is.
func Open(ra io.ReaderAt, size int64, annotations map[string]string) (*Layer, error) {
	var loc *IndexLocation
	if IsLayer(annotations) {
		l, err := LocationFromAnnotations(annotations)
		if err != nil {
			return nil, err
		}
		loc = &l
	}
	ix, err := ReadIndex(ra, size, loc)
	if err != nil {
		return nil, err
	}
	return &Layer{ra: ra, size: size, Index: ix}, nil
}

// NewLayer joins a blob and an index already read (and verified) from it.
func NewLayer(ra io.ReaderAt, size int64, ix *Index) (*Layer, error) {
	if n := len(ix.Frames); n > 0 && ix.Frames[n-1].Offset+ix.Frames[n-1].Size > size {
		return nil, fmt.Errorf("index: frames end past the %d-byte layer", size)
	}
	return &Layer{ra: ra, size: size, Index: ix}, nil
}

// ReadChunk fetches, decompresses and verifies one chunk.
func (l *Layer) ReadChunk(dst []byte, c Chunk) ([]byte, error) {
	frame := make([]byte, c.CompSize)
	if _, err := l.ra.ReadAt(frame, c.Offset); err != nil {
		return nil, fmt.Errorf("read chunk %s at %d+%d: %w", c.Digest, c.Offset, c.CompSize, err)
	}
	return c.Decode(dst, frame)
}

// MaxReadFile bounds the file ReadFile returns whole: its size is the index's claim,
// allocated before a byte is read.
const MaxReadFile = 1 << 30

// ReadFile returns the whole verified content of a regular file or hard link entry, of at
// most MaxReadFile bytes. It is for tools and tests; a file system reads by range.
func (l *Layer) ReadFile(e *Entry) ([]byte, error) {
	t, err := l.Index.Content(e)
	if err != nil {
		return nil, err
	}
	if t.Type != typeReg {
		return nil, fmt.Errorf("%q: not a regular file", e.Name)
	}
	if t.Size > MaxReadFile {
		return nil, fmt.Errorf("%q: %d bytes, over the limit of %d to read whole", e.Name, t.Size, MaxReadFile)
	}
	if t.Sparse {
		return l.readSparse(t)
	}
	out := make([]byte, 0, t.Size)
	for _, c := range l.Index.Chunks(t) {
		b, err := l.ReadChunk(out[len(out):], c)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", e.Name, err)
		}
		out = append(out, b...) // in place: b is out's spare capacity
	}
	if int64(len(out)) != t.Size {
		return nil, fmt.Errorf("%q: chunks hold %d bytes, size is %d", e.Name, len(out), t.Size)
	}
	return out, nil
}

// readSparse decodes a sparse entry's whole content (ReadFile).
func (l *Layer) readSparse(e *Entry) ([]byte, error) {
	if e.Size > MaxSparseSize {
		return nil, fmt.Errorf("%q: sparse file of %d bytes: over the limit of %d", e.Name, e.Size, MaxSparseSize)
	}
	out := make([]byte, e.Size)
	n, err := l.ReadSparseAt(e, out, 0)
	if err != nil {
		return nil, err
	}
	return out[:n], nil
}

// MaxSparseHeader bounds the headers and sparse map of a sparse entry's tar record: what
// a tar reader reads, and holds in memory, before the file's first byte. archive/tar caps
// a PAX header at 1 MiB; a map of a million fragments is under 4 MiB.
const MaxSparseHeader = 4 << 20

// ReadSparseAt reads up to len(p) bytes of a sparse file's content at off, and returns
// how many it read (fewer only at the end of the file). The content is not laid out in
// chunks: each call decompresses the header frames of the entry's tar record one at a time,
// decodes the record with a tar reader, copies the bytes asked for and checks the whole
// content against the entry's digest before returning them. Memory is one frame and the
// tar reader's header state (MaxSparseHeader), whatever the file's size; time grows with
// it, holes included (MaxSparseSize).
func (l *Layer) ReadSparseAt(e *Entry, p []byte, off int64) (int, error) {
	if !e.Sparse {
		return 0, fmt.Errorf("%q: not a sparse file", e.Name)
	}
	if e.Size > MaxSparseSize {
		return 0, fmt.Errorf("%q: sparse file of %d bytes: over the limit of %d", e.Name, e.Size, MaxSparseSize)
	}
	// The record holds the headers, the map and at most the file's bytes.
	if e.TarLen < 512 || e.TarLen > e.Size+MaxSparseHeader+512 {
		return 0, fmt.Errorf("%q: sparse record of %d bytes for a file of %d: out of range", e.Name, e.TarLen, e.Size)
	}
	if off < 0 {
		return 0, fmt.Errorf("%q: read at %d", e.Name, off)
	}
	if off >= e.Size || len(p) == 0 {
		return 0, nil
	}
	rr := &recordReader{l: l, e: e, pos: e.TarOffset, end: e.TarOffset + e.TarLen, limit: e.TarOffset + MaxSparseHeader}
	tr := tar.NewReader(rr)
	if _, err := tr.Next(); err != nil {
		return 0, fmt.Errorf("%q: sparse record at tar offset %d: %w", e.Name, e.TarOffset, err)
	}
	rr.limit = rr.end
	h := sha256.New()
	buf := make([]byte, 64<<10)
	var pos int64 // in the file
	n := 0
	for {
		k, err := tr.Read(buf)
		h.Write(buf[:k])
		if lo, hi := max(off, pos), min(off+int64(len(p)), pos+int64(k)); lo < hi {
			n += copy(p[lo-off:], buf[lo-pos:hi-pos])
		}
		pos += int64(k)
		if pos > e.Size {
			return 0, fmt.Errorf("%q: sparse record holds more than the file's %d bytes", e.Name, e.Size)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("%q: sparse record at tar offset %d: %w", e.Name, e.TarOffset, err)
		}
	}
	if pos != e.Size || Digest(h.Sum(nil)) != e.Digest {
		return 0, fmt.Errorf("%q: sparse content (%d bytes) does not match its size %d and digest %s", e.Name, pos, e.Size, e.Digest)
	}
	return n, nil
}

// recordReader reads the bytes of a tar record [pos, end) of the tar stream from the
// header frames holding them, one frame in memory at a time. Reads past limit fail.
type recordReader struct {
	l          *Layer
	e          *Entry
	pos, end   int64
	limit      int64
	frame      []byte // decompressed frame holding pos, if any
	frameStart int64  // its tar offset
	comp       []byte
}

func (r *recordReader) Read(b []byte) (int, error) {
	if r.pos >= r.end {
		return 0, io.EOF
	}
	if r.pos >= r.limit {
		return 0, fmt.Errorf("headers and sparse map over the limit of %d bytes", MaxSparseHeader)
	}
	if r.frame == nil || r.pos >= r.frameStart+int64(len(r.frame)) {
		if err := r.next(); err != nil {
			return 0, err
		}
	}
	hi := min(r.end, r.limit, r.frameStart+int64(len(r.frame)))
	k := copy(b, r.frame[r.pos-r.frameStart:hi-r.frameStart])
	r.pos += int64(k)
	return k, nil
}

// next decompresses the header frame holding r.pos.
func (r *recordReader) next() error {
	fs := r.l.Index.Frames
	i := sort.Search(len(fs), func(i int) bool { return fs[i].TarOffset+fs[i].TarSize > r.pos })
	if i == len(fs) || fs[i].TarOffset > r.pos {
		return fmt.Errorf("tar offset %d: in no frame", r.pos)
	}
	f := fs[i]
	if f.ChunkIndex >= 0 {
		return fmt.Errorf("tar offset %d: in a content frame, not a header frame", r.pos)
	}
	if int64(cap(r.comp)) < f.Size {
		r.comp = make([]byte, f.Size)
	}
	comp := r.comp[:f.Size]
	if _, err := r.l.ra.ReadAt(comp, f.Offset); err != nil {
		return fmt.Errorf("read frame at %d+%d: %w", f.Offset, f.Size, err)
	}
	b, err := DecodeFrame(r.frame, comp, f.TarSize)
	if err != nil {
		return fmt.Errorf("frame at %d: %w", f.Offset, err)
	}
	r.frame, r.frameStart = b, f.TarOffset
	return nil
}
