package store

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"

	"lazypull/internal/testutil"
)

// Reads, fills, prunes, pins and passthrough opens at once, from two layers that share
// files and chunks, under a bound far smaller than the data: every byte served is right,
// and the store is consistent after.
func TestConcurrentStress(t *testing.T) {
	files := mixedFiles(201)
	edited := append(bytes.Clone(files[5].data[:1<<20]), testutil.RandBytes(202, 100_000)...)
	l1 := buildLayer(t, files...)
	l2 := buildLayer(t, append(files[1:5], tfile{"edited", edited}, tfile{"copy-of-many", files[5].data})...)
	layers := []*testLayer{l1, l2}
	srcs := []*fakeSource{newSource(l1), newSource(l2)}
	dir := t.TempDir()
	const max = 1 << 20
	s := openStore(t, dir, WithMaxBytes(max))
	ops := 150
	if testing.Short() {
		ops = 30
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 77))
			ctx := context.Background()
			lease := s.NewLease()
			defer lease.Release()
			for range ops {
				li := r.IntN(2)
				l, src := layers[li], srcs[li]
				name := l.names[r.IntN(len(l.names))]
				f, want := l.files[name], l.data[name]
				var err error
				switch op := r.IntN(20); {
				case op < 12:
					off := int64(0)
					if f.Size > 0 {
						off = r.Int64N(f.Size)
					}
					p := make([]byte, r.IntN(200_000)+1)
					var k int
					k, err = s.ReadAt(ctx, src, f, p, off)
					if err == io.EOF {
						err = nil
					}
					if err == nil && !bytes.Equal(p[:k], want[off:off+int64(k)]) {
						err = fmt.Errorf("%s at %d: wrong bytes", name, off)
					}
				case op < 15:
					err = s.Fill(ctx, src, f)
				case op < 17:
					if rf, oerr := s.OpenLocal(f); oerr == nil {
						b, rerr := io.ReadAll(rf)
						_ = rf.Close()
						if rerr != nil || !bytes.Equal(b, want) {
							err = fmt.Errorf("%s: passthrough copy wrong (%v)", name, rerr)
						}
					}
				case op < 18:
					lease.Pin(f)
				case op < 19:
					lease.Unpin(f)
				default:
					_, err = s.Prune(ctx, r.Int64N(max))
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	s.idle()
	st := s.Stats()
	if st.Bytes > max {
		t.Errorf("%d bytes with no pins left, over the bound %d", st.Bytes, max)
	}
	if n := len(dirFiles(t, filepath.Join(dir, objectsName))); n != st.Objects {
		t.Errorf("%d files under objects/, %d objects indexed", n, st.Objects)
	}
	if r, err := s.Verify(context.Background()); err != nil || r.Bad != 0 || r.BadChunks != 0 {
		t.Fatalf("verify: %+v, %v", r, err)
	}
	t.Logf("%+v", st)
}
