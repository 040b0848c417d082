package testutil

import (
	"bytes"
	"crypto/sha256"
	"math/rand/v2"
	"strings"
	"testing"
)

// RandBytes returns n reproducible pseudo-random bytes: the same seed, the same bytes.
func RandBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// Corpus returns n reproducible bytes that exercise a compressor's every path: text-like
// runs of words (long and short matches, repeated offsets), random bytes (stored, raw
// and uncompressible blocks) and runs of zeros (matches at distance 1, RLE).
func Corpus(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, seed))
	words := strings.Fields("the quick brown fox jumps over lazy dog import def class return self None " +
		"usr lib python3 site packages __init__ py pyc so elf ld linux x86_64 gnu")
	var b bytes.Buffer
	for b.Len() < n {
		switch rng.IntN(4) {
		case 0, 1:
			for range 200 + rng.IntN(4000) {
				b.WriteString(words[rng.IntN(len(words))])
				b.WriteByte(" \n/."[rng.IntN(4)])
			}
		case 2:
			r := make([]byte, 1000+rng.IntN(100000))
			for i := range r {
				r[i] = byte(rng.Uint32())
			}
			b.Write(r)
		default:
			b.Write(make([]byte, rng.IntN(300000)))
		}
	}
	return b.Bytes()[:n]
}

// CheckDecode is a fuzz property of a decoder of hostile bytes: decoding p allocates at
// most limit bytes, and what decodes encodes back to p.
func CheckDecode[T any](t testing.TB, p []byte, limit uint64, decode func([]byte) (T, error), encode func(T) []byte) {
	t.Helper()
	var v T
	var err error
	n := Allocated(func() { v, err = decode(p) })
	if n > limit {
		t.Fatalf("decoding %d bytes allocated %d, over the bound of %d (err %v)", len(p), n, limit, err)
	}
	if err != nil {
		return
	}
	if !bytes.Equal(encode(v), p) {
		t.Fatal("a decoded value encodes to other bytes")
	}
}

// decodeOverhead is what a decode may allocate beyond its budget that is not the
// decoder's: the error's formatting, the runtime's own.
const decodeOverhead = 16 << 10

// FuzzDecode seeds a fuzz target of an index decoder with encoded indexes and halves of
// them, and checks with CheckDecode each input it is given: decoding n bytes allocates at
// most factor*n+slack bytes (plus 16 KiB, the error's formatting and the runtime's own).
func FuzzDecode[T any](f *testing.F, seeds [][]byte, factor, slack int, decode func([]byte) (T, error), encode func(T) []byte) {
	for _, s := range seeds {
		f.Add(s)
		f.Add(s[:len(s)/2])
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		CheckDecode(t, p, uint64(factor*len(p)+slack)+decodeOverhead, decode, encode)
	})
}

// FuzzDecodeBody is FuzzDecode for the body of an index sealed by a trailing sha256
// (which mutations rarely get past): it seeds with the seeds' bodies and two thirds of
// them.
func FuzzDecodeBody[T any](f *testing.F, seeds [][]byte, factor, slack int, decode func([]byte) (T, error), encode func(T) []byte) {
	for _, s := range seeds {
		body := s[:len(s)-sha256.Size]
		f.Add(body)
		f.Add(body[:len(body)*2/3])
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		CheckDecode(t, p, uint64(factor*len(p)+slack)+decodeOverhead, decode, encode)
	})
}
