package testutil

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// MeasureSpanSizes runs measure on every blob whose path is in PREFIX_MEASURE_BLOBS
// (comma-separated) at every span size in kib (KiB), with the tar paths listed in the
// file PREFIX_MEASURE_FILES (one a line) as want, after printing header, the header row
// of the markdown table measure prints rows of, and its separator row. It skips t unless
// both are set.
func MeasureSpanSizes(t testing.TB, prefix, header string, kib []int64, measure func(path string, blob []byte, span int64, want map[string]bool)) {
	t.Helper()
	blobs, list := os.Getenv(prefix+"_MEASURE_BLOBS"), os.Getenv(prefix+"_MEASURE_FILES")
	if blobs == "" || list == "" {
		t.Skipf("%s_MEASURE_BLOBS and %s_MEASURE_FILES not set", prefix, prefix)
	}
	l, err := os.ReadFile(list)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, name := range strings.Fields(string(l)) {
		want[name] = true
	}
	fmt.Println(header)
	fmt.Println(regexp.MustCompile(`[^| ][^|]*[^| ]|[^| ]`).ReplaceAllStringFunc(header, func(c string) string { return strings.Repeat("-", len(c)) }))
	for _, path := range strings.Split(blobs, ",") {
		blob, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range kib {
			measure(path, blob, s<<10, want)
		}
	}
}

// TarFile is a regular file of a tar stream: its content's offset in the stream, and
// its content.
type TarFile struct {
	Off  int64
	Data []byte
}

// TarFiles reads a tar stream to its end and returns the regular files named in want
// (leading "./" ignored), in the stream's order.
func TarFiles(r io.Reader, want map[string]bool) []TarFile {
	defer io.Copy(io.Discard, r)
	c := &countingReader{r: r}
	tr := tar.NewReader(c)
	var out []TarFile
	for {
		h, err := tr.Next()
		if err != nil {
			return out
		}
		if h.Typeflag == tar.TypeReg && want[strings.TrimPrefix(h.Name, "./")] {
			off := c.n
			data, err := io.ReadAll(tr)
			if err != nil {
				return out
			}
			out = append(out, TarFile{Off: off, Data: data})
		}
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// ReadBack reads f's content from r at f.Off and fails t unless it is f's.
func ReadBack(t testing.TB, r io.ReaderAt, f TarFile) {
	t.Helper()
	if len(f.Data) == 0 {
		return
	}
	p := make([]byte, len(f.Data))
	if _, err := r.ReadAt(p, f.Off); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	if !bytes.Equal(p, f.Data) {
		t.Fatalf("file at %d: other bytes", f.Off)
	}
}

// BuildFiles runs build, which writes an uncompressed tar stream to w (a build pass of
// an index), and returns the files of the stream named in want and how long build took.
func BuildFiles(t testing.TB, want map[string]bool, build func(w io.Writer) error) ([]TarFile, time.Duration) {
	t.Helper()
	pr, pw := io.Pipe()
	files := make(chan []TarFile, 1)
	go func() { files <- TarFiles(pr, want) }()
	start := time.Now()
	err := build(pw)
	elapsed := time.Since(start)
	pw.CloseWithError(err)
	if err != nil {
		t.Fatal(err)
	}
	return <-files, elapsed
}
