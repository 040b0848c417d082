package format

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/klauspost/compress/zstd"

	"lazypull/internal/testutil"
)

// seedIndex returns the index payload and body of a small layer with every entry kind.
func seedIndex(t testing.TB) (payload, body []byte) {
	blob, res := convert(t, edgeCases(t))
	payload = blob[res.IndexOffset : res.IndexOffset+res.IndexSize]
	ix, err := DecodeIndex(payload)
	if err != nil {
		t.Fatal(err)
	}
	body, err = ix.encodeBody()
	if err != nil {
		t.Fatal(err)
	}
	return payload, body
}

// FuzzDecodeIndex feeds hostile index payloads to the decoder: errors, never panics;
// decoding allocates at most the payload's budget, IndexBudget(len(p)) (plus
// decodeOverhead), a small factor of its size; what decodes must encode and decode to the
// same index.
func FuzzDecodeIndex(f *testing.F) {
	payload, _ := seedIndex(f)
	f.Add(payload)
	f.Add(payload[:indexHeaderLen])
	names := sharedPrefixBody(300)
	f.Add(payloadOf(f, names, uint64(len(names))))
	counts := manyCountsBody(64<<10, 4<<10, 0, 7<<10, 0)
	f.Add(payloadOf(f, counts, uint64(len(counts))))
	f.Fuzz(func(t *testing.T, p []byte) {
		ix, err := testutil.DecodeWithin(t, p, uint64(IndexBudget(len(p)))+decodeOverhead, DecodeIndex)
		if err != nil {
			return
		}
		checkReencode(t, ix)
	})
}

// FuzzDecodeBody skips the zstd layer so mutations reach the body parser, with a budget
// tight enough for mutations to meet: 4 times the body plus 64 KiB. Decoding allocates at
// most that (plus decodeOverhead), as a body of either version.
func FuzzDecodeBody(f *testing.F) {
	payload, body := seedIndex(f)
	f.Add(body)
	ix, err := DecodeIndex(payload)
	if err != nil {
		f.Fatal(err)
	}
	ix.RunDigests = nil
	if v1, err := ix.encodeBody(); err == nil {
		f.Add(v1)
	}
	f.Add([]byte{0, 0, 0})
	f.Add([]byte{1, 1, 0, 3, 0, 1, 'a', '0', 0, 0, 0, 0, 0, 0})
	f.Add(sharedPrefixBody(4))
	f.Add(manyCountsBody(4<<10, 64, 0, 400, 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		var ix *Index
		var err error
		budget := 4*int64(len(b)) + 64<<10
		for _, v := range []int{IndexVersion2, IndexVersion1} {
			n := testutil.Allocated(func() { ix, err = decodeBody(b, budget, v) })
			if limit := uint64(budget) + decodeOverhead; n > limit {
				t.Fatalf("decoding a %d-byte version %d body allocated %d, over the bound of %d (err %v)", len(b), v, n, limit, err)
			}
			if err == nil {
				break
			}
		}
		if err != nil {
			return
		}
		checkReencode(t, ix)
		for i := range ix.Entries {
			e := &ix.Entries[i]
			if e.Type == typeLink {
				ix.Content(e) // must terminate and not panic
			}
			ix.Chunks(e)
		}
	})
}

func checkReencode(t *testing.T, ix *Index) {
	t.Helper()
	p, err := ix.Encode()
	if errors.Is(err, errOverBudget) {
		// Encoded better than the input was (or the input came without a payload):
		// over the new payload's budget, which the encoder checks as the decoder would.
		return
	}
	if err != nil {
		t.Fatalf("re-encode a decoded index: %v", err)
	}
	ix2, err := DecodeIndex(p)
	if err != nil {
		t.Fatalf("decode a re-encoded index: %v", err)
	}
	if (ix2.RunDigests == nil) != (ix.RunDigests == nil) || !slices.Equal(ix2.RunDigests, ix.RunDigests) {
		t.Fatalf("re-encoded index has run digests %v, want %v", ix2.RunDigests, ix.RunDigests)
	}
	if len(ix2.Entries) != len(ix.Entries) || len(ix2.Frames) != len(ix.Frames) || len(ix2.Digests) != len(ix.Digests) {
		t.Fatalf("re-encoded index differs: %d/%d/%d vs %d/%d/%d", len(ix2.Entries), len(ix2.Frames), len(ix2.Digests), len(ix.Entries), len(ix.Frames), len(ix.Digests))
	}
	for i := range ix.Entries {
		a, b := &ix.Entries[i], &ix2.Entries[i]
		if a.Name != b.Name || a.Size != b.Size || a.Digest != b.Digest || a.Linkname != b.Linkname || a.FirstFrame != b.FirstFrame {
			t.Fatalf("entry %d differs after re-encoding: %+v vs %+v", i, a, b)
		}
	}
}

// FuzzWrite feeds hostile tar streams to the writer: an error or a layer that
// decompresses to the input and whose every file reads back as archive/tar reads it.
func FuzzWrite(f *testing.F) {
	f.Add(edgeCases(f)[:20480])
	var small bytes.Buffer
	tw := tar.NewWriter(&small)
	tw.WriteHeader(&tar.Header{Name: "../../x", Size: 3, Mode: 0o644})
	tw.Write([]byte("abc"))
	tw.WriteHeader(&tar.Header{Name: "l", Typeflag: tar.TypeLink, Linkname: "l"})
	tw.Close()
	f.Add(small.Bytes())
	dec, _ := zstd.NewReader(nil)
	f.Fuzz(func(t *testing.T, src []byte) {
		var out bytes.Buffer
		res, err := Write(context.Background(), &out, bytes.NewReader(src), WithConcurrency(2))
		if err != nil {
			return
		}
		plain, err := dec.DecodeAll(out.Bytes(), nil)
		if err != nil || !bytes.Equal(plain, src) {
			t.Fatalf("layer does not decompress to its input: %v", err)
		}
		l, err := Open(bytes.NewReader(out.Bytes()), int64(out.Len()), res.Annotations())
		if err != nil {
			t.Fatalf("open written layer: %v", err)
		}
		for i := range l.Index.Entries {
			e := &l.Index.Entries[i]
			if e.Type == typeReg && !e.Sparse {
				if _, err := l.ReadFile(e); err != nil {
					t.Fatalf("read %q: %v", e.Name, err)
				}
			}
		}
	})
}

// FuzzOpen opens arbitrary blobs as layers through the footer.
func FuzzOpen(f *testing.F) {
	blob, _ := convert(f, edgeCases(f))
	f.Add(blob[len(blob)-4096:])
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := Open(bytes.NewReader(b), int64(len(b)), nil)
		if err != nil {
			return
		}
		for i := range l.Index.Entries {
			l.ReadFile(&l.Index.Entries[i])
		}
	})
}
