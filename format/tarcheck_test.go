package format

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"lazypull/internal/testutil"
)

// checkAllRuns checks every header run of a layer blob as a lazy reader does: the run's
// frames read from the blob, decompressed, and handed to CheckRun.
func checkAllRuns(t *testing.T, blob []byte, ix *Index) error {
	t.Helper()
	runs, runOf, err := ix.HeaderRuns()
	if err != nil {
		return err
	}
	for i := range ix.Entries {
		r := runs[runOf[i]]
		if i < r.FirstEntry || i >= r.EndEntry {
			t.Fatalf("entry %d mapped to run %+v", i, r)
		}
	}
	for _, r := range runs {
		b, err := runBytes(blob, ix, r)
		if err != nil {
			return err
		}
		if err := ix.CheckRun(r, bytes.NewReader(b)); err != nil {
			return err
		}
	}
	return nil
}

// runBytes decompresses the header bytes of run r of the layer blob, whose index is ix.
func runBytes(blob []byte, ix *Index, r HeaderRun) ([]byte, error) {
	first := ix.Frames[r.FirstFrame]
	fr, err := ix.SplitRun(r, blob[first.Offset:first.Offset+r.CompSize(ix)])
	if err != nil {
		return nil, err
	}
	return ix.HeaderRunBytes(r, fr)
}

// manyHeaders is a tar whose headers between two files take several header frames.
func manyHeaders(t *testing.T) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mt := time.Unix(1700000000, 0)
	write := func(h tar.Header, body []byte) {
		h.Size = int64(len(body))
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write(body)
	}
	write(tar.Header{Typeflag: tar.TypeReg, Name: "first", Mode: 0o644, ModTime: mt}, []byte("x"))
	for i := range 3000 {
		write(tar.Header{Typeflag: tar.TypeSymlink, Name: fmt.Sprintf("links/%05d", i), Linkname: "../first", ModTime: mt}, nil)
	}
	write(tar.Header{Typeflag: tar.TypeReg, Name: "last", Mode: 0o644, ModTime: mt}, testutil.RandBytes(9, 100_000))
	tw.Close()
	return buf.Bytes()
}

func TestCheckRunsClean(t *testing.T) {
	srcs := map[string][]byte{"edge": edgeCases(t), "headers": manyHeaders(t), "empty": nil}
	for name, src := range srcs {
		t.Run(name, func(t *testing.T) {
			blob, res := convert(t, src)
			l, err := Open(bytes.NewReader(blob), int64(len(blob)), res.Annotations())
			if err != nil {
				t.Fatal(err)
			}
			if name == "headers" && len(l.Index.Frames) < 4 {
				t.Fatalf("want a run of several header frames, got %d frames", len(l.Index.Frames))
			}
			if err := checkAllRuns(t, blob, l.Index); err != nil {
				t.Fatalf("a layer as written does not match its own index: %v", err)
			}
			c, err := VerifyLayer(bytes.NewReader(blob), l.Index, res.IndexOffset)
			if err != nil {
				t.Fatalf("VerifyLayer: %v", err)
			}
			if c.Blob.String() != res.Digest || c.DiffID.String() != res.DiffID || c.Entries != res.Entries || c.Chunks != res.Chunks {
				t.Fatalf("VerifyLayer = %+v, written %+v", c, res)
			}
		})
	}
}

func TestCheckRunsSparse(t *testing.T) {
	for name, src := range gnuSparse(t) {
		t.Run(name, func(t *testing.T) {
			blob, res := convert(t, src)
			l, err := Open(bytes.NewReader(blob), int64(len(blob)), res.Annotations())
			if err != nil {
				t.Fatal(err)
			}
			if err := checkAllRuns(t, blob, l.Index); err != nil {
				t.Fatal(err)
			}
			ix := freshIndex(t, blob, res)
			ix.Entries[0].TarLen--
			if err := checkAllRuns(t, blob, ix); !isMismatch(err, "sparse", "sparse record") {
				t.Fatalf("sparse record moved: %v", err)
			}
		})
	}
}

func isMismatch(err error, entry, field string) bool {
	var m *MismatchError
	return errors.As(err, &m) && m.Entry == entry && m.Field == field
}

// TestCheckRunsMismatch edits a decoded index as a crafted one would say it and checks
// that the run holding the edited entry fails, naming the entry and the field.
func TestCheckRunsMismatch(t *testing.T) {
	src := edgeCases(t)
	blob, res := convert(t, src)
	find := func(ix *Index, name string) *Entry {
		for i := len(ix.Entries) - 1; i >= 0; i-- {
			if ix.Entries[i].Name == name {
				return &ix.Entries[i]
			}
		}
		t.Fatalf("no entry %q", name)
		return nil
	}
	cases := []struct {
		name, entry, field string
		edit               func(ix *Index)
	}{
		{"renamed file", "usr/bin/sh2", "name", func(ix *Index) { find(ix, "usr/bin/sudo").Name = "usr/bin/sh2" }},
		{"mode", "usr/bin/sgid", "mode", func(ix *Index) { find(ix, "usr/bin/sgid").Mode = 0o4755 }},
		{"uid", "etc/empty", "uid", func(ix *Index) { find(ix, "etc/empty").UID = 0 }},
		{"gid", "etc/empty", "gid", func(ix *Index) { find(ix, "etc/empty").GID = 0 }},
		{"symlink target", "usr/bin/sh", "link", func(ix *Index) { find(ix, "usr/bin/sh").Linkname = "/bin/bash" }},
		{"hard link target", "usr/bin/sudo-link", "link", func(ix *Index) { find(ix, "usr/bin/sudo-link").Linkname = "usr/lib/big.so" }},
		{"device", "dev/null", "device", func(ix *Index) { find(ix, "dev/null").Devminor = 5 }},
		{"type", "run/fifo", "type", func(ix *Index) { find(ix, "run/fifo").Type = '3' }},
		{"xattrs", "bin/ping", "xattrs", func(ix *Index) { find(ix, "bin/ping").Xattrs = nil }},
		{"mtime", "usr/lib/big.so", "mtime", func(ix *Index) { find(ix, "usr/lib/big.so").ModNsec = 0 }},
		{"empty file digest", "etc/empty", "digest", func(ix *Index) { find(ix, "etc/empty").Digest = Digest{1} }},
		{"size", "usr/bin/sgid", "size", func(ix *Index) { find(ix, "usr/bin/sgid").Size++ }},
		{"dropped entry", "usr/bin/link-of-link", "name", func(ix *Index) {
			i := slicesIndex(ix, find(ix, "usr/bin/sudo-link"))
			ix.Entries = append(ix.Entries[:i:i], ix.Entries[i+1:]...)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ix := freshIndex(t, blob, res)
			c.edit(ix)
			err := checkAllRuns(t, blob, ix)
			if !isMismatch(err, c.entry, c.field) {
				t.Fatalf("got %v, want a mismatch of %s on %q", err, c.field, c.entry)
			}
			if _, err := VerifyLayer(bytes.NewReader(blob), ix, res.IndexOffset); !isMismatch(err, c.entry, c.field) {
				t.Fatalf("VerifyLayer: got %v, want a mismatch of %s on %q", err, c.field, c.entry)
			}
		})
	}
}

func slicesIndex(ix *Index, e *Entry) int {
	for i := range ix.Entries {
		if &ix.Entries[i] == e {
			return i
		}
	}
	return -1
}

// freshIndex decodes the layer's index anew: Open shares decoded indexes by digest, and
// the tests edit theirs.
func freshIndex(t *testing.T, blob []byte, res *Result) *Index {
	t.Helper()
	ix, err := DecodeIndex(blob[res.IndexOffset : res.IndexOffset+res.IndexSize])
	if err != nil {
		t.Fatal(err)
	}
	return ix
}

// TestCheckRunsSwappedContent is the attack of issue 13: the index names the frames of one
// file under another's name (here the names of bin/bash and bin/sh swapped, so that
// bin/sh would serve bash). Only the runs holding the two fail; the rest check out.
func TestCheckRunsSwappedContent(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct{ name, body string }{{"bin/bash", "#!bash"}, {"bin/sh", "#!sh, the real one"}, {"etc/motd", "hi"}} {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o755, Size: int64(len(f.body))})
		tw.Write([]byte(f.body))
	}
	tw.Close()
	blob, res := convert(t, buf.Bytes())
	ix := freshIndex(t, blob, res)
	ix.Entries[0].Name, ix.Entries[1].Name = ix.Entries[1].Name, ix.Entries[0].Name
	runs, runOf, err := ix.HeaderRuns()
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range ix.Entries {
		r := runs[runOf[i]]
		b, err := runBytes(blob, ix, r)
		if err != nil {
			t.Fatal(err)
		}
		err = ix.CheckRun(r, bytes.NewReader(b))
		if want := e.Name != "etc/motd"; want != isMismatch(err, e.Name, "name") {
			t.Errorf("entry %q: %v", e.Name, err)
		}
	}
}

// FuzzCheckRuns: whatever tar stream the writer takes, the layer it writes matches its own
// index, run by run and whole (the checks never refuse an honest layer), and VerifyLayer
// finds the digests the writer reported. Then one byte of the stream's header frames is
// changed: the checks may refuse it or not (a byte of padding is not described), but must
// not fail in any other way than an error.
func FuzzCheckRuns(f *testing.F) {
	f.Add(edgeCases(f)[:20480], uint16(700))
	var small bytes.Buffer
	tw := tar.NewWriter(&small)
	tw.WriteHeader(&tar.Header{Name: "a", Size: 3, Mode: 0o644, PAXRecords: map[string]string{"SCHILY.xattr.user.x": "y"}})
	tw.Write([]byte("abc"))
	tw.WriteHeader(&tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "a"})
	tw.Close()
	f.Add(small.Bytes(), uint16(3))
	f.Fuzz(func(t *testing.T, src []byte, flip uint16) {
		var out bytes.Buffer
		res, err := Write(context.Background(), &out, bytes.NewReader(src), WithConcurrency(1))
		if err != nil {
			return
		}
		blob := out.Bytes()
		ix := freshIndex(t, blob, res)
		if err := checkAllRuns(t, blob, ix); err != nil {
			t.Fatalf("a layer as written does not match its own index: %v", err)
		}
		c, err := VerifyLayer(bytes.NewReader(blob), ix, res.IndexOffset)
		if err != nil || c.Blob.String() != res.Digest || c.DiffID.String() != res.DiffID {
			t.Fatalf("VerifyLayer: %+v, %v; written %+v", c, err, res)
		}
		// A header run's bytes changed after decompression: CheckRun on them.
		runs, _, err := ix.HeaderRuns()
		if err != nil || len(runs) == 0 {
			return
		}
		r := runs[int(flip)%len(runs)]
		data, err := runBytes(blob, ix, r)
		if err != nil {
			t.Fatal(err)
		}
		data[int(flip)%len(data)] ^= 0x41
		_ = ix.CheckRun(r, bytes.NewReader(data))
	})
}
