package store

import (
	"context"
	"fmt"
	"io"
	"os"
	"testing"
)

// BenchmarkLocalRead reads a fully local 64 MiB file whole, through ReadAt (the FUSE read
// path without passthrough) and through the file at LocalPath (what passthrough reads), in
// reads of the sizes FUSE issues.
func BenchmarkLocalRead(b *testing.B) {
	const size = 64 << 20
	l := buildLayer(b, tfile{"big", randBytes(1, size)})
	f := l.files["big"]
	s := openStore(b, b.TempDir())
	if err := s.Fill(context.Background(), newSource(l), f); err != nil {
		b.Fatal(err)
	}
	path, ok := s.LocalPath(f)
	if !ok {
		b.Fatal("not local after Fill")
	}
	ctx := context.Background()
	for _, bs := range []int{128 << 10, 1 << 20} {
		buf := make([]byte, bs)
		b.Run(fmt.Sprintf("ReadAt/%dKiB", bs>>10), func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				for off := int64(0); off < size; off += int64(bs) {
					if _, err := s.ReadAt(ctx, nil, f, buf, off); err != nil && err != io.EOF {
						b.Fatal(err)
					}
				}
			}
		})
		b.Run(fmt.Sprintf("LocalPath/%dKiB", bs>>10), func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				r, err := os.Open(path)
				if err != nil {
					b.Fatal(err)
				}
				for off := int64(0); off < size; off += int64(bs) {
					if _, err := r.ReadAt(buf, off); err != nil && err != io.EOF {
						b.Fatal(err)
					}
				}
				_ = r.Close()
			}
		})
	}
}
