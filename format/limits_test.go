package format

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"lazypull/internal/testutil"
)

// decodeOverhead is what decoding may allocate outside its budget: a zstd decoder when the
// pool is empty, error strings, the Index header.
const decodeOverhead = 2 << 20

// checkDecodeBound decodes p and fails unless decoding allocated at most its budget (plus
// decodeOverhead). It returns the decode error.
func checkDecodeBound(t *testing.T, p []byte) error {
	t.Helper()
	var err error
	n := testutil.Allocated(func() { _, err = DecodeIndex(p) })
	if limit := uint64(IndexBudget(len(p))) + decodeOverhead; n > limit {
		t.Fatalf("decoding a %d-byte index allocated %d bytes, over its bound of %d (err %v)", len(p), n, limit, err)
	}
	return err
}

// payloadOf wraps a body into an index payload declaring bodyLen.
func payloadOf(t testing.TB, body []byte, bodyLen uint64) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	p := make([]byte, indexHeaderLen)
	copy(p, indexMagic)
	binary.LittleEndian.PutUint16(p[8:], Version)
	binary.LittleEndian.PutUint64(p[16:], bodyLen)
	return enc.EncodeAll(body, p)
}

// padPayload pads p to n bytes with a zstd skippable frame, which decoders skip.
func padPayload(p []byte, n int) []byte {
	p = binary.LittleEndian.AppendUint32(p, 0x184D2A50)
	p = binary.LittleEndian.AppendUint32(p, uint32(n-len(p)-4))
	return append(p, make([]byte, n-len(p))...)
}

// sharedPrefixBody is a body of n entries whose names are each 64 KiB long but take a few
// bytes: all but the first share all but the last byte of the previous name.
func sharedPrefixBody(n int) []byte {
	b := binary.AppendUvarint(nil, 0)
	b = binary.AppendUvarint(b, uint64(n))
	b = binary.AppendUvarint(b, 0)
	for i := range n {
		if i == 0 {
			b = binary.AppendUvarint(b, 0)
			b = binary.AppendUvarint(b, MaxNameLen-1)
			b = append(b, strings.Repeat("a", MaxNameLen-1)...)
		} else {
			b = binary.AppendUvarint(b, MaxNameLen-2)
			b = binary.AppendUvarint(b, 1)
			b = append(b, 'b')
		}
		b = append(b, typeReg, 0, 0, 0, 0, 0, 0) // type, flags, mode, uid, gid, mtime, size
	}
	return b
}

// TestDecodeSharedPrefixNames: an 880-byte index of names sharing 64 KiB prefixes decoded
// into 500 MiB of names (its body compresses 183 fold: padded, so that the old check of
// 1024 fold let it through). Now the payload's body length is refused against its
// compressed size, and the body parser, given the body alone, runs out of budget at the
// names.
func TestDecodeSharedPrefixNames(t *testing.T) {
	body := sharedPrefixBody(8000)
	p := padPayload(payloadOf(t, body, uint64(len(body))), 880)
	t.Logf("payload %d bytes, body %d bytes, names %d MiB", len(p), len(body), 8000*(MaxNameLen-1)>>20)
	err := checkDecodeBound(t, p)
	if err == nil {
		t.Fatal("index of 500 MiB of names decoded")
	}
	t.Log(err)

	// The body parser alone, with the budget of a payload ten times larger: the names
	// draw from it and exhaust it.
	budget := IndexBudget(10 * len(p))
	n := testutil.Allocated(func() { _, err = decodeBody(body, budget, IndexVersion1) })
	if err == nil || !strings.Contains(err.Error(), "names") || !strings.Contains(err.Error(), "at entry") {
		t.Fatalf("names over the budget: err %v", err)
	}
	if n > uint64(budget)+decodeOverhead {
		t.Fatalf("decoding the body allocated %d bytes, budget %d", n, budget)
	}
	t.Log(err)
}

// manyCountsBody is a body of size bytes declaring the given counts, then random bytes
// (incompressible, so the payload is not tiny), then zeros.
func manyCountsBody(size, random int, frames, entries, chunks uint64) []byte {
	b := binary.AppendUvarint(nil, frames)
	b = binary.AppendUvarint(b, entries)
	b = binary.AppendUvarint(b, chunks)
	b = append(b, testutil.RandBytes(3, random)...)
	return append(b, make([]byte, size-len(b))...)
}

// TestDecodeManyCounts: counts each within the bytes left but not together (the daemon
// died of it: `fatal error: out of memory`), or together but not within the budget, are
// refused before the arrays are made, and decoding a ~256 KiB payload allocates < 64 MiB.
func TestDecodeManyCounts(t *testing.T) {
	const size, random = 8 << 20, 272 << 10
	for _, c := range []struct {
		name                    string
		frames, entries, chunks uint64
		want                    string
	}{
		{"each-alone", size / 8, size / 16, size / 64, "take at least"},
		{"over-budget", 0, size / 10, 0, "entry list"},
		{"frames-over-budget", size / 3, 0, 0, "frame list"},
	} {
		t.Run(c.name, func(t *testing.T) {
			body := manyCountsBody(size, random, c.frames, c.entries, c.chunks)
			p := payloadOf(t, body, uint64(len(body)))
			var err error
			n := testutil.Allocated(func() { err = checkDecodeBound(t, p) })
			t.Logf("payload %d bytes: allocated %d bytes: %v", len(p), n, err)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want one about %q", err, c.want)
			}
			if len(p) > 1<<20 || n >= 64<<20 {
				t.Fatalf("a %d-byte index allocated %d bytes decoding", len(p), n)
			}
		})
	}
}

// TestDecodeBodyOverrun: a body frame that decodes to more than the declared length (no
// content size in its header) is cut at the declared length, not decoded whole.
func TestDecodeBodyOverrun(t *testing.T) {
	var frame bytes.Buffer
	enc, err := zstd.NewWriter(&frame, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		t.Fatal(err)
	}
	zeros := make([]byte, 1<<20)
	for range 128 {
		enc.Write(zeros)
	}
	enc.Close()
	zeros = nil
	p := make([]byte, indexHeaderLen, indexHeaderLen+frame.Len())
	copy(p, indexMagic)
	binary.LittleEndian.PutUint16(p[8:], Version)
	binary.LittleEndian.PutUint64(p[16:], 4096)
	p = append(p, frame.Bytes()...)
	t.Logf("payload of %d bytes decompresses to 128 MiB", len(p))
	err = checkDecodeBound(t, p)
	if err == nil {
		t.Fatal("a body longer than declared decoded")
	}
	t.Log(err)
}

// TestDecodeBodyRatio: a body length no payload of this size plausibly decodes to is
// refused before decompression.
func TestDecodeBodyRatio(t *testing.T) {
	body := make([]byte, 4<<20)
	p := payloadOf(t, body, uint64(len(body)))
	err := checkDecodeBound(t, p)
	if err == nil || !strings.Contains(err.Error(), "times the payload") {
		t.Fatalf("4 MiB body from a %d-byte payload: err %v", len(p), err)
	}
}

// TestDecodeRealIndexWithinBudget: the 100k-file index decodes within its budget.
func TestDecodeRealIndexWithinBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: builds a 100k-file layer")
	}
	blob, res := convert(t, manyFiles(t, 100_000))
	p := bytes.Clone(blob[res.IndexOffset : res.IndexOffset+res.IndexSize])
	blob = nil
	if err := checkDecodeBound(t, p); err != nil {
		t.Fatal(err)
	}
}

func TestIsCleanName(t *testing.T) {
	for _, s := range []string{"", ".", "..", "/", "a", "a/b", "/a", "a/", "a//b", "./a", "a/.", "a/..", "../a",
		"a/./b", "a/../b", ".a", "a..", "...", "a/.b/c", "//", "a/b/", "日本/語"} {
		if got, want := isCleanName(s), s != "" && CleanName(s) == s; got != want {
			t.Errorf("isCleanName(%q) = %v, want %v", s, got, want)
		}
	}
}

// TestEncodeRefusesOverBudget: the writer refuses an index its readers would refuse (here
// 100k directories with sequential names, which compress to almost nothing), and what it
// writes decodes.
func TestEncodeRefusesOverBudget(t *testing.T) {
	ix := &Index{}
	for i := range 100_000 {
		ix.Entries = append(ix.Entries, Entry{Type: typeDir, Mode: 0o755, Name: fmt.Sprintf("usr/share/d%07d", i)})
	}
	if _, err := ix.Encode(); !errors.Is(err, errOverBudget) {
		t.Fatalf("dense index encoded: err %v", err)
	} else {
		t.Log(err)
	}
	ix.Entries = ix.Entries[:1000]
	p, err := ix.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := checkDecodeBound(t, p); err != nil {
		t.Fatal(err)
	}
}

// sparseTar makes, with GNU tar, a tar stream holding a sparse file "sparse" of size bytes
// with 10,000 random bytes at each offset in data, in the given format.
func sparseTar(t *testing.T, size int64, data []int64, format string) []byte {
	t.Helper()
	return testutil.SparseTar(t, format, size, randomAt(data...), nil)
}

// randomAt is 10,000 random bytes at each offset, seeded by it.
func randomAt(offs ...int64) map[int64][]byte {
	data := map[int64][]byte{}
	for _, off := range offs {
		data[off] = testutil.RandBytes(uint64(off), 10000)
	}
	return data
}

// TestReadSparseAt: ranges of a sparse file read by ReadSparseAt are those of its whole
// content, in every tar form, and a damaged record fails.
func TestReadSparseAt(t *testing.T) {
	data := []int64{0, 1 << 20, 5<<20 - 3000}
	for _, fm := range []string{"gnu", "pax", "posix"} {
		t.Run(fm, func(t *testing.T) {
			blob, res := convert(t, sparseTar(t, 5<<20+4096, data, fm))
			l, err := Open(bytes.NewReader(blob), int64(len(blob)), res.Annotations())
			if err != nil {
				t.Fatal(err)
			}
			e, ok := l.Index.Lookup("sparse")
			if !ok || !e.Sparse {
				t.Fatalf("no sparse entry: %+v", e)
			}
			whole, err := l.ReadFile(e)
			if err != nil || int64(len(whole)) != e.Size {
				t.Fatalf("ReadFile: %d bytes, %v", len(whole), err)
			}
			for _, r := range []struct{ off, n int64 }{{0, 4096}, {1<<20 - 100, 200}, {5<<20 - 3100, 128 << 10}, {e.Size - 10, 100}, {e.Size, 10}} {
				p := make([]byte, r.n)
				n, err := l.ReadSparseAt(e, p, r.off)
				want := whole[min(r.off, e.Size):min(r.off+r.n, e.Size)]
				if err != nil || !bytes.Equal(p[:n], want) {
					t.Fatalf("ReadSparseAt(%d, %d): %d bytes, %v", r.off, r.n, n, err)
				}
			}
			bad := *e
			bad.Digest[0] ^= 1
			if _, err := l.ReadSparseAt(&bad, make([]byte, 10), 0); err == nil {
				t.Fatal("a sparse file whose digest does not match was read")
			}
			bad = *e
			bad.TarLen = bad.Size + MaxSparseHeader + 1024
			if _, err := l.ReadSparseAt(&bad, make([]byte, 10), 0); err == nil || !strings.Contains(err.Error(), "out of range") {
				t.Fatalf("a record longer than its file's claims: %v", err)
			}
		})
	}
}

// TestReadSparseBounded: reading a few bytes of a 900 MiB sparse file (a 30 KB layer)
// allocated the whole file on every read; now a frame and a buffer.
func TestReadSparseBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: hashes 900 MiB of holes")
	}
	const size = 900 << 20
	blob, res := convert(t, sparseTar(t, size, []int64{0, 512 << 20}, "posix"))
	l, err := Open(bytes.NewReader(blob), int64(len(blob)), res.Annotations())
	if err != nil {
		t.Fatal(err)
	}
	e, _ := l.Index.Lookup("sparse")
	t.Logf("layer of %d bytes, sparse file of %d bytes", len(blob), e.Size)
	p := make([]byte, 4096)
	var n int
	a := testutil.Allocated(func() { n, err = l.ReadSparseAt(e, p, 512<<20) })
	if err != nil || n != len(p) || !bytes.Equal(p, testutil.RandBytes(512<<20, 10000)[:4096]) {
		t.Fatalf("read 4 KiB at 512 MiB: %d bytes, %v", n, err)
	}
	if a > 8<<20 {
		t.Fatalf("reading 4 KiB of a sparse file allocated %d bytes", a)
	}
	t.Logf("reading 4 KiB allocated %d bytes", a)
}
