package format

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"runtime"
	"strings"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Version is the layout version this package writes and reads (the layer annotation's);
// the index payload has versions of its own (IndexVersion1, IndexVersion2).
const Version = 1

// Writer limits.
const (
	// metaFlush is the size at which a run of tar headers is cut into a frame of its own
	// even when no content follows (long runs of directories and empty files).
	metaFlush = 1 << 20
)

// Cutter finds content-defined chunk boundaries: it returns the length of the first
// chunk of data. final says that data is the rest of the file; otherwise data holds at
// least MaxChunk bytes, and the cutter must return at most that.
type Cutter interface {
	Cut(data []byte, final bool) int
	MaxChunk() int
}

// WriterOption configures Write.
type WriterOption func(*writerOptions) error

type writerOptions struct {
	concurrency int
	level       zstd.EncoderLevel
	cutter      Cutter
}

// WithConcurrency sets how many chunks are compressed at once (default: GOMAXPROCS).
func WithConcurrency(n int) WriterOption {
	return func(o *writerOptions) error {
		if n < 1 {
			return errors.New("format: concurrency must be at least 1")
		}
		o.concurrency = n
		return nil
	}
}

// WithLevel sets the zstd level, 1 (fastest) to 22 (best); the default is 3.
func WithLevel(level int) WriterOption {
	return func(o *writerOptions) error {
		if level < 1 || level > 22 {
			return fmt.Errorf("format: zstd level %d: want 1 to 22", level)
		}
		o.level = zstd.EncoderLevelFromZstd(level)
		return nil
	}
}

// WithCutter sets how file content is cut into chunks (default: DefaultCutter).
func WithCutter(c Cutter) WriterOption {
	return func(o *writerOptions) error {
		if c == nil || c.MaxChunk() < 1 || c.MaxChunk() > MaxChunkSize {
			return fmt.Errorf("format: chunk cutter must cut between 1 and %d bytes", MaxChunkSize)
		}
		o.cutter = c
		return nil
	}
}

// segment is a run of tar bytes that becomes one frame.
type segment struct {
	data    []byte
	isChunk bool
	digest  Digest // of data, for chunks
	comp    []byte
	done    chan struct{}
}

// Write reads a tar stream from r and writes it to w as a lazypull layer. The zstd
// frames of the layer decompress to exactly the bytes read from r, so the layer's diff
// ID is that of the input. It reads r to its end.
func Write(ctx context.Context, w io.Writer, r io.Reader, opts ...WriterOption) (*Result, error) {
	o := writerOptions{concurrency: runtime.GOMAXPROCS(0), level: zstd.SpeedDefault, cutter: DefaultCutter}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(o.level), zstd.WithEncoderCRC(false), zstd.WithEncoderConcurrency(o.concurrency), zstd.WithSingleSegment(true))
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	defer enc.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p := &pipeline{ctx: ctx, cancel: cancel, enc: enc, w: w, blobHash: sha256.New(), work: make(chan *segment, o.concurrency*2), order: make(chan *segment, o.concurrency*4)}
	var wg sync.WaitGroup
	for range o.concurrency {
		wg.Go(p.compressLoop)
	}
	writeErr := make(chan error, 1)
	go func() { writeErr <- p.writeLoop() }()

	sc := &scanner{o: &o, p: p, diff: sha256.New()}
	scanErr := sc.run(r)
	close(p.work)
	close(p.order)
	wg.Wait()
	werr := <-writeErr
	if werr != nil {
		return nil, werr
	}
	if scanErr != nil {
		return nil, scanErr
	}

	ix := &sc.ix
	for i := range ix.Frames {
		ix.Frames[i].Size = p.sizes[i]
	}
	if p.runHash != nil {
		p.runs = append(p.runs, Digest(p.runHash.Sum(nil)))
	}
	ix.RunDigests = append(make([]Digest, 0, len(p.runs)), p.runs...)
	payload, err := ix.Encode()
	if err != nil {
		return nil, err
	}
	res := &Result{
		DiffID:      Digest(sc.diff.Sum(nil)).String(),
		TarSize:     sc.tarSize,
		IndexSize:   int64(len(payload)),
		IndexDigest: sum256(payload).String(),
		Entries:     len(ix.Entries),
		Files:       sc.files,
		Chunks:      len(ix.Digests),
	}
	res.IndexOffset = p.written + skippableHeaderLen
	tail := appendSkippable(nil, indexFrameMagic, payload)
	tail = appendFooter(tail, res.IndexOffset, payload)
	if err := p.write(tail); err != nil {
		return nil, err
	}
	res.Size = p.written
	res.Digest = Digest(p.blobHash.Sum(nil)).String()
	return res, nil
}

// pipeline compresses segments in parallel and writes them in order.
type pipeline struct {
	ctx      context.Context
	cancel   context.CancelFunc
	enc      *zstd.Encoder
	w        io.Writer
	work     chan *segment
	order    chan *segment
	blobHash hash.Hash
	written  int64
	sizes    []int64 // compressed size per frame, filled by writeLoop
	// runs holds the digest of each header run's compressed frames, filled by writeLoop;
	// runHash is the run being written, nil between runs.
	runs    []Digest
	runHash hash.Hash
}

func (p *pipeline) submit(s *segment) error {
	// To the compressors first: a segment the writer waits on must be one they will finish.
	s.done = make(chan struct{})
	select {
	case p.work <- s:
	case <-p.ctx.Done():
		return p.ctx.Err()
	}
	select {
	case p.order <- s:
	case <-p.ctx.Done():
		return p.ctx.Err()
	}
	return nil
}

func (p *pipeline) compressLoop() {
	for s := range p.work {
		if s.isChunk {
			s.digest = sha256.Sum256(s.data)
		}
		s.comp = p.enc.EncodeAll(s.data, make([]byte, 0, len(s.data)/2+64))
		close(s.done)
	}
}

func (p *pipeline) writeLoop() error {
	var err error
	for s := range p.order {
		<-s.done
		if err != nil {
			continue // drain, so the scanner never blocks
		}
		p.sizes = append(p.sizes, int64(len(s.comp)))
		switch {
		case !s.isChunk && p.runHash == nil:
			p.runHash = sha256.New()
			fallthrough
		case !s.isChunk:
			p.runHash.Write(s.comp)
		case p.runHash != nil:
			p.runs = append(p.runs, Digest(p.runHash.Sum(nil)))
			p.runHash = nil
		}
		if err = p.write(s.comp); err != nil {
			p.cancel() // stop the scanner; its context error is not the one to report
		}
		s.data, s.comp = nil, nil
	}
	return err
}

func (p *pipeline) write(b []byte) error {
	if _, err := p.w.Write(b); err != nil {
		return fmt.Errorf("write layer: %w", err)
	}
	p.blobHash.Write(b)
	p.written += int64(len(b))
	return nil
}

// scanner walks the tar stream. Every byte it reads from the source goes into exactly one
// segment, in order: header runs (headers, PAX records, padding, the end blocks and
// anything after them) and content chunks.
type scanner struct {
	o       *writerOptions
	p       *pipeline
	ix      Index
	diff    hash.Hash
	tarSize int64
	files   int

	src       io.Reader
	recording bool
	meta      []byte
	chunks    []*segment // submitted chunk segments, to read digests from at the end
}

// Read feeds archive/tar; bytes read outside file content are recorded as header bytes.
func (s *scanner) Read(b []byte) (int, error) {
	n, err := s.src.Read(b)
	if n > 0 {
		s.diff.Write(b[:n])
		s.tarSize += int64(n)
		if s.recording {
			s.meta = append(s.meta, b[:n]...)
		}
	}
	return n, err
}

func (s *scanner) flushMeta() error {
	if len(s.meta) == 0 {
		return nil
	}
	seg := &segment{data: s.meta}
	s.meta = nil
	s.ix.Frames = append(s.ix.Frames, Frame{TarSize: int64(len(seg.data)), ChunkIndex: -1})
	return s.p.submit(seg)
}

func (s *scanner) run(r io.Reader) error {
	s.src = r
	s.recording = true
	tr := tar.NewReader(s)
	buf := make([]byte, 0, s.o.cutter.MaxChunk()*2)
	var singles []int // entries whose single chunk digest is the file digest
	for {
		if err := s.p.ctx.Err(); err != nil {
			return err
		}
		// Header blocks start on 512-byte boundaries of the stream.
		hdrStart := (s.tarSize + 511) &^ 511
		hdr, err := tr.Next()
		if err == io.EOF {
			// archive/tar takes a stream cut inside padding for a clean end.
			if s.tarSize%512 != 0 {
				return fmt.Errorf("tar stream truncated at offset %d, inside a block", s.tarSize)
			}
			break
		}
		if err != nil {
			return fmt.Errorf("read tar entry at offset %d: %w", hdrStart, err)
		}
		e := EntryFromHeader(hdr)
		idx := len(s.ix.Entries)
		switch {
		case isSparse(hdr):
			// The content of a sparse entry is its sparse map and data fragments, not the
			// file's bytes: keep the whole record in header frames and note where it lies.
			e.Sparse = true
			e.Type = typeReg
			h := sha256.New()
			if _, err := io.Copy(h, tr); err != nil {
				return fmt.Errorf("read sparse file %q: %w", hdr.Name, err)
			}
			e.Digest = Digest(h.Sum(nil))
			e.TarOffset = hdrStart
			e.TarLen = s.tarSize - hdrStart
			s.files++
		case e.Type == typeReg && hdr.Size > 0:
			s.files++
			single, err := s.content(tr, hdr, &e, &buf)
			if err != nil {
				return err
			}
			if single {
				singles = append(singles, idx)
			}
		case e.Type == typeReg:
			e.Digest = emptyDigest
		}
		s.ix.Entries = append(s.ix.Entries, e)
		if len(s.meta) >= metaFlush {
			if err := s.flushMeta(); err != nil {
				return err
			}
		}
	}
	// The end-of-archive blocks were recorded; keep anything after them too.
	if _, err := io.Copy(io.Discard, s); err != nil {
		return fmt.Errorf("read tar trailer: %w", err)
	}
	if err := s.flushMeta(); err != nil {
		return err
	}
	// Digests are ready once the compressors are done with each chunk.
	s.ix.Digests = make([]Digest, len(s.chunks))
	for i, seg := range s.chunks {
		select {
		case <-seg.done:
		case <-s.p.ctx.Done():
			return s.p.ctx.Err()
		}
		s.ix.Digests[i] = seg.digest
	}
	for _, i := range singles {
		e := &s.ix.Entries[i]
		e.Digest = s.ix.Digests[s.ix.Frames[e.FirstFrame].ChunkIndex]
	}
	return nil
}

// content cuts the content of the regular file hdr into chunk frames, submitted to the
// compressors in order, and sets e's frames. single says its digest is its only chunk's,
// known once that chunk is compressed; otherwise e.Digest is set. buf is reused across files.
func (s *scanner) content(tr *tar.Reader, hdr *tar.Header, e *Entry, buf *[]byte) (single bool, err error) {
	if err := s.flushMeta(); err != nil {
		return false, err
	}
	s.recording = false
	first := len(s.ix.Frames)
	var fileHash hash.Hash
	remaining := hdr.Size
	b := (*buf)[:0]
	defer func() { *buf = b }()
	for remaining > 0 || len(b) > 0 {
		for remaining > 0 && len(b) < s.o.cutter.MaxChunk() {
			want := min(int64(cap(b)-len(b)), remaining)
			n, err := io.ReadFull(tr, b[len(b):len(b)+int(want)])
			b = b[:len(b)+n]
			remaining -= int64(n)
			if err != nil {
				return false, fmt.Errorf("read content of %q at offset %d: %w", hdr.Name, hdr.Size-remaining, noEOF(err))
			}
		}
		n := s.o.cutter.Cut(b, remaining == 0)
		if n <= 0 || n > len(b) {
			return false, fmt.Errorf("chunk cutter returned %d for %d bytes", n, len(b))
		}
		seg := &segment{data: append([]byte(nil), b[:n]...), isChunk: true}
		if fileHash == nil && (remaining > 0 || n < len(b)) {
			fileHash = sha256.New()
		}
		if fileHash != nil {
			fileHash.Write(seg.data)
		}
		b = b[:copy(b, b[n:])]
		s.ix.Frames = append(s.ix.Frames, Frame{TarSize: int64(n), ChunkIndex: len(s.chunks)})
		s.chunks = append(s.chunks, seg)
		if err := s.p.submit(seg); err != nil {
			return false, err
		}
	}
	s.recording = true
	e.FirstFrame = first
	e.NumFrames = len(s.ix.Frames) - first
	if fileHash == nil {
		return true, nil
	}
	e.Digest = Digest(fileHash.Sum(nil))
	return false, nil
}

// typeRegA is the pre-POSIX typeflag of a regular file.
const typeRegA = '\x00'

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func isSparse(h *tar.Header) bool {
	if h.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// EntryFromHeader returns the entry an index records for a tar header: the name cleaned
// (CleanName), every regular-file typeflag made '0', the xattrs of its PAX records sorted,
// Sparse set for a sparse file. Where the content lies (frames, digest, tar range) is the
// caller's to fill in.
func EntryFromHeader(h *tar.Header) Entry {
	e := entryFromHeader(h)
	if h.Typeflag == tar.TypeReg || h.Typeflag == tar.TypeGNUSparse || h.Typeflag == typeRegA || h.Typeflag == tar.TypeCont {
		e.Type = typeReg
	}
	e.Sparse = isSparse(h)
	if e.Sparse {
		e.Type = typeReg
	}
	return e
}

func entryFromHeader(h *tar.Header) Entry {
	e := Entry{
		Name:     CleanName(h.Name),
		Type:     h.Typeflag,
		Mode:     h.Mode & 0o7777,
		UID:      max(h.Uid, 0),
		GID:      max(h.Gid, 0),
		ModSec:   h.ModTime.Unix(),
		ModNsec:  int32(h.ModTime.Nanosecond()),
		Devmajor: max(h.Devmajor, 0),
		Devminor: max(h.Devminor, 0),
	}
	switch h.Typeflag {
	case tar.TypeSymlink:
		e.Linkname = h.Linkname
	case tar.TypeLink:
		e.Linkname = CleanName(h.Linkname)
	}
	if h.Typeflag == tar.TypeReg || h.Typeflag == typeRegA || h.Typeflag == tar.TypeGNUSparse {
		e.Size = h.Size
	}
	for k, v := range h.PAXRecords {
		if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			e.Xattrs = append(e.Xattrs, Xattr{Name: name, Value: v})
		}
	}
	sortXattrs(e.Xattrs)
	return e
}

func sortXattrs(x []Xattr) {
	for i := 1; i < len(x); i++ {
		for j := i; j > 0 && x[j].Name < x[j-1].Name; j-- {
			x[j], x[j-1] = x[j-1], x[j]
		}
	}
}

// Skippable frames carry the index and the footer (zstd format, RFC 8878 section 3.1.2).
const (
	indexFrameMagic    = 0x184D2A5D
	footerFrameMagic   = 0x184D2A5E
	skippableHeaderLen = 8
	footerMagic        = "LZPFOOTR"
	footerPayloadLen   = 8 + 8 + 8 + 32
	// FooterSize is the size of the footer frame that ends every lazypull layer.
	FooterSize = skippableHeaderLen + footerPayloadLen
)

func appendSkippable(b []byte, magic uint32, payload []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, magic)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

func appendFooter(b []byte, indexOffset int64, payload []byte) []byte {
	f := make([]byte, 0, footerPayloadLen)
	f = append(f, footerMagic...)
	f = binary.LittleEndian.AppendUint64(f, uint64(indexOffset))
	f = binary.LittleEndian.AppendUint64(f, uint64(len(payload)))
	d := sum256(payload)
	f = append(f, d[:]...)
	return appendSkippable(b, footerFrameMagic, f)
}
