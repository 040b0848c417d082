package store

import (
	"context"
	"slices"
	"testing"

	"lazypull/format"
	"lazypull/internal/testutil"
)

func TestHeldOf(t *testing.T) {
	l, src, s := mixedStore(t, 51)
	all := l.all()
	if h := s.HeldOf(slices.Values(all)); h.Bytes != 0 || h.Objects != 0 {
		t.Fatalf("empty store holds %+v", h)
	}
	c0 := s.Changes()
	// Part of a multi-chunk file: its chunks count, each once.
	f := l.files["many-chunks"]
	buf := make([]byte, 100)
	if _, err := s.ReadAt(context.Background(), src, f, buf, f.Size/2); err != nil {
		t.Fatal(err)
	}
	s.idle()
	part := s.HeldOf(slices.Values([]File{f, f}))
	if part.Bytes <= 0 || part.Bytes >= f.Size {
		t.Fatalf("a file read in part holds %+v of %d bytes", part, f.Size)
	}
	if s.Changes() == c0 {
		t.Error("Changes did not move when chunks were stored")
	}
	if err := s.Fill(context.Background(), src, all...); err != nil {
		t.Fatal(err)
	}
	s.idle()
	meta, err := s.PutMeta([]byte(`{"an":"index"}`))
	if err != nil {
		t.Fatal(err)
	}
	h := s.HeldOf(slices.Values(all), meta, meta)
	st := s.Stats()
	if h.Bytes != st.Bytes || h.Objects != st.Objects+st.Meta {
		t.Errorf("all files and the metadata hold %+v; the store has %+v", h, st)
	}
	if h := s.HeldOf(slices.Values([]File{f})); h.Bytes != f.Size || h.Objects != 1 {
		t.Errorf("a complete file holds %+v, want %d bytes in 1 object", h, f.Size)
	}
}

func TestPruneKeeping(t *testing.T) {
	// Two layers share a chunk-holding file; each has files of its own.
	shared := testutil.RandBytes(61, 700_000)
	a := buildLayer(t, tfile{"shared", shared}, tfile{"a-only", testutil.RandBytes(62, 300_000)})
	b := buildLayer(t, tfile{"shared", shared}, tfile{"b-only", testutil.RandBytes(63, 300_000)})
	s := openStore(t, t.TempDir())
	for _, l := range []*testLayer{a, b} {
		for _, name := range l.names {
			if err := s.Fill(context.Background(), newSource(l), l.files[name]); err != nil {
				t.Fatal(err)
			}
		}
	}
	metaA, _ := s.PutMeta([]byte("index of a"))
	metaB, _ := s.PutMeta([]byte("index of b"))
	s.idle()
	keepB := Keep{Files: []File{b.files["shared"], b.files["b-only"]}, Meta: []format.Digest{metaB}}
	res, err := s.PruneKeeping(context.Background(), 0, keepB)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.LocalPath(a.files["a-only"]); ok {
		t.Error("a file no kept image uses survived the prune")
	}
	if s.HasMeta(metaA) {
		t.Error("metadata no kept image uses survived the prune")
	}
	for _, name := range b.names {
		if _, ok := s.LocalPath(b.files[name]); !ok {
			t.Errorf("kept file %s pruned", name)
		}
	}
	if !s.HasMeta(metaB) {
		t.Error("kept metadata pruned")
	}
	if res.Objects != 2 {
		t.Errorf("pruned %+v, want a's own file and index", res)
	}
	// The pins were for the prune only: a plain prune takes the rest.
	if _, err := s.Prune(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Bytes != 0 || st.PinnedBytes != 0 {
		t.Errorf("after a plain prune: %+v", st)
	}
	if _, err := s.PruneKeeping(context.Background(), -1, Keep{}); err == nil {
		t.Error("negative target accepted")
	}
}

// A file of the kept set whose chunks lie in another file's multi-chunk object keeps that
// object.
func TestPruneKeepingChunkHolder(t *testing.T) {
	big := testutil.RandBytes(71, 900_000)
	l := buildLayer(t, tfile{"big", big}, tfile{"big-copy", append(slices.Clone(big), 'x')})
	s := openStore(t, t.TempDir())
	if err := s.Fill(context.Background(), newSource(l), l.files["big"]); err != nil {
		t.Fatal(err)
	}
	s.idle()
	copyFile := l.files["big-copy"]
	before := s.HeldOf(slices.Values([]File{copyFile}))
	if before.Bytes == 0 {
		t.Skip("the chunker cut the copy differently: no shared chunks")
	}
	if _, err := s.PruneKeeping(context.Background(), 0, Keep{Files: []File{copyFile}}); err != nil {
		t.Fatal(err)
	}
	if after := s.HeldOf(slices.Values([]File{copyFile})); after.Bytes != before.Bytes {
		t.Errorf("kept file's local chunks went from %d to %d bytes", before.Bytes, after.Bytes)
	}
}
