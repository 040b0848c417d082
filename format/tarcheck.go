package format

import (
	"archive/tar"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"
)

// A layer describes its tree twice: in the tar stream (what an unpacking runtime, a scanner
// or a signature policy sees) and in the index (what a lazy mount serves). The index digest
// only proves that the manifest's author wrote this index, not that it describes this tar.
// The functions here check one against the other, a header run at a time, so that a reader
// can check the entries it is about to serve without reading the layer whole.

// HeaderRun is a run of consecutive header frames and the entries whose tar headers it
// holds. Every header frame belongs to exactly one run: the frames between the end of one
// file's content frames and the start of the next one's (or the end of the stream).
type HeaderRun struct {
	// Header frames: Index.Frames[FirstFrame:EndFrame].
	FirstFrame, EndFrame int
	// Entries: Index.Entries[FirstEntry:EndEntry], in tar order.
	FirstEntry, EndEntry int
	// Content: the run's last entry is a regular file whose content frames start at
	// EndFrame, right after its header; otherwise the run ends the stream.
	Content bool
}

// TarOffset is where the run's bytes begin in the tar stream, TarSize how many there are.
func (r HeaderRun) TarOffset(ix *Index) int64 { return ix.Frames[r.FirstFrame].TarOffset }

// TarSize is the length of the run's bytes in the tar stream.
func (r HeaderRun) TarSize(ix *Index) int64 {
	last := ix.Frames[r.EndFrame-1]
	return last.TarOffset + last.TarSize - ix.Frames[r.FirstFrame].TarOffset
}

// HeaderRuns splits the index into header runs; runOf[i] is the run of entry i. It fails
// when the frames cannot be those of a tar stream the index describes: a chunk frame that
// no entry owns, a file's content with no header frame before it, no frames at all.
func (ix *Index) HeaderRuns() (runs []HeaderRun, runOf []int32, err error) {
	runOf = make([]int32, len(ix.Entries))
	frame, entry := 0, 0
	for i := range ix.Entries {
		e := &ix.Entries[i]
		if e.NumFrames == 0 {
			continue
		}
		r := HeaderRun{FirstFrame: frame, EndFrame: e.FirstFrame, FirstEntry: entry, EndEntry: i + 1, Content: true}
		if err := ix.checkHeaderFrames(r); err != nil {
			return nil, nil, fmt.Errorf("entry %q: %w", e.Name, err)
		}
		for j := r.FirstEntry; j < r.EndEntry; j++ {
			runOf[j] = int32(len(runs))
		}
		runs = append(runs, r)
		frame, entry = e.FirstFrame+e.NumFrames, i+1
	}
	r := HeaderRun{FirstFrame: frame, EndFrame: len(ix.Frames), FirstEntry: entry, EndEntry: len(ix.Entries)}
	if r.FirstFrame == r.EndFrame && r.FirstEntry == r.EndEntry {
		// An empty stream, or one that ends with a file's content (archive/tar takes a
		// stream without end-of-archive blocks): no run after the last file.
		return runs, runOf, nil
	}
	if err := ix.checkHeaderFrames(r); err != nil {
		return nil, nil, fmt.Errorf("end of the stream: %w", err)
	}
	for j := r.FirstEntry; j < r.EndEntry; j++ {
		runOf[j] = int32(len(runs))
	}
	runs = append(runs, r)
	return runs, runOf, nil
}

func (ix *Index) checkHeaderFrames(r HeaderRun) error {
	if r.EndFrame <= r.FirstFrame || r.EndFrame > len(ix.Frames) {
		return errors.New("no header frame before it in the stream")
	}
	for f := r.FirstFrame; f < r.EndFrame; f++ {
		if ix.Frames[f].ChunkIndex >= 0 {
			return fmt.Errorf("frame %d is a chunk frame no entry owns", f)
		}
	}
	return nil
}

// MismatchError says that an entry of the index does not describe the tar stream.
type MismatchError struct {
	Entry string // the index entry's name (or, for a tar entry the index lacks, the tar's)
	Field string // name, type, mode, uid, gid, mtime, size, link, device, xattrs, sparse, digest, content, entry
	Index string // what the index says
	Tar   string // what the tar stream says
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("index entry %q does not match the tar stream: %s: index says %s, tar says %s", e.Entry, e.Field, e.Index, e.Tar)
}

// CheckRun checks the entries of run r against the tar headers in data, the run's bytes
// decompressed (HeaderRun.TarSize of them, read from data, which may be a stream): every
// entry the index lists there must be the next header of the stream with the same name,
// type, mode, owner, mtime, size, link target, device numbers and xattrs, a sparse entry
// must have its record where the index says and the digest of its content, and a run that
// ends in a file's content must end exactly where that file's header does (so the content
// frames the entry names are the ones that follow it in the stream). A run that ends the
// stream must end the archive after its last entry. The error is a *MismatchError when
// the index and the tar disagree.
func (ix *Index) CheckRun(r HeaderRun, data io.Reader) error {
	base := r.TarOffset(ix)
	size := r.TarSize(ix)
	// What lr has left says where the run is: archive/tar reads exactly the blocks an
	// entry needs, so after Next, read() is where the entry's content begins.
	lr := &io.LimitedReader{R: data, N: size}
	read := func() int64 { return size - lr.N }
	// The run starts where the previous file's content ended: its padding comes first.
	if pad := (512 - base%512) % 512; pad > 0 {
		if _, err := io.CopyN(io.Discard, lr, pad); err != nil {
			return fmt.Errorf("tar padding at %d: %w", base, noEOF(err))
		}
	}
	tr := tar.NewReader(lr)
	for i := r.FirstEntry; i < r.EndEntry; i++ {
		e := &ix.Entries[i]
		hdrStart := (base + read() + 511) &^ 511
		hdr, err := tr.Next()
		if err == io.EOF {
			return &MismatchError{Entry: e.Name, Field: "entry", Index: "an entry", Tar: fmt.Sprintf("the end of the archive at %d", hdrStart)}
		}
		if err != nil {
			return fmt.Errorf("entry %q: tar header at %d: %w", e.Name, hdrStart, err)
		}
		want := entryFromHeader(hdr)
		if hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeGNUSparse || hdr.Typeflag == typeRegA || hdr.Typeflag == tar.TypeCont {
			want.Type = typeReg
		}
		last := i == r.EndEntry-1
		switch {
		case isSparse(hdr):
			want.Sparse, want.Type = true, typeReg
			h := sha256.New()
			if _, err := io.Copy(h, tr); err != nil {
				return fmt.Errorf("entry %q: sparse record at %d: %w", e.Name, hdrStart, err)
			}
			want.Digest = Digest(h.Sum(nil))
			want.TarOffset, want.TarLen = hdrStart, base+read()-hdrStart
		case want.Type == typeReg && hdr.Size > 0:
			if !last || !r.Content {
				return &MismatchError{Entry: e.Name, Field: "content", Index: "no content frames", Tar: fmt.Sprintf("%d bytes of content at %d", hdr.Size, base+read())}
			}
			if read() != size {
				return &MismatchError{Entry: e.Name, Field: "content", Index: fmt.Sprintf("content frames at %d", base+size), Tar: fmt.Sprintf("content at %d", base+read())}
			}
		case want.Type == typeReg:
			want.Digest = emptyDigest
		}
		if last && r.Content && !(want.Type == typeReg && !want.Sparse && hdr.Size > 0) {
			return &MismatchError{Entry: e.Name, Field: "content", Index: fmt.Sprintf("%d content frames", e.NumFrames), Tar: fmt.Sprintf("a %s entry without content", typeName(hdr.Typeflag))}
		}
		if err := compareEntry(e, &want); err != nil {
			return err
		}
	}
	if r.Content {
		return nil
	}
	hdr, err := tr.Next()
	switch {
	case err == io.EOF:
		return nil
	case err != nil:
		return fmt.Errorf("tar header at %d: %w", (base+read()+511)&^511, err)
	default:
		return &MismatchError{Entry: CleanName(hdr.Name), Field: "entry", Index: "no such entry", Tar: "an entry"}
	}
}

// compareEntry compares what the index says of an entry with what the writer would have
// said from its tar header (want). Fields the index does not keep for a type (a sparse
// record's place, a file digest carried by its chunks) are compared where it keeps them.
func compareEntry(e, want *Entry) error {
	mis := func(field string, idx, tar any) error {
		return &MismatchError{Entry: e.Name, Field: field, Index: fmt.Sprintf("%q", fmt.Sprint(idx)), Tar: fmt.Sprintf("%q", fmt.Sprint(tar))}
	}
	switch {
	case e.Name != want.Name:
		return mis("name", e.Name, want.Name)
	case e.Type != want.Type:
		return mis("type", typeName(e.Type), typeName(want.Type))
	case e.Mode != want.Mode:
		return mis("mode", fmt.Sprintf("%#o", e.Mode), fmt.Sprintf("%#o", want.Mode))
	case e.UID != want.UID:
		return mis("uid", e.UID, want.UID)
	case e.GID != want.GID:
		return mis("gid", e.GID, want.GID)
	case e.ModSec != want.ModSec || e.ModNsec != want.ModNsec:
		return mis("mtime", fmt.Sprintf("%d.%09d", e.ModSec, e.ModNsec), fmt.Sprintf("%d.%09d", want.ModSec, want.ModNsec))
	case e.Size != want.Size:
		return mis("size", e.Size, want.Size)
	case e.Linkname != want.Linkname:
		return mis("link", e.Linkname, want.Linkname)
	case e.Devmajor != want.Devmajor || e.Devminor != want.Devminor:
		return mis("device", fmt.Sprintf("%d,%d", e.Devmajor, e.Devminor), fmt.Sprintf("%d,%d", want.Devmajor, want.Devminor))
	case !slices.Equal(e.Xattrs, want.Xattrs):
		return mis("xattrs", xattrNames(e.Xattrs), xattrNames(want.Xattrs))
	case e.Sparse != want.Sparse:
		return mis("sparse", e.Sparse, want.Sparse)
	case want.Sparse && (e.TarOffset != want.TarOffset || e.TarLen != want.TarLen):
		return mis("sparse record", fmt.Sprintf("%d+%d", e.TarOffset, e.TarLen), fmt.Sprintf("%d+%d", want.TarOffset, want.TarLen))
	case (want.Sparse || want.Type == typeReg && want.Size == 0) && e.Digest != want.Digest:
		return mis("digest", e.Digest, want.Digest)
	case e.NumFrames > 0 && want.Size == 0:
		return mis("content", fmt.Sprintf("%d frames", e.NumFrames), "none")
	}
	return nil
}

// xattrNames lists xattrs for a message: names and value lengths, not the values.
func xattrNames(x []Xattr) string {
	s := "["
	for i, a := range x {
		if i > 0 {
			s += " "
		}
		s += fmt.Sprintf("%s(%d)", a.Name, len(a.Value))
	}
	return s + "]"
}

func typeName(t byte) string {
	switch t {
	case typeReg, typeRegA:
		return "file"
	case typeLink:
		return "hard link"
	case typeSymlink:
		return "symlink"
	case typeChar:
		return "char device"
	case typeBlock:
		return "block device"
	case typeDir:
		return "directory"
	case typeFifo:
		return "fifo"
	}
	return fmt.Sprintf("type %q", t)
}

// HeaderRunBytes returns the decompressed bytes of run r, given its compressed header
// frames fr (Index.Frames[r.FirstFrame:r.EndFrame], in order): each must decompress to its
// frame's size. It is what CheckRun reads when the frames were fetched together.
func (ix *Index) HeaderRunBytes(r HeaderRun, fr [][]byte) ([]byte, error) {
	if len(fr) != r.EndFrame-r.FirstFrame {
		return nil, fmt.Errorf("header run: %d frames, want %d", len(fr), r.EndFrame-r.FirstFrame)
	}
	var out []byte
	for k, b := range fr {
		f := ix.Frames[r.FirstFrame+k]
		d, err := DecodeFrame(nil, b, f.TarSize)
		if err != nil {
			return nil, fmt.Errorf("header frame %d at %d: %w", r.FirstFrame+k, f.Offset, err)
		}
		if out == nil {
			out = d
		} else {
			out = append(out, d...)
		}
	}
	return out, nil
}

// maxFrameSize bounds the compressed size of a frame VerifyLayer reads: zstd's worst case
// for MaxChunkSize bytes, with room to spare.
const maxFrameSize = MaxChunkSize + MaxChunkSize/64 + 4096

// LayerCheck is what VerifyLayer found of a layer blob.
type LayerCheck struct {
	Blob    Digest // sha256 of the whole blob as read
	DiffID  Digest // sha256 of the uncompressed tar stream
	Entries int    // entries checked against their tar headers
	Chunks  int    // chunk frames checked against their digests
	Runs    int    // header runs checked against their digests (a version 2 index)
}

// VerifyLayer reads a whole layer blob from r, from its first byte to its last, and checks
// the index against it as it streams: every frame the index lists decompresses to its size,
// every chunk to its digest, every entry's tar header to what the index says of it
// (CheckRun), and the frames end where the index frame begins (indexOffset is the index
// payload's offset, as in the annotations). It returns the blob's digest and the tar's
// (the diff ID), for the caller to compare with the manifest and the config. It holds one
// frame at a time.
func VerifyLayer(r io.Reader, ix *Index, indexOffset int64) (LayerCheck, error) {
	var res LayerCheck
	runs, _, err := ix.HeaderRuns()
	if err != nil {
		return res, fmt.Errorf("index: %w", err)
	}
	bh, dh := sha256.New(), sha256.New()
	src := io.TeeReader(r, bh)
	var comp []byte
	read := func(k int) ([]byte, error) {
		f := ix.Frames[k]
		if f.Size > maxFrameSize || f.Size < 0 {
			return nil, fmt.Errorf("frame %d at %d: %d bytes compressed, over the limit", k, f.Offset, f.Size)
		}
		if int64(cap(comp)) < f.Size {
			comp = make([]byte, f.Size)
		}
		comp = comp[:f.Size]
		if _, err := io.ReadFull(src, comp); err != nil {
			return nil, fmt.Errorf("frame %d at %d: %w", k, f.Offset, noEOF(err))
		}
		return comp, nil
	}
	var buf []byte
	for i, run := range runs {
		// A version 2 index gives each run a digest of its compressed frames: hashed as
		// they are read, checked once the run is.
		var runHash hash.Hash
		readRun := read
		if ix.RunDigests != nil {
			runHash = sha256.New()
			readRun = func(k int) ([]byte, error) {
				b, err := read(k)
				runHash.Write(b)
				return b, err
			}
		}
		rr := &runReader{ix: ix, next: run.FirstFrame, end: run.EndFrame, read: readRun, out: dh}
		if err := ix.CheckRun(run, rr); err != nil {
			return res, err
		}
		if _, err := io.Copy(io.Discard, rr); err != nil {
			return res, err
		}
		if runHash != nil {
			if got := Digest(runHash.Sum(nil)); got != ix.RunDigests[i] {
				e := &RunDigestError{Run: i, Index: ix.RunDigests[i], Got: got}
				if run.EndEntry > run.FirstEntry {
					e.Entry = ix.Entries[run.EndEntry-1].Name
				}
				return res, e
			}
			res.Runs++
		}
		res.Entries += run.EndEntry - run.FirstEntry
		if !run.Content {
			continue
		}
		e := &ix.Entries[run.EndEntry-1]
		for i, c := range ix.Chunks(e) {
			b, err := read(e.FirstFrame + i)
			if err != nil {
				return res, err
			}
			if buf, err = c.Decode(buf, b); err != nil {
				return res, fmt.Errorf("entry %q: %w", e.Name, err)
			}
			dh.Write(buf)
			res.Chunks++
		}
	}
	var end int64
	if n := len(ix.Frames); n > 0 {
		end = ix.Frames[n-1].Offset + ix.Frames[n-1].Size
	}
	if end+skippableHeaderLen != indexOffset {
		return res, fmt.Errorf("the frames end at %d, the index frame begins at %d", end, indexOffset-skippableHeaderLen)
	}
	if _, err := io.Copy(io.Discard, src); err != nil {
		return res, fmt.Errorf("read the index and footer: %w", err)
	}
	res.Blob, res.DiffID = Digest(bh.Sum(nil)), Digest(dh.Sum(nil))
	return res, nil
}

// runReader yields the decompressed bytes of header frames next..end-1, reading each
// frame when the last one is used up, and writes them to out as they are read.
type runReader struct {
	ix        *Index
	next, end int
	read      func(k int) ([]byte, error)
	out       io.Writer
	cur       []byte
	spare     []byte
}

func (r *runReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if r.next >= r.end {
			return 0, io.EOF
		}
		b, err := r.read(r.next)
		if err != nil {
			return 0, err
		}
		f := r.ix.Frames[r.next]
		d, err := DecodeFrame(r.spare, b, f.TarSize)
		if err != nil {
			return 0, fmt.Errorf("header frame %d at %d: %w", r.next, f.Offset, err)
		}
		r.out.Write(d)
		r.cur, r.spare = d, d
		r.next++
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

// CheckRunFrames is CheckRun on the run's compressed header frames fr
// (Index.Frames[r.FirstFrame:r.EndFrame], in order), decompressed one at a time, so that
// it holds one frame's bytes, not the run's. Every decompressed byte of the run is written
// to out (nil: discarded), those CheckRun did not need included.
func (ix *Index) CheckRunFrames(r HeaderRun, fr [][]byte, out io.Writer) error {
	if len(fr) != r.EndFrame-r.FirstFrame {
		return fmt.Errorf("header run: %d frames, want %d", len(fr), r.EndFrame-r.FirstFrame)
	}
	if out == nil {
		out = io.Discard
	}
	rr := &runReader{ix: ix, next: r.FirstFrame, end: r.EndFrame, out: out,
		read: func(k int) ([]byte, error) { return fr[k-r.FirstFrame], nil }}
	err := ix.CheckRun(r, rr)
	if _, derr := io.Copy(io.Discard, rr); err == nil {
		err = derr
	}
	return err
}

// RunDigestError says that the compressed bytes given for a header run are not those its
// digest in the index (Index.RunDigests) names: the registry or a pack sent other bytes
// than the blob's, or the index does not describe the blob.
type RunDigestError struct {
	Run   int    // the run's number, in blob order
	Entry string // the run's last entry (the file its frames precede), "" for none
	Index Digest // what the index says
	Got   Digest // the digest of the bytes given
}

func (e *RunDigestError) Error() string {
	return fmt.Sprintf("header run %d (up to entry %q): its frames have digest %s, the index says %s", e.Run, e.Entry, e.Got, e.Index)
}

// CheckRunDigest checks the compressed frames fr of run i (HeaderRuns()[i], r; the frames
// Index.Frames[r.FirstFrame:r.EndFrame], in order, as the blob holds them) against the
// run's digest. A version 1 index has no run digests: it returns nil. The error is a
// *RunDigestError when the bytes are not the run's.
func (ix *Index) CheckRunDigest(i int, r HeaderRun, fr [][]byte) error {
	if ix.RunDigests == nil {
		return nil
	}
	if i < 0 || i >= len(ix.RunDigests) {
		return fmt.Errorf("header run %d: the index has %d run digests", i, len(ix.RunDigests))
	}
	if len(fr) != r.EndFrame-r.FirstFrame {
		return fmt.Errorf("header run %d: %d frames, want %d", i, len(fr), r.EndFrame-r.FirstFrame)
	}
	h := sha256.New()
	for _, b := range fr {
		h.Write(b)
	}
	if got := Digest(h.Sum(nil)); got != ix.RunDigests[i] {
		e := &RunDigestError{Run: i, Index: ix.RunDigests[i], Got: got}
		if r.EndEntry > r.FirstEntry {
			e.Entry = ix.Entries[r.EndEntry-1].Name
		}
		return e
	}
	return nil
}

// CompSize is the compressed size of run r's frames in the blob: the bytes its digest
// covers.
func (r HeaderRun) CompSize(ix *Index) int64 {
	last := ix.Frames[r.EndFrame-1]
	return last.Offset + last.Size - ix.Frames[r.FirstFrame].Offset
}

// SplitRun cuts b, the compressed frames of run r as they lie in the blob, into its frames.
func (ix *Index) SplitRun(r HeaderRun, b []byte) ([][]byte, error) {
	if int64(len(b)) != r.CompSize(ix) {
		return nil, fmt.Errorf("header run: %d bytes, its frames take %d", len(b), r.CompSize(ix))
	}
	fr := make([][]byte, 0, r.EndFrame-r.FirstFrame)
	for k := r.FirstFrame; k < r.EndFrame; k++ {
		n := ix.Frames[k].Size
		fr = append(fr, b[:n:n])
		b = b[n:]
	}
	return fr, nil
}
