package gzindex

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"errors"
	"io"
	"lazypull/internal/testutil"
	"testing"
)

// seedIndexes returns encoded indexes of a few streams: multi-span, multi-member, empty.
func seedIndexes(t testing.TB) [][]byte {
	var seeds [][]byte
	for _, blob := range [][]byte{
		gzipGo(t, bytes.Repeat([]byte("a small index, a few windows. "), 3000), 6),
		slicesConcat(gzipGo(t, testutil.Corpus(3000, 9), 1), gzipGo(t, nil, 9), gzipGo(t, testutil.Corpus(2000, 10), 9)),
		gzipGo(t, nil, 6),
	} {
		ix, err := Build(bytes.NewReader(blob), 64, nil, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, ix.Encode())
	}
	return seeds
}

// FuzzDecode feeds hostile encoded indexes to Decode: errors, never panics; allocates at
// most MemFactor times the input plus MemSlack (plus 16 KiB); what decodes
// encodes to the same bytes.
func FuzzDecode(f *testing.F) {
	testutil.FuzzDecode(f, seedIndexes(f), MemFactor, MemSlack, Decode, (*Index).Encode)
}

// FuzzDecodeBody skips the trailing digest, which mutations rarely get past, so that
// they reach the parser; the same bounds hold.
func FuzzDecodeBody(f *testing.F) {
	testutil.FuzzDecodeBody(f, seedIndexes(f), MemFactor, MemSlack, decodeBody, (*Index).encodeBody)
}

// FuzzBuild feeds hostile gzip streams to Build and, when it accepts one, reads the
// stream back through the index: errors, never panics; the reader serves exactly what the
// build pass decoded, and that is what compress/gzip decodes when it accepts the stream.
func FuzzBuild(f *testing.F) {
	f.Add(gzipGo(f, testutil.Corpus(50000, 11), 6))
	f.Add(gzipGo(f, testutil.Corpus(20000, 12), 1))
	f.Add(gzipGo(f, []byte("hello, hello, hello"), 9))
	f.Add(slicesConcat(gzipGo(f, nil, 6), gzipGo(f, []byte("x"), 0)))
	f.Fuzz(func(t *testing.T, blob []byte) {
		var out, wins bytes.Buffer
		ix, err := Build(bytes.NewReader(blob), 1024, &out, &wins)
		if err != nil {
			return
		}
		if zr, err := gzip.NewReader(bytes.NewReader(blob)); err == nil {
			if want, err := io.ReadAll(zr); err == nil && !bytes.Equal(want, out.Bytes()) {
				t.Fatal("the build pass and compress/gzip decode to different bytes")
			}
		}
		p := make([]byte, ix.Size())
		if n, err := NewReader(ix, bytes.NewReader(blob), bytes.NewReader(wins.Bytes()), 0).ReadAt(p, 0); int64(n) != ix.Size() || (err != nil && err != io.EOF) {
			t.Fatalf("reading back: %d bytes of %d, %v", n, ix.Size(), err)
		}
		if !bytes.Equal(p, out.Bytes()) {
			t.Fatal("the reader serves other bytes than the build pass decoded")
		}
	})
}

func TestSeedIndexes(t *testing.T) {
	for _, s := range seedIndexes(t) {
		ix, err := Decode(s)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%d bytes, %d spans", len(s), ix.NumSpans())
	}
}

// FuzzInflate feeds hostile raw deflate streams to the inflater and to compress/flate:
// errors, never panics; what one decodes to its final block, the other decodes to the
// same bytes.
func FuzzInflate(f *testing.F) {
	for _, level := range []int{0, 1, 6, 9, -2} {
		blob := gzipGo(f, testutil.Corpus(3000, 14), level)
		f.Add(blob[10+len("layer.tar")+1+len("a comment")+1+2+len("extra field") : len(blob)-8])
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		var got bytes.Buffer
		in := newInflater(src, 0, nil, func(p []byte) error {
			if got.Len() > 1<<20 {
				return errStop
			}
			got.Write(p)
			return nil
		})
		var err error
		for last := false; !last && err == nil; {
			last, err = in.block()
		}
		want, werr := io.ReadAll(io.LimitReader(flate.NewReader(bytes.NewReader(src)), 1<<20+1))
		if errors.Is(err, errStop) || len(want) > 1<<20 {
			return
		}
		if (err == nil) != (werr == nil) {
			t.Fatalf("inflater: %v; compress/flate: %v", err, werr)
		}
		if err == nil && !bytes.Equal(got.Bytes(), want) {
			t.Fatal("the inflater and compress/flate decode to different bytes")
		}
	})
}
