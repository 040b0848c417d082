package zstdindex

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/klauspost/compress/zstd"

	"lazypull/internal/testutil"
)

// benchBlob is the zstd blob at ZSTDINDEX_BENCH_BLOB (a real layer), or 16 MiB of the
// test corpus at klauspost's default level. It returns the blob and its uncompressed size.
func benchBlob(b *testing.B) (blob []byte, size int) {
	if path := os.Getenv("ZSTDINDEX_BENCH_BLOB"); path != "" {
		blob, err := os.ReadFile(path)
		if err != nil {
			b.Fatal(err)
		}
		return blob, len(unzstd(b, blob))
	}
	data := testutil.Corpus(16<<20, 20)
	return zstdGo(b, data, zstd.SpeedDefault), len(data)
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

// BenchmarkUnzstd is klauspost/compress on the same blob, for reference.
func BenchmarkUnzstd(b *testing.B) {
	blob, size := benchBlob(b)
	b.SetBytes(int64(size))
	for b.Loop() {
		d, err := zstd.NewReader(bytes.NewReader(blob), zstd.WithDecoderConcurrency(1))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, d); err != nil {
			b.Fatal(err)
		}
		d.Close()
	}
}

// BenchmarkReadAt: a 4 KiB read at a random offset from a reader that keeps nothing: a
// span decoded from its stored window and checked.
func BenchmarkReadAt(b *testing.B) {
	blob, _ := benchBlob(b)
	var windows bytes.Buffer
	ix, err := Build(bytes.NewReader(blob), DefaultSpanSize, nil, &windows)
	if err != nil {
		b.Fatal(err)
	}
	r := NewReader(ix, bytes.NewReader(blob), bytes.NewReader(windows.Bytes()), 0)
	rng := rand.New(rand.NewPCG(1, 2))
	p := make([]byte, 4<<10)
	for b.Loop() {
		if _, err := r.ReadAt(p, rng.Int64N(ix.Size()-int64(len(p)))); err != nil {
			b.Fatal(err)
		}
	}
}
