package daemon

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"lazypull/internal/profile"
	"lazypull/internal/store"
	"lazypull/internal/testutil"
)

// TestIndexedLargeFileStored: a file over wholeFileMax bytes of an unconverted image is
// stored by the spans of the tar stream that hold it as it is read: it reads back as
// the tar has it (whole in order, and at random offsets across spans), the layer's usage
// counts its spans, and once read it is served by a new open of the image over the store
// opened again without asking the registry for any of it.
func TestIndexedLargeFileStored(t *testing.T) {
	ref, files, _ := indexedFixture(t)
	big := files["usr/lib/libbig.so"]
	dir := t.TempDir()
	open := func() (*Image, *store.Store) {
		st, err := store.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		im, err := OpenImage(t.Context(), st, ref, OpenOptions{Client: testClient(t)})
		if err != nil {
			st.Close()
			t.Fatal(err)
		}
		return im, st
	}
	im, st := open()
	l := im.indexed[0]
	if h := l.held(); h.Bytes >= int64(len(big)) {
		t.Fatalf("before any read the store holds %d bytes of the layer", h.Bytes)
	}
	rnd := rand.New(rand.NewPCG(3, 4))
	e, _ := l.Index.Lookup("usr/lib/libbig.so")
	for range 40 {
		off := rnd.Int64N(int64(len(big)))
		n := min(1+rnd.Int64N(300<<10), int64(len(big))-off)
		p := make([]byte, n)
		if got, err := l.ReadAt(t.Context(), e, p, off); int64(got) != n || (err != nil && !errors.Is(err, io.EOF)) || !bytes.Equal(p, big[off:off+n]) {
			t.Fatalf("read of %d bytes at %d: %d, %v; equal %v", n, off, got, err, bytes.Equal(p[:got], big[off:off+int64(got)]))
		}
	}
	got, err := readIndexed(t, im.FSLayers(), "usr/lib/libbig.so")
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("large file: %d bytes, %v", len(got), err)
	}
	// Verified spans are stored by the store's background writers.
	testutil.WaitFor(t, time.Minute, "the large file's spans in the store", func() bool { return l.held().Bytes >= int64(len(big)) })
	im.Close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	im, st = open()
	defer st.Close()
	defer im.Close()
	before := im.Registry.Stats()
	got, err = readIndexed(t, im.FSLayers(), "usr/lib/libbig.so")
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("large file after the store's reopen: %d bytes, %v", len(got), err)
	}
	if after := im.Registry.Stats(); after.Requests != before.Requests {
		t.Errorf("reading the stored large file again made %d requests, %d bytes", after.Requests-before.Requests, after.Bytes-before.Bytes)
	}
}

// TestPrefetchIndexedLargeFile: the profiled ranges of a large file of an unconverted
// image are prefetched, the spans that hold them fetched together in few requests: reading
// them then asks the registry for nothing, and a range the profile does not name is
// still fetched when read.
func TestPrefetchIndexedLargeFile(t *testing.T) {
	ref, files, art := indexedFixture(t)
	big := files["usr/lib/libbig.so"]
	var ranges []profile.Range
	for off := int64(0); off < 2<<20; off += 128 << 10 { // 16 ranges, one span apart
		ranges = append(ranges, profile.Range{Off: off, Len: 4 << 10})
	}
	p := &profile.Profile{Subject: art.Image.Digest.String(), Created: time.Now().UTC().Truncate(time.Second),
		Layers: []string{art.Layers[0].Layer.Digest.String(), art.Layers[1].Layer.Digest.String()},
		Files:  []profile.File{{Layer: 0, Path: "usr/lib/libbig.so", Ranges: ranges}}}
	pushProfile(t, ref, art.Image, p, nil)
	im, ps := openPrefetched(t, ref)
	if last := ranges[len(ranges)-1]; ps.Files != 1 || ps.Bytes < last.End() || ps.Err != "" {
		t.Fatalf("prefetch %+v; want the large file's spans, %d bytes at least", ps, last.End())
	}
	if ps.Requests != 1 {
		t.Errorf("the prefetch made %d requests; want the spans fetched in one", ps.Requests)
	}
	l := im.indexed[0]
	e, _ := l.Index.Lookup("usr/lib/libbig.so")
	read := func(off, n int64) int64 {
		t.Helper()
		before := im.Registry.Stats().Requests
		b := make([]byte, n)
		if got, err := l.ReadAt(context.Background(), e, b, off); int64(got) != n || err != nil || !bytes.Equal(b, big[off:off+n]) {
			t.Fatalf("read of %d bytes at %d: %d, %v", n, off, got, err)
		}
		return im.Registry.Stats().Requests - before
	}
	for _, r := range ranges {
		if k := read(r.Off, r.Len); k != 0 {
			t.Errorf("reading the profiled range at %d made %d requests", r.Off, k)
		}
	}
	if k := read(5<<20, 4<<10); k == 0 {
		t.Error("reading a range the profile does not name made no request: the test proves nothing")
	}
}
