package format

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"lazypull/internal/testutil"
)

// edgeCases is a tar stream with every kind of entry a layer can hold.
func edgeCases(t testing.TB) []byte {
	t.Helper()
	mt := time.Date(2024, 2, 29, 12, 34, 56, 0, time.UTC)
	long := strings.Repeat("very-long-directory-name/", 12) + "file.txt"
	entries := []testutil.Entry{
		{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: "./", Mode: 0o755, ModTime: mt}},
		{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755, ModTime: mt}},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/hostname", Mode: 0o644, ModTime: mt}, Body: []byte("lazypull\n")},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/empty", Mode: 0o600, Uid: 1000, Gid: 1000, Uname: "u", Gname: "g", ModTime: mt}},
		{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: "usr/bin/", Mode: 0o755, ModTime: mt}},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "usr/bin/sudo", Mode: 0o4755, ModTime: mt}, Body: testutil.RandBytes(1, 70_000)},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "usr/bin/sgid", Mode: 0o2711 | 0o1000, Uid: 65534, Gid: 4_000_000, ModTime: mt}, Body: []byte("#!/bin/sh\n")},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "usr/lib/big.so", Mode: 0o644, ModTime: time.Date(2023, 1, 1, 0, 0, 0, 123456789, time.UTC), Format: tar.FormatPAX}, Body: testutil.RandBytes(2, 3<<20+12345)},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "usr/lib/zeros", Mode: 0o644, ModTime: mt}, Body: make([]byte, 1<<20)},
		{Hdr: tar.Header{Typeflag: tar.TypeLink, Name: "usr/bin/sudo-link", Linkname: "usr/bin/sudo", ModTime: mt}},
		{Hdr: tar.Header{Typeflag: tar.TypeLink, Name: "usr/bin/link-of-link", Linkname: "./usr/bin/sudo-link", ModTime: mt}},
		{Hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "usr/bin/sh", Linkname: "/bin/dash", Mode: 0o777, ModTime: mt}},
		{Hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "usr/bin/rel", Linkname: "../lib/big.so", Mode: 0o777, ModTime: mt}},
		{Hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: mt}},
		{Hdr: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/sda", Mode: 0o660, Devmajor: 8, Devminor: 0, ModTime: mt}},
		{Hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "run/fifo", Mode: 0o600, ModTime: mt}},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "bin/ping", Mode: 0o755, ModTime: mt, PAXRecords: map[string]string{
			"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00",
			"SCHILY.xattr.user.comment":        "hello",
		}}, Body: []byte("\x7fELF")},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "var/lib/.wh.removed", Mode: 0o600, ModTime: mt}},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "opt/app/.wh..wh..opq", Mode: 0o600, ModTime: mt}},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: long, Mode: 0o644, ModTime: mt}, Body: []byte("long name")},
		{Hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "long-target", Linkname: long + "/" + long, ModTime: mt}},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "data/caf\xe9-latin1.txt", Mode: 0o644, ModTime: mt}, Body: []byte("non-UTF-8 name")},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "data/日本語.txt", Mode: 0o644, ModTime: mt, Format: tar.FormatPAX}, Body: []byte("UTF-8 name")},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "data/old", Mode: 0o644, ModTime: time.Unix(-86400*365, 0)}, Body: []byte("before 1970")},
		// Hostile names stay in the stream as they were; the index confines them.
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "/abs/path", Mode: 0o644, ModTime: mt}, Body: []byte("absolute")},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "../../escape", Mode: 0o644, ModTime: mt}, Body: []byte("dot-dot")},
		{Hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "data/out", Linkname: "../../../../etc/shadow", ModTime: mt}},
		{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/hostname", Mode: 0o644, ModTime: mt}, Body: []byte("second copy wins\n")},
	}
	b := testutil.Tar(t, entries...)
	// Real tar writers pad to a 10 KiB record; keep such a tail byte for byte.
	return append(b, make([]byte, 10240-len(b)%10240)...)
}

// gnuSparse builds tar streams with sparse files using GNU tar, in both GNU and PAX form.
func gnuSparse(t *testing.T) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, fm := range []string{"gnu", "pax", "posix"} {
		out[fm] = testutil.SparseTar(t, fm, 8<<20, randomAt(0, 1<<20, 5<<20), map[string][]byte{"after": []byte("after the sparse file")})
	}
	return out
}

func convert(t testing.TB, src []byte, opts ...WriterOption) ([]byte, *Result) {
	t.Helper()
	var out bytes.Buffer
	res, err := Write(context.Background(), &out, bytes.NewReader(src), opts...)
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	return out.Bytes(), res
}

func TestRoundTripEdgeCases(t *testing.T) {
	src := edgeCases(t)
	for _, conc := range []int{1, 4} {
		t.Run(fmt.Sprintf("concurrency=%d", conc), func(t *testing.T) {
			checkRoundTrip(t, src, WithConcurrency(conc))
		})
	}
}

func TestRoundTripSparse(t *testing.T) {
	for name, src := range gnuSparse(t) {
		t.Run(name, func(t *testing.T) {
			ix := checkRoundTrip(t, src)
			e, ok := ix.Lookup("sparse")
			if !ok || !e.Sparse || e.Size != 8<<20 {
				t.Fatalf("sparse entry: %+v, %v", e, ok)
			}
		})
	}
}

// checkRoundTrip converts src and checks that the layer decompresses to src byte for byte
// (so it unpacks to the same tree and keeps the diff ID), and that the index describes
// every entry as archive/tar reads it, with the same content.
func checkRoundTrip(t *testing.T, src []byte, opts ...WriterOption) *Index {
	t.Helper()
	blob, res := convert(t, src, opts...)

	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	plain, err := dec.DecodeAll(blob, nil)
	if err != nil {
		t.Fatalf("decompress layer: %v", err)
	}
	if !bytes.Equal(plain, src) {
		t.Fatalf("layer decompresses to %d bytes that differ from the %d-byte source", len(plain), len(src))
	}
	if want := Digest(sha256.Sum256(src)).String(); res.DiffID != want {
		t.Errorf("DiffID %s, want %s", res.DiffID, want)
	}
	if want := Digest(sha256.Sum256(blob)).String(); res.Digest != want || res.Size != int64(len(blob)) {
		t.Errorf("Digest/Size %s/%d, want %s/%d", res.Digest, res.Size, want, len(blob))
	}
	if zstdCLI, err := exec.LookPath("zstd"); err == nil {
		cmd := exec.Command(zstdCLI, "-dc")
		cmd.Stdin = bytes.NewReader(blob)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("zstd -dc: %v", err)
		}
		if !bytes.Equal(out, src) {
			t.Fatalf("zstd -dc gives %d bytes that differ from the source", len(out))
		}
	} else {
		t.Logf("SKIP part: zstd CLI not installed (run make deps)")
	}

	// Through the annotations (one read) and through the footer alone.
	byAnn, err := Open(bytes.NewReader(blob), int64(len(blob)), res.Annotations())
	if err != nil {
		t.Fatalf("open by annotations: %v", err)
	}
	byFooter, err := Open(bytes.NewReader(blob), int64(len(blob)), nil)
	if err != nil {
		t.Fatalf("open by footer: %v", err)
	}
	if len(byAnn.Index.Entries) != len(byFooter.Index.Entries) || len(byAnn.Index.Entries) != res.Entries {
		t.Fatalf("entries: %d by annotations, %d by footer, %d written", len(byAnn.Index.Entries), len(byFooter.Index.Entries), res.Entries)
	}
	l := byAnn
	ix := l.Index

	tr := tar.NewReader(bytes.NewReader(src))
	n := 0
	for ; ; n++ {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		content, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		e := &ix.Entries[n]
		if want := CleanName(h.Name); e.Name != want {
			t.Fatalf("entry %d: name %q, want %q", n, e.Name, want)
		}
		if slices.Contains(strings.Split(e.Name, "/"), "..") || strings.HasPrefix(e.Name, "/") {
			t.Errorf("entry %q escapes the root", e.Name)
		}
		if e.Mode != h.Mode&0o7777 || e.UID != h.Uid || e.GID != h.Gid || e.ModSec != h.ModTime.Unix() || int(e.ModNsec) != h.ModTime.Nanosecond() {
			t.Errorf("%q: mode/uid/gid/mtime %o/%d/%d/%d.%d, want %o/%d/%d/%v", e.Name, e.Mode, e.UID, e.GID, e.ModSec, e.ModNsec, h.Mode, h.Uid, h.Gid, h.ModTime)
		}
		if e.Devmajor != h.Devmajor || e.Devminor != h.Devminor {
			t.Errorf("%q: device %d,%d, want %d,%d", e.Name, e.Devmajor, e.Devminor, h.Devmajor, h.Devminor)
		}
		var xattrs int
		for k, v := range h.PAXRecords {
			if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				xattrs++
				found := false
				for _, x := range e.Xattrs {
					found = found || (x.Name == name && x.Value == v)
				}
				if !found {
					t.Errorf("%q: xattr %s missing", e.Name, name)
				}
			}
		}
		if xattrs != len(e.Xattrs) {
			t.Errorf("%q: %d xattrs, want %d", e.Name, len(e.Xattrs), xattrs)
		}
		switch h.Typeflag {
		case tar.TypeSymlink:
			if e.Linkname != h.Linkname || !e.IsSymlink() {
				t.Errorf("%q: symlink to %q, want %q", e.Name, e.Linkname, h.Linkname)
			}
		case tar.TypeLink:
			if !e.IsHardlink() || e.Linkname != CleanName(h.Linkname) {
				t.Errorf("%q: hard link to %q, want %q", e.Name, e.Linkname, h.Linkname)
			}
		case tar.TypeReg, tar.TypeGNUSparse:
			if !e.IsRegular() || e.Size != h.Size {
				t.Fatalf("%q: type %q size %d, want a file of %d bytes", e.Name, e.Type, e.Size, h.Size)
			}
			if e.Digest != sha256.Sum256(content) {
				t.Errorf("%q: file digest %s is wrong", e.Name, e.Digest)
			}
			if len(content) > 0 || e.Sparse {
				got, err := l.ReadFile(e)
				if err != nil {
					t.Fatalf("ReadFile(%q): %v", e.Name, err)
				}
				if !bytes.Equal(got, content) {
					t.Fatalf("ReadFile(%q): %d bytes differ from the %d in the tar", e.Name, len(got), len(content))
				}
			}
		default:
			if e.Type != h.Typeflag {
				t.Errorf("%q: type %q, want %q", e.Name, e.Type, h.Typeflag)
			}
		}
	}
	if n != len(ix.Entries) {
		t.Fatalf("index has %d entries, tar %d", len(ix.Entries), n)
	}
	return ix
}

func TestIndexLookupAndLinks(t *testing.T) {
	blob, res := convert(t, edgeCases(t))
	l, err := Open(bytes.NewReader(blob), int64(len(blob)), res.Annotations())
	if err != nil {
		t.Fatal(err)
	}
	ix := l.Index
	for _, p := range []string{"/etc/hostname", "etc/hostname", "./etc/../etc/hostname", "../etc/hostname"} {
		e, ok := ix.Lookup(p)
		if !ok {
			t.Fatalf("Lookup(%q): not found", p)
		}
		got, err := l.ReadFile(e)
		if err != nil || string(got) != "second copy wins\n" {
			t.Fatalf("Lookup(%q): %q, %v; want the last copy", p, got, err)
		}
	}
	for _, p := range []string{"abs/path", "escape"} {
		if _, ok := ix.Lookup(p); !ok {
			t.Errorf("hostile name confined to %q: not found", p)
		}
	}
	link, _ := ix.Lookup("usr/bin/link-of-link")
	target, err := ix.Content(link)
	if err != nil || target.Name != "usr/bin/sudo" {
		t.Fatalf("Content(link-of-link) = %v, %v", target, err)
	}
	big, _ := ix.Lookup("usr/lib/big.so")
	chunks := ix.Chunks(big)
	if len(chunks) < 4 {
		t.Fatalf("3 MiB file in %d chunks; want content-defined chunks", len(chunks))
	}
	var off int64
	for _, c := range chunks {
		if c.FileOffset != off {
			t.Fatalf("chunk at file offset %d, want %d", c.FileOffset, off)
		}
		off += c.Size
	}
}

func TestCorruption(t *testing.T) {
	src := edgeCases(t)
	blob, res := convert(t, src)
	l, err := Open(bytes.NewReader(blob), int64(len(blob)), res.Annotations())
	if err != nil {
		t.Fatal(err)
	}
	big, _ := l.Index.Lookup("usr/lib/big.so")
	c := l.Index.Chunks(big)[1]

	t.Run("flipped byte in a chunk", func(t *testing.T) {
		bad := bytes.Clone(blob)
		bad[c.Offset+c.CompSize/2] ^= 0x40
		l2 := &Layer{ra: bytes.NewReader(bad), size: int64(len(bad)), Index: l.Index}
		if _, err := l2.ReadChunk(nil, c); err == nil || !strings.Contains(err.Error(), c.Digest.String()) {
			t.Fatalf("ReadChunk of a corrupt frame: %v; want an error naming the chunk", err)
		}
	})
	t.Run("wrong chunk in place", func(t *testing.T) {
		other := l.Index.Chunks(big)[2]
		c2 := c
		c2.Offset, c2.CompSize = other.Offset, other.CompSize
		if _, err := l.ReadChunk(nil, c2); err == nil {
			t.Fatal("a frame decoded against another chunk's digest was accepted")
		}
	})
	t.Run("flipped byte in the index", func(t *testing.T) {
		bad := bytes.Clone(blob)
		bad[res.IndexOffset+res.IndexSize/2] ^= 1
		for _, ann := range []map[string]string{res.Annotations(), nil} {
			if _, err := Open(bytes.NewReader(bad), int64(len(bad)), ann); err == nil || !strings.Contains(err.Error(), "digest") {
				t.Fatalf("Open(annotations=%v) of a corrupt index: %v; want a digest error", ann != nil, err)
			}
		}
	})
	t.Run("annotation digest mismatch", func(t *testing.T) {
		ann := res.Annotations()
		ann[AnnotationIndexDigest] = Digest{}.String()
		if _, err := Open(bytes.NewReader(blob), int64(len(blob)), ann); err == nil {
			t.Fatal("index accepted against a wrong annotation digest")
		}
	})
	t.Run("truncated blob", func(t *testing.T) {
		for _, n := range []int{0, 10, len(blob) - 1, len(blob) - FooterSize - 5} {
			if _, err := Open(bytes.NewReader(blob[:n]), int64(n), nil); err == nil {
				t.Fatalf("Open of a blob truncated to %d bytes succeeded", n)
			}
		}
		if _, err := Open(bytes.NewReader(blob[:len(blob)-1]), int64(len(blob)-1), res.Annotations()); err == nil {
			t.Fatal("Open by annotations of a truncated blob succeeded")
		}
	})
	t.Run("plain zstd layer", func(t *testing.T) {
		enc, _ := zstd.NewWriter(nil)
		plain := enc.EncodeAll(src, nil)
		if _, err := Open(bytes.NewReader(plain), int64(len(plain)), nil); err != ErrNoFooter {
			t.Fatalf("Open of a plain tar+zstd layer: %v, want ErrNoFooter", err)
		}
	})
	t.Run("bad tar", func(t *testing.T) {
		for name, in := range map[string][]byte{
			"truncated entry": src[:2000],
			"garbage":         testutil.RandBytes(9, 4096),
		} {
			if _, err := Write(context.Background(), io.Discard, bytes.NewReader(in)); err == nil {
				t.Errorf("%s: Write succeeded", name)
			}
		}
	})
}

type failWriter struct{ n int }

func (f *failWriter) Write(b []byte) (int, error) {
	if f.n -= len(b); f.n < 0 {
		return 0, fmt.Errorf("disk full")
	}
	return len(b), nil
}

func TestWriteErrorStops(t *testing.T) {
	src := edgeCases(t)
	_, err := Write(context.Background(), &failWriter{n: 4096}, bytes.NewReader(src))
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Write to a failing writer: %v; want the write error", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Write(ctx, io.Discard, bytes.NewReader(src)); err == nil {
		t.Fatal("Write with a cancelled context succeeded")
	}
}

func TestOptions(t *testing.T) {
	for _, o := range []WriterOption{WithConcurrency(0), WithLevel(0), WithLevel(23), WithCutter(nil)} {
		if _, err := Write(context.Background(), io.Discard, bytes.NewReader(nil), o); err == nil {
			t.Error("invalid option accepted")
		}
	}
}

func TestEmptyStream(t *testing.T) {
	for _, src := range [][]byte{nil, make([]byte, 1024)} {
		blob, res := convert(t, src)
		l, err := Open(bytes.NewReader(blob), int64(len(blob)), res.Annotations())
		if err != nil {
			t.Fatalf("%d-byte stream: %v", len(src), err)
		}
		if len(l.Index.Entries) != 0 {
			t.Fatalf("entries in an empty layer: %d", len(l.Index.Entries))
		}
	}
}
