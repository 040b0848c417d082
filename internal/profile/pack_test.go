package profile

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"lazypull/format"
	"lazypull/internal/testutil"
)

// packRec is one record of a pack, as a test writes or reads it.
type packRec struct {
	kind RecordKind
	d    format.Digest
	b    []byte
}

func recDigest(b []byte) format.Digest { return sha256.Sum256(b) }

// samplePack returns records as a profile's pack holds them: indexes first, then chunk
// frames of sizes either side of the reader's buffer, one of them empty.
func samplePack() []packRec {
	var recs []packRec
	for i, n := range []int{300, 70 << 10, 1} {
		b := testutil.RandBytes(uint64(i), n)
		recs = append(recs, packRec{RecordIndex, recDigest(b), b})
	}
	for i, n := range []int{4096, 0, 200 << 10, 64 << 10, 17} {
		b := testutil.RandBytes(uint64(100+i), n)
		recs = append(recs, packRec{RecordChunk, recDigest(b), b})
	}
	return recs
}

// writePack writes recs with a PackWriter.
func writePack(t testing.TB, recs []packRec) []byte {
	t.Helper()
	var buf bytes.Buffer
	pw := NewPackWriter(&buf)
	writeRecs(t, pw, recs)
	if pw.Size() != int64(buf.Len()) {
		t.Fatalf("writer says %d bytes, wrote %d", pw.Size(), buf.Len())
	}
	return buf.Bytes()
}

// writeRecs writes recs with pw, each by its kind's method.
func writeRecs(t testing.TB, pw *PackWriter, recs []packRec) {
	t.Helper()
	for _, r := range recs {
		var err error
		switch r.kind {
		case RecordIndex:
			err = pw.Index(r.d, r.b)
		case RecordChunk:
			err = pw.Chunk(r.d, r.b)
		case RecordRun:
			err = pw.Run(r.d, r.b)
		default:
			t.Fatalf("record kind %d", r.kind)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// readPack reads a pack to its end or its first error, copying each record's bytes.
func readPack(r io.Reader, size int64) ([]packRec, error) {
	pr, err := NewPackReader(r, size)
	if err != nil {
		return nil, err
	}
	var recs []packRec
	for {
		k, d, b, err := pr.Next()
		if err != nil {
			return recs, err
		}
		recs = append(recs, packRec{k, d, bytes.Clone(b)})
	}
}

func sameRecs(t *testing.T, got, want []packRec) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d records, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.kind != w.kind || g.d != w.d || !bytes.Equal(g.b, w.b) {
			t.Errorf("record %d: %s %s of %d bytes, want %s %s of %d bytes", i, g.kind, g.d, len(g.b), w.kind, w.d, len(w.b))
		}
	}
}

func TestPackRoundTrip(t *testing.T) {
	recs := samplePack()
	data := writePack(t, recs)
	want := packHeader
	for _, r := range recs {
		want += recHeader + len(r.b)
	}
	if len(data) != want {
		t.Fatalf("pack of %d bytes, want %d", len(data), want)
	}
	readers := map[string]func() io.Reader{
		"whole":    func() io.Reader { return bytes.NewReader(data) },
		"one byte": func() io.Reader { return iotest.OneByteReader(bytes.NewReader(data)) },
		"half":     func() io.Reader { return iotest.HalfReader(bytes.NewReader(data)) },
		// More bytes than the pack's size: the reader stops at the size.
		"trailing": func() io.Reader { return io.MultiReader(bytes.NewReader(data), strings.NewReader("garbage")) },
	}
	for name, r := range readers {
		t.Run(name, func(t *testing.T) {
			pr, err := NewPackReader(r(), int64(len(data)))
			if err != nil {
				t.Fatal(err)
			}
			var got []packRec
			for {
				k, d, b, err := pr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("record %d: %v", len(got), err)
				}
				got = append(got, packRec{k, d, bytes.Clone(b)})
			}
			sameRecs(t, got, recs)
			if _, _, b, err := pr.Next(); err != io.EOF || b != nil {
				t.Fatalf("Next after the end: %d bytes, %v", len(b), err)
			}
		})
	}
}

func TestPackEmpty(t *testing.T) {
	var buf bytes.Buffer
	pw := NewPackWriter(&buf)
	if pw.Size() != int64(packHeader) || buf.String() != "LZPPACK\x00\x00\x01" {
		t.Fatalf("empty pack %q, size %d", buf.Bytes(), pw.Size())
	}
	pr, err := NewPackReader(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if k, _, b, err := pr.Next(); err != io.EOF || k != 0 || b != nil {
			t.Fatalf("Next: %s, %d bytes, %v; want io.EOF", k, len(b), err)
		}
	}
}

func TestPackWriterOrder(t *testing.T) {
	var buf bytes.Buffer
	pw := NewPackWriter(&buf)
	ix := []byte("index")
	if err := pw.Index(recDigest(ix), ix); err != nil {
		t.Fatal(err)
	}
	frame := []byte("frame")
	if err := pw.Chunk(recDigest(frame), frame); err != nil {
		t.Fatal(err)
	}
	n := buf.Len()
	if err := pw.Index(recDigest(ix), ix); err == nil {
		t.Fatal("an index after a chunk was written")
	}
	if buf.Len() != n || pw.Size() != int64(n) {
		t.Fatalf("the refused record wrote %d bytes", buf.Len()-n)
	}
	// The writer goes on with chunks, and the pack reads as two records.
	if err := pw.Chunk(recDigest(frame), frame); err != nil {
		t.Fatal(err)
	}
	got, err := readPack(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != io.EOF {
		t.Fatal(err)
	}
	sameRecs(t, got, []packRec{{RecordIndex, recDigest(ix), ix}, {RecordChunk, recDigest(frame), frame}, {RecordChunk, recDigest(frame), frame}})
}

func TestPackWriterLimits(t *testing.T) {
	t.Run("pack size", func(t *testing.T) {
		var buf bytes.Buffer
		pw := NewPackWriter(&buf)
		// As if the pack held MaxPack-100 bytes already, without writing them.
		pw.n = MaxPack - 100
		if err := pw.Chunk(format.Digest{1}, make([]byte, 100-recHeader+1)); err == nil || !strings.Contains(err.Error(), "more than") {
			t.Fatalf("a record past MaxPack: %v", err)
		}
		if err := pw.Index(format.Digest{1}, make([]byte, 100-recHeader+1)); err == nil {
			t.Fatal("an index record past MaxPack was written")
		}
		if buf.Len() != packHeader {
			t.Fatalf("refused records wrote %d bytes", buf.Len()-packHeader)
		}
		if err := pw.Chunk(format.Digest{1}, make([]byte, 100-recHeader)); err != nil {
			t.Fatalf("a record up to MaxPack: %v", err)
		}
		if pw.Size() != MaxPack {
			t.Fatalf("size %d", pw.Size())
		}
	})
	t.Run("frame size", func(t *testing.T) {
		// 72 MiB, never touched: the allocation costs address space, not memory. The
		// index bound (format.MaxIndexSize, 64 MiB) is left untested for the same cost; the reader's side of both is tested without allocating.
		if testing.Short() {
			t.Skip("allocates 72 MiB")
		}
		var buf bytes.Buffer
		pw := NewPackWriter(&buf)
		if err := pw.Chunk(format.Digest{2}, make([]byte, maxFrame+1)); err == nil {
			t.Fatal("an oversized frame was written")
		}
		if buf.Len() != packHeader {
			t.Fatalf("a refused frame wrote %d bytes", buf.Len()-packHeader)
		}
	})
}

// failWriter fails every write after the first n bytes.
type failWriter struct{ n int }

var errDisk = errors.New("disk full")

func (w *failWriter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		n := w.n
		w.n = 0
		return n, errDisk
	}
	w.n -= len(p)
	return len(p), nil
}

func TestPackWriterError(t *testing.T) {
	pw := NewPackWriter(&failWriter{n: packHeader + recHeader + 3})
	if err := pw.Index(format.Digest{}, []byte("abc")); err != nil {
		t.Fatal(err)
	}
	if err := pw.Chunk(format.Digest{}, []byte("def")); !errors.Is(err, errDisk) {
		t.Fatalf("Chunk: %v, want the writer's error", err)
	}
	if err := pw.Chunk(format.Digest{}, []byte("ghi")); !errors.Is(err, errDisk) {
		t.Fatalf("Chunk after a failed write: %v", err)
	}
	if pw.Size() != int64(packHeader+recHeader+3) {
		t.Fatalf("size %d counts bytes not written", pw.Size())
	}
}

// recHdr returns a record header.
func recHdr(k byte, d format.Digest, n uint32) []byte {
	b := make([]byte, recHeader)
	b[0] = k
	copy(b[1:], d[:])
	binary.BigEndian.PutUint32(b[33:], n)
	return b
}

func cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

func TestPackReaderErrors(t *testing.T) {
	recs := samplePack()[:4] // three indexes and a chunk
	good := writePack(t, recs)
	hdr := good[:packHeader]
	var offs []int // offset of each record, and of the end
	off := packHeader
	for _, r := range recs {
		offs = append(offs, off)
		off += recHeader + len(r.b)
	}
	offs = append(offs, off)
	last := offs[len(recs)-1]

	for _, c := range []struct {
		name string
		data []byte // what the reader gives
		size int64  // the pack's size, len(data) if 0
		open bool   // NewPackReader fails
		recs int    // records read before the error
		want error
		msg  string // in the error
	}{
		{name: "bad magic", data: cat([]byte("LZPPACK\x01\x00\x01"), good[packHeader:]), open: true, want: ErrBadPack, msg: "magic"},
		{name: "not a pack", data: []byte("{\"mediaType\": \"x\"}"), open: true, want: ErrBadPack, msg: "magic"},
		{name: "version 0", data: cat([]byte("LZPPACK\x00\x00\x00"), good[packHeader:]), open: true, want: ErrBadPack, msg: "version 0"},
		{name: "version 3", data: cat([]byte("LZPPACK\x00\x00\x03"), good[packHeader:]), open: true, want: ErrBadPack, msg: "version 3"},
		{name: "size below the header", data: hdr[:packHeader-1], open: true, want: ErrBadPack, msg: "9 bytes"},
		{name: "size zero", data: good, size: -1, open: true, want: ErrBadPack},
		{name: "size above MaxPack", data: good, size: MaxPack + 1, open: true, want: ErrBadPack, msg: fmt.Sprint(MaxPack + 1)},
		{name: "header cut short", data: hdr[:5], size: int64(packHeader), open: true, want: io.ErrUnexpectedEOF, msg: "header"},
		{name: "nothing at all", data: nil, size: int64(len(good)), open: true, want: io.ErrUnexpectedEOF},
		{name: "kind 0", data: cat(good, recHdr(0, format.Digest{}, 0)), recs: 4, want: ErrBadPack, msg: fmt.Sprintf("at %d: kind 0", offs[4])},
		{name: "kind 3", data: cat(good[:offs[1]], recHdr(3, format.Digest{}, 1), []byte{0}, good[offs[1]:]), recs: 1,
			want: ErrBadPack, msg: fmt.Sprintf("at %d: kind 3", offs[1])},
		{name: "length past the size", data: cat(good, recHdr(2, format.Digest{9}, 11), make([]byte, 10)), recs: 4,
			want: ErrBadPack, msg: fmt.Sprintf("at %d (chunk %s): 11 bytes", offs[4], format.Digest{9})},
		{name: "size cuts the last record", data: good, size: int64(len(good) - 1), recs: 3, want: ErrBadPack, msg: fmt.Sprintf("at %d", last)},
		// A length past what is allowed is refused before anything is read for it (or
		// allocated): the stream has no more than the record header.
		{name: "index too long", data: cat(hdr, recHdr(1, format.Digest{}, format.MaxIndexSize+1)), size: MaxPack,
			want: ErrBadPack, msg: fmt.Sprintf("at %d (index", packHeader)},
		{name: "frame too long", data: cat(hdr, recHdr(2, format.Digest{}, maxFrame+1)), size: MaxPack,
			want: ErrBadPack, msg: fmt.Sprintf("at %d (chunk", packHeader)},
		{name: "length past 32 bits", data: cat(hdr, recHdr(2, format.Digest{}, 1<<32-1)), size: MaxPack, want: ErrBadPack},
		{name: "cut in a record", data: good[:len(good)-5], size: int64(len(good)), recs: 3, want: io.ErrUnexpectedEOF, msg: fmt.Sprintf("at %d (chunk", last)},
		{name: "cut in a record header", data: good[:last+10], size: int64(len(good)), recs: 3, want: io.ErrUnexpectedEOF, msg: fmt.Sprintf("at %d:", last)},
		{name: "cut between records", data: good[:last], size: int64(len(good)), recs: 3, want: io.ErrUnexpectedEOF, msg: fmt.Sprintf("at %d:", last)},
		{name: "trailing partial header", data: cat(good, recHdr(1, format.Digest{}, 0)[:recHeader-1]), recs: 4,
			want: ErrBadPack, msg: fmt.Sprintf("at %d: %d bytes left", offs[4], recHeader-1)},
		{name: "trailing byte", data: cat(good, []byte{1}), recs: 4, want: ErrBadPack, msg: fmt.Sprintf("at %d: 1 bytes left", offs[4])},
	} {
		t.Run(c.name, func(t *testing.T) {
			size := c.size
			switch size {
			case 0:
				size = int64(len(c.data))
			case -1:
				size = 0
			}
			pr, err := NewPackReader(bytes.NewReader(c.data), size)
			if c.open {
				if pr != nil || !errors.Is(err, c.want) || !strings.Contains(fmt.Sprint(err), c.msg) {
					t.Fatalf("NewPackReader: %v; want %v naming %q", err, c.want, c.msg)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewPackReader: %v", err)
			}
			var got []packRec
			for {
				k, d, b, err := pr.Next()
				if err == nil {
					got = append(got, packRec{k, d, bytes.Clone(b)})
					continue
				}
				if err == io.EOF || !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
					t.Fatalf("after %d records: %v; want %v naming %q", len(got), err, c.want, c.msg)
				}
				sameRecs(t, got, recs[:c.recs])
				// The error sticks.
				for range 2 {
					if k, _, b, again := pr.Next(); again != err || k != 0 || b != nil {
						t.Fatalf("Next after %v: %s, %d bytes, %v", err, k, len(b), again)
					}
				}
				if cap(pr.buf) > len(c.data) {
					t.Fatalf("allocated %d bytes for a record, of %d given", cap(pr.buf), len(c.data))
				}
				return
			}
		})
	}
}

// TestPackReaderClaims: a record's length is a claim; a pack that declares 1 GiB and a
// 200 MiB index record, then ends, made the reader allocate the 200 MiB. Now what it
// allocates grows with the bytes that arrive (and a record is at most format.MaxIndexSize,
// 64 MiB: this one claims as much).
func TestPackReaderClaims(t *testing.T) {
	data := cat([]byte("LZPPACK\x00\x00\x01"), recHdr(1, format.Digest{}, format.MaxIndexSize), make([]byte, 1000))
	var err error
	n := testutil.Allocated(func() {
		pr, _ := NewPackReader(bytes.NewReader(data), MaxPack)
		_, _, _, err = pr.Next()
	})
	if !errors.Is(err, io.ErrUnexpectedEOF) || !strings.Contains(err.Error(), "(index") {
		t.Fatalf("a pack cut in a %d-byte record: %v", format.MaxIndexSize, err)
	}
	if n > 4<<20 {
		t.Fatalf("reading %d bytes of a pack allocated %d", len(data), n)
	}
}

// A reader error other than the end comes through as it is, wrapped.
func TestPackReaderReadError(t *testing.T) {
	good := writePack(t, samplePack())
	errNet := errors.New("connection reset")
	r := io.MultiReader(bytes.NewReader(good[:1000]), iotest.ErrReader(errNet))
	got, err := readPack(r, int64(len(good)))
	if !errors.Is(err, errNet) || errors.Is(err, io.ErrUnexpectedEOF) || len(got) != 1 {
		t.Fatalf("after %d records: %v", len(got), err)
	}
}

func FuzzPackReader(f *testing.F) {
	f.Add([]byte("LZPPACK\x00\x00\x01"), int16(0))
	f.Add(writePack(f, samplePack()[:1]), int16(0))
	f.Add(writePack(f, []packRec{{RecordIndex, format.Digest{1}, []byte("ix")}, {RecordChunk, format.Digest{2}, []byte("frame")}, {RecordChunk, format.Digest{3}, nil}}), int16(0))
	f.Add(writePack(f, []packRec{{RecordChunk, format.Digest{2}, []byte("frame")}}), int16(-3))
	f.Add(writePack(f, []packRec{{RecordIndex, format.Digest{2}, []byte("index")}}), int16(5))
	f.Add(cat([]byte("LZPPACK\x00\x00\x01"), recHdr(2, format.Digest{}, 1000), []byte("short")), int16(0))
	f.Fuzz(func(t *testing.T, data []byte, delta int16) {
		// The pack's size is the input's, or a little more or less: a size that the
		// bytes do not bear out, either way.
		size := int64(len(data)) + int64(delta)
		// Reading, copies of the records included, allocates a few times the bytes given
		// and the buffered reader's 64 KiB, whatever the records claim.
		if n := testutil.Allocated(func() { readPack(bytes.NewReader(data), size) }); n > 4*uint64(len(data))+(1<<20) {
			t.Fatalf("reading a pack of %d bytes allocated %d", len(data), n)
		}
		pr, err := NewPackReader(bytes.NewReader(data), size)
		if err != nil {
			if !errors.Is(err, ErrBadPack) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("NewPackReader: %v", err)
			}
			return
		}
		avail := min(int64(len(data)), size) // the pack's bytes the reader can have
		var recs []packRec
		off := int64(packHeader)
		for {
			k, d, b, err := pr.Next()
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrBadPack) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("Next: %v", err)
				}
				if err == io.EOF && off != size {
					t.Fatalf("io.EOF at %d of a pack of %d", off, size)
				}
				if again := func() error { _, _, _, e := pr.Next(); return e }(); again != err {
					t.Fatalf("Next after %v: %v", err, again)
				}
				break
			}
			if k != RecordIndex && k != RecordChunk {
				t.Fatalf("record of %s", k)
			}
			if off+int64(recHeader+len(b)) > avail {
				t.Fatalf("record at %d of %d bytes, from %d bytes", off, len(b), avail)
			}
			if !bytes.Equal(b, data[off+int64(recHeader):off+int64(recHeader+len(b))]) {
				t.Fatalf("record at %d: not the bytes given", off)
			}
			recs = append(recs, packRec{k, d, bytes.Clone(b)})
			off += int64(recHeader + len(b))
		}
		// No allocation for a record beyond what the size leaves (and whatever the size,
		// nothing near the bounds: the input is small).
		if limit := max(size-int64(packHeader+recHeader), 0); int64(cap(pr.buf)) > limit {
			t.Fatalf("allocated %d bytes for a record; %d left after the header", cap(pr.buf), limit)
		}
		// What reads as a whole pack is what a writer writes of its records, unless it
		// has an index after a chunk, which readers take and writers refuse.
		if off != size {
			return
		}
		var buf bytes.Buffer
		pw := NewPackWriter(&buf)
		for _, r := range recs {
			var err error
			if r.kind == RecordIndex {
				err = pw.Index(r.d, r.b)
			} else {
				err = pw.Chunk(r.d, r.b)
			}
			if err != nil {
				return
			}
		}
		if !bytes.Equal(buf.Bytes(), data[:size]) {
			t.Fatalf("rewritten, the pack reads %x; was %x", buf.Bytes(), data[:size])
		}
	})
}

// TestPackRecordsByRange: a record read by range where the writer put it (its offset from
// the lengths of those before it) is RecordAt's, header and all; a range that is not that
// record (another's, cut, shifted) is refused. NewPackReaderAt reads the records of a span.
func TestPackRecordsByRange(t *testing.T) {
	recs := samplePack()
	pack := writePack(t, recs)
	off := int64(HeaderSize)
	at := make([]int64, len(recs))
	for i, r := range recs {
		at[i] = off
		off += RecordHeaderSize + int64(len(r.b))
	}
	if off != int64(len(pack)) {
		t.Fatalf("layout ends at %d; the pack is %d bytes", off, len(pack))
	}
	for i, r := range recs {
		n := int64(len(r.b))
		b, err := RecordAt(pack[at[i]:at[i]+RecordHeaderSize+n], r.kind, r.d, n)
		if err != nil || !bytes.Equal(b, r.b) {
			t.Errorf("record %d: %v", i, err)
		}
	}
	r := recs[4]
	n := int64(len(r.b))
	for name, b := range map[string][]byte{
		"another's": pack[at[3] : at[3]+RecordHeaderSize+n],
		"cut":       pack[at[4] : at[4]+RecordHeaderSize+n-1],
		"shifted":   pack[at[4]+1 : at[4]+1+RecordHeaderSize+n],
	} {
		if _, err := RecordAt(b, r.kind, r.d, n); !errors.Is(err, ErrBadPack) {
			t.Errorf("%s: %v; want ErrBadPack", name, err)
		}
	}
	if _, err := RecordAt(pack[at[4]:at[4]+RecordHeaderSize+n], RecordIndex, r.d, n); !errors.Is(err, ErrBadPack) {
		t.Errorf("another kind: %v; want ErrBadPack", err)
	}

	// The index records from the second on, read by range.
	pr, err := NewPackReaderAt(bytes.NewReader(pack[at[1]:at[3]]), at[1], at[3]-at[1], PackVersion1)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 3; i++ {
		k, d, b, err := pr.Next()
		if err != nil || k != recs[i].kind || d != recs[i].d || !bytes.Equal(b, recs[i].b) {
			t.Fatalf("record %d by range: %s %s, %v", i, k, d, err)
		}
	}
	if _, _, _, err := pr.Next(); err != io.EOF {
		t.Errorf("after the span: %v; want io.EOF", err)
	}
	if _, err := NewPackReaderAt(bytes.NewReader(nil), 0, 10, PackVersion1); !errors.Is(err, ErrBadPack) {
		t.Errorf("a span over the header: %v; want ErrBadPack", err)
	}
}
