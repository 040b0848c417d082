package profile

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"lazypull/format"
)

// A pack is a profile's start-up bytes in one blob: the index of every layer of the image
// and the compressed frame of every chunk the profile's files need, in access order. A
// mount reads it with one GET where it would read one index and one prefetch per layer
// (three and a half round trips' worth of requests for a two-layer image become one),
// and it needs no layer index to know what to ask for.
//
// A pack is trusted for nothing: each index it carries is checked against the digest in
// its layer's annotations, each frame against its chunk's digest in that index, exactly as
// if they came from the layer blob. A wrong or missing record costs a fetch from the layer
// blob, never a wrong byte. It costs registry space: the profiled bytes are stored twice.
//
// Layout (integers big endian):
//
//	magic   [8]byte "LZPPACK\x00"
//	version uint16  1, or 2 for a pack that may hold header run records
//	records, to the end of the blob:
//	  kind   uint8    1 index, 2 chunk frame, 3 header run (version 2 only)
//	  digest [32]byte index: the index's digest (format.AnnotationIndexDigest);
//	                  chunk: the chunk's (of its uncompressed bytes);
//	                  header run: the run's (format.Index.RunDigests: of its compressed frames)
//	  length uint32
//	  bytes  [length]byte
//
// Writers put every index record before the first record of another kind: a mount waits
// for the indexes. A version 2 writer puts the header runs of the profiled files (and of
// the symlinks a start follows) next, then the chunks in the order the workload reads them.
// A header run record holds the run's compressed frames as the blob holds them; a reader
// uses it only for a layer whose index (version 2) gives the run that digest, after
// hashing it. A reader of version 1 refuses a version 2 pack whole (it does not know kind 3
// and would stop at the first such record): it reads from the layers instead, as it must
// anyway, since only version 2 indexes have run digests.
const (
	// PackMediaType is the media type of a pack, the profile artifact's second layer.
	PackMediaType = "application/vnd.lazypull.profile.pack.v1"
	// MaxPack bounds a pack: what a workload reads at start, with room to spare.
	MaxPack = 1 << 30
)

// Pack versions: version 2 may hold header run records.
const (
	PackVersion1 = 1
	PackVersion2 = 2
)

// MaxRunRecord bounds a header run record: the compressed header frames of one run, as a
// mount checks them on demand.
const MaxRunRecord = 64 << 20

const (
	packMagic  = "LZPPACK\x00"
	packHeader = len(packMagic) + 2
	recHeader  = 1 + 32 + 4
	// maxFrame bounds a chunk record: a frame of format.MaxChunkSize bytes of input that
	// did not compress, with zstd's framing.
	maxFrame = format.MaxChunkSize + format.MaxChunkSize/8
)

// HeaderSize is the length of a pack's header; RecordHeaderSize that of a record's, before
// its bytes. A reader that knows where the writer put a record (the order above, from the
// profile and the layers' indexes) may read it alone, by range: RecordAt checks it.
const (
	HeaderSize       = packHeader
	RecordHeaderSize = recHeader
)

// RecordAt returns the bytes of the record b, read by range where a pack's layout puts the
// record of kind k and digest d with n bytes: b must be that whole record, its header
// saying so. The bytes are still to be checked against d, as a streamed record's are.
func RecordAt(b []byte, k RecordKind, d format.Digest, n int64) ([]byte, error) {
	if int64(len(b)) != recHeader+n {
		return nil, fmt.Errorf("pack record (%s %s): %d bytes, want %d: %w", k, d, len(b), recHeader+n, ErrBadPack)
	}
	var got format.Digest
	copy(got[:], b[1:33])
	if gk, gn := RecordKind(b[0]), int64(binary.BigEndian.Uint32(b[33:recHeader])); gk != k || got != d || gn != n {
		return nil, fmt.Errorf("pack record where %s %s of %d bytes should be: %s %s of %d bytes: %w", k, d, n, gk, got, gn, ErrBadPack)
	}
	return b[recHeader:], nil
}

// RecordKind says what a pack record holds.
type RecordKind uint8

// Record kinds.
const (
	RecordIndex RecordKind = 1 // a layer's index, as its blob holds it
	RecordChunk RecordKind = 2 // a chunk's compressed frame, as its blob holds it
	RecordRun   RecordKind = 3 // a header run's compressed frames, as its blob holds them (version 2)
)

func (k RecordKind) String() string {
	switch k {
	case RecordIndex:
		return "index"
	case RecordChunk:
		return "chunk"
	case RecordRun:
		return "header run"
	}
	return fmt.Sprintf("kind %d", uint8(k))
}

// PackWriter writes a pack.
type PackWriter struct {
	w       io.Writer
	version uint16
	n       int64
	chunks  bool // a chunk or header run record was written
	err     error
}

// NewPackWriter writes the header of a version 1 pack to w and returns a writer of its
// records.
func NewPackWriter(w io.Writer) *PackWriter { return NewPackWriterVersion(w, PackVersion1) }

// NewPackWriterVersion writes the header of a pack of the given version (PackVersion1, or
// PackVersion2 for a pack with header run records) to w and returns a writer of its
// records.
func NewPackWriterVersion(w io.Writer, version uint16) *PackWriter {
	pw := &PackWriter{w: w, version: version}
	if version != PackVersion1 && version != PackVersion2 {
		pw.err = fmt.Errorf("pack: version %d", version)
	}
	hdr := make([]byte, packHeader)
	copy(hdr, packMagic)
	binary.BigEndian.PutUint16(hdr[len(packMagic):], version)
	pw.write(hdr)
	return pw
}

// Index adds the index region of a layer (what its blob holds at the index's offset), by
// the index's digest. Every index comes before the first chunk.
func (pw *PackWriter) Index(d format.Digest, b []byte) error {
	if pw.chunks {
		return errors.New("pack: an index record after a chunk record")
	}
	if len(b) > format.MaxIndexSize {
		return fmt.Errorf("pack: index %s of %d bytes, more than %d", d, len(b), format.MaxIndexSize)
	}
	return pw.record(RecordIndex, d, b)
}

// Chunk adds a chunk's compressed frame, by the chunk's digest.
func (pw *PackWriter) Chunk(d format.Digest, frame []byte) error {
	if len(frame) > maxFrame {
		return fmt.Errorf("pack: frame of chunk %s of %d bytes, more than %d", d, len(frame), maxFrame)
	}
	pw.chunks = true
	return pw.record(RecordChunk, d, frame)
}

// Run adds a header run's compressed frames (as the blob holds them), by the run's digest
// (format.Index.RunDigests). Only a version 2 pack holds them.
func (pw *PackWriter) Run(d format.Digest, frames []byte) error {
	if pw.version < PackVersion2 {
		return errors.New("pack: a header run record in a version 1 pack")
	}
	if len(frames) > MaxRunRecord {
		return fmt.Errorf("pack: header run %s of %d bytes, more than %d", d, len(frames), MaxRunRecord)
	}
	pw.chunks = true
	return pw.record(RecordRun, d, frames)
}

// Size is the pack's length so far.
func (pw *PackWriter) Size() int64 { return pw.n }

func (pw *PackWriter) record(k RecordKind, d format.Digest, b []byte) error {
	if pw.n+int64(recHeader+len(b)) > MaxPack {
		return fmt.Errorf("pack: more than %d bytes", MaxPack)
	}
	var hdr [recHeader]byte
	hdr[0] = byte(k)
	copy(hdr[1:33], d[:])
	binary.BigEndian.PutUint32(hdr[33:], uint32(len(b)))
	pw.write(hdr[:])
	pw.write(b)
	return pw.err
}

func (pw *PackWriter) write(b []byte) {
	if pw.err != nil {
		return
	}
	n, err := pw.w.Write(b)
	pw.n += int64(n)
	if err != nil {
		pw.err = fmt.Errorf("pack: %w", err)
	}
}

// ErrBadPack is wrapped by a PackReader's errors for bytes that are not a pack.
var ErrBadPack = errors.New("not a lazypull pack")

// PackReader reads a pack's records as they arrive.
type PackReader struct {
	r       *bufio.Reader
	version uint16
	left    int64 // bytes of the pack not read yet
	off     int64 // offset of the next record
	buf     []byte
	err     error
}

// NewPackReader reads a pack of size bytes from r: its header now, its records on Next.
func NewPackReader(r io.Reader, size int64) (*PackReader, error) {
	if size < int64(packHeader) || size > MaxPack {
		return nil, fmt.Errorf("pack of %d bytes: want %d to %d: %w", size, packHeader, MaxPack, ErrBadPack)
	}
	pr := &PackReader{r: bufio.NewReaderSize(r, 64<<10), left: size - int64(packHeader), off: int64(packHeader)}
	var hdr [packHeader]byte
	if _, err := io.ReadFull(pr.r, hdr[:]); err != nil {
		return nil, fmt.Errorf("pack header: %w", unexpected(err))
	}
	if string(hdr[:len(packMagic)]) != packMagic {
		return nil, fmt.Errorf("pack header: %w (magic %q)", ErrBadPack, hdr[:len(packMagic)])
	}
	pr.version = binary.BigEndian.Uint16(hdr[len(packMagic):])
	if pr.version != PackVersion1 && pr.version != PackVersion2 {
		return nil, fmt.Errorf("pack header: version %d, this lazypull reads %d and %d: %w", pr.version, PackVersion1, PackVersion2, ErrBadPack)
	}
	return pr, nil
}

// NewPackReaderAt reads the records of a pack that lie in the n bytes at offset off, read
// by range from r (the pack's header is not among them): as a reader of version reads
// them, the first at off. A record cut by the range's end is malformed.
func NewPackReaderAt(r io.Reader, off, n int64, version uint16) (*PackReader, error) {
	if off < int64(packHeader) || n < 0 || off+n > MaxPack {
		return nil, fmt.Errorf("pack records at %d+%d: want them after the header and within %d bytes: %w", off, n, MaxPack, ErrBadPack)
	}
	if version != PackVersion1 && version != PackVersion2 {
		return nil, fmt.Errorf("pack: version %d", version)
	}
	return &PackReader{r: bufio.NewReaderSize(r, 64<<10), version: version, left: n, off: off}, nil
}

// Version is the pack's version.
func (pr *PackReader) Version() uint16 { return pr.version }

// Next returns the next record: its kind, digest and bytes (valid until the next call).
// It returns io.EOF after the last one, and an error for a record that is malformed or cut
// short; after an error it returns that error again.
func (pr *PackReader) Next() (RecordKind, format.Digest, []byte, error) {
	if pr.err != nil {
		return 0, format.Digest{}, nil, pr.err
	}
	k, d, b, err := pr.next()
	if err != nil {
		pr.err = err
	}
	return k, d, b, err
}

func (pr *PackReader) next() (RecordKind, format.Digest, []byte, error) {
	var d format.Digest
	if pr.left == 0 {
		return 0, d, nil, io.EOF
	}
	at := pr.off
	if pr.left < recHeader {
		return 0, d, nil, fmt.Errorf("pack record at %d: %d bytes left, a record header is %d: %w", at, pr.left, recHeader, ErrBadPack)
	}
	var hdr [recHeader]byte
	if _, err := io.ReadFull(pr.r, hdr[:]); err != nil {
		return 0, d, nil, fmt.Errorf("pack record at %d: %w", at, unexpected(err))
	}
	k := RecordKind(hdr[0])
	copy(d[:], hdr[1:33])
	n := int64(binary.BigEndian.Uint32(hdr[33:]))
	limit := int64(maxFrame)
	switch k {
	case RecordIndex:
		limit = format.MaxIndexSize
	case RecordChunk:
	case RecordRun:
		if pr.version < PackVersion2 {
			return 0, d, nil, fmt.Errorf("pack record at %d: kind %d in a version %d pack: %w", at, uint8(k), pr.version, ErrBadPack)
		}
		limit = MaxRunRecord
	default:
		return 0, d, nil, fmt.Errorf("pack record at %d: %s: %w", at, k, ErrBadPack)
	}
	if n > limit || n > pr.left-recHeader {
		return 0, d, nil, fmt.Errorf("pack record at %d (%s %s): %d bytes, more than the %d allowed or the %d left: %w",
			at, k, d, n, limit, pr.left-recHeader, ErrBadPack)
	}
	// The record's length is the pack's word, not yet its bytes': the buffer grows as they
	// arrive, so a pack cut short costs what it sent (twice at most), not what it claimed.
	b, err := readGrowing(pr.r, pr.buf[:0], n)
	pr.buf = b
	if err != nil {
		return 0, d, nil, fmt.Errorf("pack record at %d (%s %s): %w", at, k, d, unexpected(err))
	}
	pr.left -= recHeader + n
	pr.off += recHeader + n
	return k, d, b, nil
}

// readGrowing appends n bytes from r to buf, growing it at most twofold at a time (from
// 1 MiB) as bytes arrive.
func readGrowing(r io.Reader, buf []byte, n int64) ([]byte, error) {
	for int64(len(buf)) < n {
		if len(buf) == cap(buf) {
			grown := make([]byte, len(buf), len(buf)+int(min(n-int64(len(buf)), max(int64(len(buf)), 1<<20))))
			buf = grown[:copy(grown, buf)]
		}
		end := min(int64(cap(buf)), n)
		k, err := io.ReadFull(r, buf[len(buf):end])
		buf = buf[:len(buf)+k]
		if err != nil {
			return buf, err
		}
	}
	return buf, nil
}

// unexpected: a pack that ends before its size is cut short.
func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
