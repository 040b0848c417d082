package format

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"runtime"
	"testing"

	"lazypull/internal/testutil"
)

// manyFiles builds a tar of n small files spread over directories, like a distro layer.
func manyFiles(tb testing.TB, n int) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	body := testutil.RandBytes(7, 4096)
	for i := range n {
		if i%50 == 0 {
			tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: fmt.Sprintf("usr/share/pkg%05d/", i/50), Mode: 0o755})
		}
		size := 100 + i%3000
		h := &tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("usr/share/pkg%05d/file-%07d.txt", i/50, i), Mode: 0o644, Size: int64(size), Uid: 0, Gid: 0}
		if err := tw.WriteHeader(h); err != nil {
			tb.Fatal(err)
		}
		b := body[:size]
		b[0] = byte(i) // distinct contents
		b[1] = byte(i >> 8)
		b[2] = byte(i >> 16)
		tw.Write(b)
	}
	tw.Close()
	return buf.Bytes()
}

// BenchmarkDecodeIndex100k decodes the index of a layer of 100,000 files (bar: < 50 ms).
func BenchmarkDecodeIndex100k(b *testing.B) {
	blob, res := convert(b, manyFiles(b, 100_000))
	payload := bytes.Clone(blob[res.IndexOffset : res.IndexOffset+res.IndexSize])
	blob = nil
	runtime.GC() // the 200 MB layer is garbage now; do not bill its collection to decoding
	for b.Loop() {
		ix, err := DecodeIndex(payload)
		if err != nil || len(ix.Entries) < 100_000 {
			b.Fatal(err)
		}
	}
	// After the loop: its first call resets the timer and the metrics with it.
	b.ReportMetric(float64(len(payload)), "index-bytes")
	b.ReportMetric(float64(len(payload))/100_000, "bytes/file")
}

// BenchmarkWrite measures conversion throughput of a mixed layer.
func BenchmarkWrite(b *testing.B) {
	many := manyFiles(b, 5000)
	// manyFiles ends with the end-of-archive blocks; the edge cases follow as a second
	// archive, which the writer keeps byte for byte as trailing data.
	src := append(many[:len(many):len(many)], edgeCases(b)...)
	b.SetBytes(int64(len(src)))
	for b.Loop() {
		if _, err := Write(context.Background(), io.Discard, bytes.NewReader(src)); err != nil {
			b.Fatal(err)
		}
	}
}
