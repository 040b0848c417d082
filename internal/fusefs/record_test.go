package fusefs

import (
	"archive/tar"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"lazypull/format"
	"lazypull/internal/testutil"
)

// TestRecorderSeesEveryFirstRead: a recording view reports the reads of every file in the
// order they happen, also of files that have a local copy (no passthrough hides them).
func TestRecorderSeesEveryFirstRead(t *testing.T) {
	requireFUSE(t)
	big := testutil.RandBytes(7, 3<<20)
	l := convertLayer(t, mkTar(t, []tentry{
		{Hdr: tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{Hdr: tar.Header{Name: "bin/tool", Typeflag: tar.TypeReg, Mode: 0o755}, Body: big},
		{Hdr: tar.Header{Name: "etc/conf", Typeflag: tar.TypeReg, Mode: 0o644}, Body: []byte("hello")},
		{Hdr: tar.Header{Name: "etc/link", Typeflag: tar.TypeLink, Linkname: "etc/conf"}},
	}))
	c := newLocalContent(t, l, t.TempDir()) // every file local: passthrough would hide the reads
	type read struct {
		layer int
		name  string
		off   int64
		n     int64
	}
	var mu sync.Mutex
	var reads []read
	root, err := NewMerged([]Layer{{Index: l.Index, Content: c}}, WithRecorder(func(layer int, e *format.Entry, off, n int64) {
		mu.Lock()
		defer mu.Unlock()
		reads = append(reads, read{layer, e.Name, off, n})
	}))
	if err != nil {
		t.Fatal(err)
	}
	dir, _ := mountView(t, root)
	if b, err := os.ReadFile(filepath.Join(dir, "etc/link")); err != nil || string(b) != "hello" {
		t.Fatalf("read etc/link: %q, %v", b, err)
	}
	f, err := os.Open(filepath.Join(dir, "bin/tool"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := make([]byte, 4096)
	if _, err := f.ReadAt(p, 2<<20); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reads) < 2 || reads[0].name != "etc/conf" || reads[0].off != 0 || reads[0].n != 5 {
		t.Fatalf("first read recorded %+v; want etc/conf (the link's target) 0+5", reads)
	}
	found := false
	for _, r := range reads[1:] {
		found = found || r.name == "bin/tool" && r.off <= 2<<20 && 2<<20+4096 <= r.off+r.n
	}
	if !found {
		t.Errorf("the read of bin/tool at 2 MiB was not recorded: %+v", reads)
	}
}
