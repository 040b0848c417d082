package testutil

import (
	"archive/tar"
	"bytes"
	"io"
	"iter"
	"testing"
	"time"
)

// Entry is one entry of a tar stream: its header and, for a regular file, its body.
type Entry struct {
	Hdr  tar.Header
	Body []byte
}

// ModTime is the modification time of the entries File and Dir make.
var modTime = time.Unix(1700000000, 0)

// File is a regular file, mode 0644.
func File(name string, body []byte) Entry {
	return Entry{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, ModTime: modTime}, Body: body}
}

// Dir is a directory, mode 0755.
func Dir(name string) Entry {
	return Entry{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: modTime}}
}

// Tar returns the tar stream of entries, in order. A regular file's size is its body's.
func Tar(t testing.TB, entries ...Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.Hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.Body))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %q: %v", h.Name, err)
		}
		if _, err := tw.Write(e.Body); err != nil {
			t.Fatalf("tar body %q: %v", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Symlink is a symbolic link to target.
func Symlink(name, target string) Entry {
	return Entry{Hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, ModTime: modTime}}
}

// Link is a hard link to target, an entry before it.
func Link(name, target string) Entry {
	return Entry{Hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, ModTime: modTime}}
}

// TarEntries yields the entries of the tar stream b in order, each header with its
// content; a stream that does not read fails t.
func TarEntries(t testing.TB, b []byte) iter.Seq2[*tar.Header, []byte] {
	return func(yield func(*tar.Header, []byte) bool) {
		tr := tar.NewReader(bytes.NewReader(b))
		for {
			h, err := tr.Next()
			if err == io.EOF {
				return
			}
			if err != nil {
				t.Fatalf("read tar: %v", err)
			}
			body, err := io.ReadAll(tr)
			if err != nil {
				t.Fatalf("read tar entry %s: %v", h.Name, err)
			}
			if !yield(h, body) {
				return
			}
		}
	}
}
