package zstdindex

import (
	"bytes"
	"io"
	"testing"

	"lazypull/internal/testutil"

	"github.com/klauspost/compress/zstd"
)

// seedBlobs returns small zstd blobs: several frames, tables of every mode, windows.
func seedBlobs(t testing.TB) [][]byte {
	return [][]byte{
		zstdGo(t, testutil.Corpus(100<<10, 7), zstd.SpeedDefault, zstd.WithWindowSize(4<<10)),
		slicesConcat(zstdGo(t, testutil.Corpus(50<<10, 8), zstd.SpeedBestCompression, zstd.WithWindowSize(8<<10)), skippable([]byte("x")),
			zstdGo(t, nil, zstd.SpeedFastest), zstdGo(t, testutil.Corpus(30<<10, 9), zstd.SpeedFastest, zstd.WithEncoderCRC(false))),
		zstdGo(t, []byte("hello, hello, hello"), zstd.SpeedDefault),
	}
}

// seedIndexes returns encoded indexes of the seed blobs, checkpointed every 4 KiB.
func seedIndexes(t testing.TB) [][]byte {
	var seeds [][]byte
	for _, blob := range seedBlobs(t) {
		ix, err := Build(bytes.NewReader(blob), 4<<10, nil, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, ix.Encode())
	}
	return seeds
}

func TestSeedIndexes(t *testing.T) {
	mid := 0
	for _, s := range seedIndexes(t) {
		ix, err := Decode(s)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ix.points {
			if p.mid {
				mid++
			}
		}
	}
	if mid < 5 {
		t.Fatalf("the seeds have %d checkpoints inside frames", mid)
	}
}

// FuzzDecode feeds hostile encoded indexes to Decode: errors, never panics; allocates at
// most MemFactor times the input plus MemSlack (plus 16 KiB); what decodes
// encodes to the same bytes.
func FuzzDecode(f *testing.F) {
	testutil.FuzzDecode(f, seedIndexes(f), MemFactor, MemSlack, Decode, (*Index).Encode)
}

// FuzzDecodeBody skips the trailing digest, which mutations rarely get past, so that
// they reach the parser (checkpoints, dictionary tables); the same bounds hold.
func FuzzDecodeBody(f *testing.F) {
	testutil.FuzzDecodeBody(f, seedIndexes(f), MemFactor, MemSlack, decodeBody, (*Index).encodeBody)
}

// FuzzBuild feeds hostile zstd blobs to Build and, when it accepts one, reads the blob
// back through the index, every span alone (from its stored window): errors, never
// panics; the reader serves exactly what the build pass decoded, and that is what
// klauspost/compress decodes when it accepts the blob.
func FuzzBuild(f *testing.F) {
	for _, b := range seedBlobs(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, blob []byte) {
		var out, windows bytes.Buffer
		ix, err := Build(bytes.NewReader(blob), 2<<10, &out, &windows)
		if err != nil {
			return
		}
		if d, err := zstd.NewReader(nil, zstd.WithDecoderMaxMemory(64<<20)); err == nil {
			want, err := d.DecodeAll(blob, nil)
			d.Close()
			if err == nil && !bytes.Equal(want, out.Bytes()) {
				t.Fatal("the build pass and klauspost/compress decode to different bytes")
			}
		}
		for i := range ix.NumSpans() {
			s := ix.Span(i)
			p := make([]byte, s.Len)
			r := NewReader(ix, bytes.NewReader(blob), bytes.NewReader(windows.Bytes()), 0)
			if n, err := r.ReadAt(p, s.Off); int64(n) != s.Len || (err != nil && err != io.EOF) {
				t.Fatalf("reading span %d back: %d bytes of %d, %v", i, n, s.Len, err)
			}
			if !bytes.Equal(p, out.Bytes()[s.Off:s.Off+s.Len]) {
				t.Fatalf("span %d: the reader serves other bytes than the build pass decoded", i)
			}
		}
	})
}

// FuzzDistribution feeds hostile FSE table descriptions to the parser: errors, never
// panics; what parses builds a table, and writes back to a description that parses to
// the same distribution.
func FuzzDistribution(f *testing.F) {
	for t := range 3 {
		f.Add(byte(t), appendDistribution(nil, predefined[t]))
	}
	f.Add(byte(tableOF), []byte{0x30, 0x6f, 0x9b, 0x03})
	f.Fuzz(func(t *testing.T, table byte, b []byte) {
		tab := int(table % 3)
		d, n, err := readDistribution(b, tab, nil)
		if err != nil {
			return
		}
		if n > len(b) {
			t.Fatalf("a description of %d bytes in %d", n, len(b))
		}
		if _, err := d.table(); err != nil {
			return
		}
		w := appendDistribution(nil, d)
		d2, n2, err := readDistribution(w, tab, nil)
		if err != nil || n2 != len(w) || d2.log != d.log || !equalNorm(d.norm, d2.norm) {
			t.Fatalf("%v, %+v written as %x reads back as %+v (%d of %d bytes), %v", b[:n], d, w, d2, n2, len(w), err)
		}
	})
}

// equalNorm compares counts, trailing zeros aside (a description may end with them).
func equalNorm(a, b []int16) bool {
	for len(a) > 0 && a[len(a)-1] == 0 {
		a = a[:len(a)-1]
	}
	for len(b) > 0 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	return bytes.Equal(int16Bytes(a), int16Bytes(b))
}

func int16Bytes(v []int16) []byte {
	b := make([]byte, 0, 2*len(v))
	for _, x := range v {
		b = append(b, byte(x), byte(x>>8))
	}
	return b
}

// TestDictionaryLoads: the dictionary of a checkpoint with no table in force yet (the
// stand-in Huffman table, the predefined distributions written out) is one
// klauspost/compress accepts, with the smallest window the repeat offsets allow.
func TestDictionaryLoads(t *testing.T) {
	var f frameDecoder
	f.reset(frameHeader{window: minWindow})
	p := checkpoint{mid: true, entropy: f.entropy(), reps: [3]uint32{1, 4, 8}, content: 8}
	if err := checkEntropy(p.entropy, nil); err != nil {
		t.Fatal(err)
	}
	d, err := zstd.InspectDictionary(p.dictionary(make([]byte, 8)))
	if err != nil {
		t.Fatal(err)
	}
	if d.ID() != dictID || d.ContentSize() != 8 || d.Offsets() != [3]int{1, 4, 8} {
		t.Fatalf("dictionary %d of %d bytes, offsets %v", d.ID(), d.ContentSize(), d.Offsets())
	}
}
