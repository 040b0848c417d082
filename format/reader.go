package format

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
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
		return loc, fmt.Errorf("annotation %s=%d: over the limit of %d", AnnotationIndexSize, loc.Size, MaxIndexSize)
	}
	return loc, nil
}

// tailRead is how much of a blob's end ReadIndex reads at once when it has no location:
// enough for the footer and the index of most layers, so one request usually does.
const tailRead = 256 << 10

// ReadIndex reads, verifies and decodes the index of a layer blob of the given size. With
// a location (from the manifest) it reads just the payload and checks it against the
// location's digest; without one (loc == nil) it finds the index through the footer, and
// the digest checked is the footer's own. An index with the same digest that is decoded
// already and still in use is returned rather than decoded again (shared.go): the
// Index must not be changed.
func ReadIndex(ra io.ReaderAt, size int64, loc *IndexLocation) (*Index, error) {
	var payload []byte
	var want Digest
	if loc != nil {
		// The index frame is followed by the footer frame alone, so a blob of any other
		// size is truncated or extended.
		if loc.Size > MaxIndexSize || loc.Offset < skippableHeaderLen || loc.Size < 0 || loc.Offset+loc.Size+FooterSize != size {
			return nil, fmt.Errorf("index at %d+%d: does not end %d bytes before the end of the %d-byte layer", loc.Offset, loc.Size, FooterSize, size)
		}
		payload = make([]byte, loc.Size)
		if _, err := ra.ReadAt(payload, loc.Offset); err != nil {
			return nil, fmt.Errorf("read index at %d+%d: %w", loc.Offset, loc.Size, err)
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
		} else {
			payload = make([]byte, plen)
			if _, err := ra.ReadAt(payload, off); err != nil {
				return nil, fmt.Errorf("read index at %d+%d: %w", off, plen, err)
			}
		}
		want = d
	}
	if got := sum256(payload); got != want {
		return nil, fmt.Errorf("index digest %s, want %s", got, want)
	}
	ix := sharedIndex(want)
	if ix == nil {
		var err error
		if ix, err = DecodeIndex(payload); err != nil {
			return nil, err
		}
	}
	if n := len(ix.Frames); n > 0 {
		last := ix.Frames[n-1]
		if last.Offset+last.Size > size {
			return nil, fmt.Errorf("index: frames end at %d, past the %d-byte layer", last.Offset+last.Size, size)
		}
	}
	return shareIndex(want, ix), nil
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

// ReadFile returns the whole verified content of a regular file or hard link entry.
func (l *Layer) ReadFile(e *Entry) ([]byte, error) {
	t, err := l.Index.Content(e)
	if err != nil {
		return nil, err
	}
	if t.Type != typeReg {
		return nil, fmt.Errorf("%q: not a regular file", e.Name)
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

// readSparse decodes a sparse entry from its tar record, spread over header frames.
func (l *Layer) readSparse(e *Entry) ([]byte, error) {
	var rec []byte
	end := e.TarOffset + e.TarLen
	for _, f := range l.Index.Frames {
		if f.TarOffset+f.TarSize <= e.TarOffset || f.TarOffset >= end {
			continue
		}
		comp := make([]byte, f.Size)
		if _, err := l.ra.ReadAt(comp, f.Offset); err != nil {
			return nil, fmt.Errorf("%q: read frame at %d: %w", e.Name, f.Offset, err)
		}
		b, err := DecodeFrame(nil, comp, f.TarSize)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", e.Name, err)
		}
		lo := max(e.TarOffset-f.TarOffset, 0)
		hi := min(end-f.TarOffset, f.TarSize)
		rec = append(rec, b[lo:hi]...)
	}
	if int64(len(rec)) != e.TarLen {
		return nil, fmt.Errorf("%q: sparse record of %d bytes, found %d", e.Name, e.TarLen, len(rec))
	}
	tr := tar.NewReader(bytes.NewReader(rec))
	if _, err := tr.Next(); err != nil {
		return nil, fmt.Errorf("%q: sparse record: %w", e.Name, err)
	}
	if e.Size > MaxIndexBodySize {
		return nil, fmt.Errorf("%q: sparse file of %d bytes: too large to read whole", e.Name, e.Size)
	}
	h := sha256.New()
	out, err := io.ReadAll(io.TeeReader(io.LimitReader(tr, e.Size+1), h))
	if err != nil {
		return nil, fmt.Errorf("%q: sparse record: %w", e.Name, err)
	}
	if Digest(h.Sum(nil)) != e.Digest || int64(len(out)) != e.Size {
		return nil, fmt.Errorf("%q: sparse content does not match its digest %s", e.Name, e.Digest)
	}
	return out, nil
}
