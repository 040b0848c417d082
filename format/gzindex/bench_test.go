package gzindex

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"testing"

	"lazypull/internal/testutil"
)

// benchBlob is the gzip blob at GZINDEX_BENCH_BLOB (a real layer), or 16 MiB of the
// test corpus, gzip -6 by compress/gzip. It returns the blob and its uncompressed size.
func benchBlob(b *testing.B) (blob []byte, size int) {
	if path := os.Getenv("GZINDEX_BENCH_BLOB"); path != "" {
		blob, err := os.ReadFile(path)
		if err != nil {
			b.Fatal(err)
		}
		return blob, len(gunzip(b, blob))
	}
	data := testutil.Corpus(16<<20, 20)
	return gzipGo(b, data, gzip.DefaultCompression), len(data)
}

// BenchmarkBuild: the build pass's throughput, in uncompressed bytes per second.
func BenchmarkBuild(b *testing.B) {
	blob, size := benchBlob(b)
	b.SetBytes(int64(size))
	for b.Loop() {
		if _, err := Build(bytes.NewReader(blob), DefaultSpanSize, nil, io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGunzip is compress/gzip on the same blob, for reference.
func BenchmarkGunzip(b *testing.B) {
	blob, size := benchBlob(b)
	b.SetBytes(int64(size))
	for b.Loop() {
		zr, err := gzip.NewReader(bytes.NewReader(blob))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, zr); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReadAt: the latency of a 4 KiB read at a random offset with no span kept (a
// span decoded and verified per read), by span size.
func BenchmarkReadAt(b *testing.B) {
	blob, size := benchBlob(b)
	for _, span := range []int64{64 << 10, 128 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("span=%dKiB", span>>10), func(b *testing.B) {
			var wins bytes.Buffer
			ix, err := Build(bytes.NewReader(blob), span, nil, &wins)
			if err != nil {
				b.Fatal(err)
			}
			r := NewReader(ix, bytes.NewReader(blob), bytes.NewReader(wins.Bytes()), 0)
			rng := rand.New(rand.NewPCG(1, 1))
			p := make([]byte, 4096)
			for b.Loop() {
				if _, err := r.ReadAt(p, rng.Int64N(int64(size-len(p)))); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
