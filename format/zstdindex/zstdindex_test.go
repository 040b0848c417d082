package zstdindex

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os/exec"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// corpus returns n bytes of text-like runs, random bytes and zeros: every block and
// literals type, long and short matches, repeat offsets.
func corpus(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, seed))
	words := strings.Fields("the quick brown fox jumps over lazy dog import def class return self None " +
		"usr lib python3 site packages __init__ py pyc so elf ld linux x86_64 gnu")
	var b bytes.Buffer
	for b.Len() < n {
		switch rng.IntN(4) {
		case 0, 1:
			for range 200 + rng.IntN(4000) {
				b.WriteString(words[rng.IntN(len(words))])
				b.WriteByte(" \n/."[rng.IntN(4)])
			}
		case 2:
			r := make([]byte, 1000+rng.IntN(100000))
			for i := range r {
				r[i] = byte(rng.Uint32())
			}
			b.Write(r)
		default:
			b.Write(make([]byte, rng.IntN(300000)))
		}
	}
	return b.Bytes()[:n]
}

// zstdGo compresses with klauspost/compress at level, in one frame.
func zstdGo(t testing.TB, p []byte, level zstd.EncoderLevel, opts ...zstd.EOption) []byte {
	enc, err := zstd.NewWriter(nil, append([]zstd.EOption{zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(1)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(p, nil)
}

// zstdCmd compresses with the zstd command, or skips.
func zstdCmd(t testing.TB, p []byte, args ...string) []byte {
	if _, err := exec.LookPath("zstd"); err != nil {
		t.Skip("zstd not installed")
	}
	cmd := exec.Command("zstd", append([]string{"-c", "-q"}, args...)...)
	cmd.Stdin = bytes.NewReader(p)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("zstd %v: %v", args, err)
	}
	return out
}

// unzstd decompresses with klauspost/compress: the reference.
func unzstd(t testing.TB, blob []byte) []byte {
	d, err := zstd.NewReader(bytes.NewReader(blob), zstd.WithDecoderMaxWindow(1<<30))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	out, err := io.ReadAll(d)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// build indexes blob, checks the build pass's output, and returns the index and window blob.
func build(t testing.TB, blob []byte, span int64) (*Index, []byte) {
	var out, windows bytes.Buffer
	ix, err := Build(bytes.NewReader(blob), span, &out, &windows)
	if err != nil {
		t.Fatal(err)
	}
	if want := unzstd(t, blob); !bytes.Equal(out.Bytes(), want) {
		t.Fatalf("the build pass decodes %d bytes, other than klauspost/compress's %d", out.Len(), len(want))
	}
	if int64(windows.Len()) != ix.WindowsSize() {
		t.Fatalf("window blob of %d bytes, index says %d", windows.Len(), ix.WindowsSize())
	}
	return ix, windows.Bytes()
}

func TestSmoke(t *testing.T) {
	data := corpus(3<<20, 1)
	for name, blob := range map[string][]byte{
		"go-fastest": zstdGo(t, data, zstd.SpeedFastest),
		"go-default": zstdGo(t, data, zstd.SpeedDefault),
		"go-better":  zstdGo(t, data, zstd.SpeedBetterCompression),
		"go-best":    zstdGo(t, data, zstd.SpeedBestCompression),
		"cli-1":      zstdCmd(t, data, "-1"),
		"cli-3":      zstdCmd(t, data, "-3"),
		"cli-19":     zstdCmd(t, data, "-19"),
	} {
		t.Run(name, func(t *testing.T) {
			ix, windows := build(t, blob, 64<<10)
			mid := 0
			for i := range ix.NumSpans() {
				if ix.points[i].mid {
					mid++
				}
				s := ix.Span(i)
				r := NewReader(ix, bytes.NewReader(blob), bytes.NewReader(windows), 0)
				p := make([]byte, s.Len)
				if _, err := r.ReadAt(p, s.Off); err != nil && err != io.EOF {
					t.Fatalf("span %d: %v", i, err)
				}
				if !bytes.Equal(p, data[s.Off:s.Off+s.Len]) {
					t.Fatalf("span %d: other bytes", i)
				}
			}
			t.Logf("%d bytes, %d spans (%d inside frames), window blob %d bytes, index %d bytes", len(blob), ix.NumSpans(), mid, len(windows), len(ix.Encode()))
		})
	}
}
