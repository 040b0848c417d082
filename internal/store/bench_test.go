package store

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"

	"lazypull/internal/testutil"
)

// BenchmarkLocalRead reads a fully local 64 MiB file whole, through ReadAt (the FUSE read
// path without passthrough) and through the file at LocalPath (what passthrough reads), in
// reads of the sizes FUSE issues.
func BenchmarkLocalRead(b *testing.B) {
	const size = 64 << 20
	l := buildLayer(b, tfile{"big", testutil.RandBytes(1, size)})
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

// BenchmarkOpen opens a store of 100,000 small objects and a chunk log of 10,000 records
// (of 8 chunks each): the directory scan and the log read that rebuild the index.
func BenchmarkOpen(b *testing.B) {
	dir := b.TempDir()
	s := openStore(b, dir)
	var recs []chunkRecord
	for i := range 100_000 {
		data := []byte(fmt.Sprintf("object %d", i))
		d := sha256Sum(data)
		testutil.WriteFile(b, s.objectPath(d), data, 0o444)
		if i%10 == 0 {
			r := chunkRecord{object: d}
			for k := range 8 {
				r.chunks = append(r.chunks, recChunk{sha256Sum([]byte(fmt.Sprint(i, k))), 1})
			}
			r.chunks[7].size = int64(len(data)) - 7
			recs = append(recs, r)
		}
	}
	if err := s.clog.compact(recs); err != nil {
		b.Fatal(err)
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		s, err := Open(dir, WithLogger(slog.New(slog.DiscardHandler)))
		if err != nil {
			b.Fatal(err)
		}
		if st := s.Stats(); st.Objects != 100_000 || st.Chunks != 80_000 {
			b.Fatalf("%+v", st)
		}
		_ = s.Close()
	}
}
