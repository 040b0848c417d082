package zstdindex

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"lazypull/internal/testutil"
)

// TestCorruptSpan flips a byte in the middle of each span's compressed bytes: reading
// the span fails with a SpanError naming it, and no read serves a byte of it.
func TestCorruptSpan(t *testing.T) {
	data := realTar(t, 4<<20)
	blob := zstdCmd(t, data, "-9")
	ix, windows := build(t, blob, 64<<10)
	for i := range ix.NumSpans() {
		s := ix.Span(i)
		bad := bytes.Clone(blob)
		bad[s.CompOff+s.CompLen/2] ^= 0x55
		r := NewReader(ix, bytes.NewReader(bad), bytes.NewReader(windows), 0)
		p := make([]byte, s.Len)
		n, err := r.ReadAt(p, s.Off)
		var se *SpanError
		if !errors.As(err, &se) || se.Span != i || n != 0 {
			t.Fatalf("span %d corrupt: read %d bytes, %v", i, n, err)
		}
	}
}

// TestCorruptWindow flips a byte of each stored window, and truncates the window blob:
// reading the span alone fails.
func TestCorruptWindow(t *testing.T) {
	data := realTar(t, 4<<20)
	blob := zstdCmd(t, data, "-3")
	ix, windows := build(t, blob, 64<<10)
	tested := 0
	for i := range ix.NumSpans() {
		s := ix.Span(i)
		if !ix.points[i].mid {
			continue
		}
		tested++
		for _, w := range [][]byte{flip(windows, s.WindowOff+s.WindowLen/2), windows[:s.WindowOff+s.WindowLen-1]} {
			r := NewReader(ix, bytes.NewReader(blob), bytes.NewReader(w), 0)
			if n, err := r.ReadAt(make([]byte, s.Len), s.Off); n != 0 || err == nil {
				t.Fatalf("span %d with a corrupt window: read %d bytes, %v", i, n, err)
			}
		}
	}
	if tested < 10 {
		t.Fatalf("%d spans inside frames", tested)
	}
}

func flip(b []byte, i int64) []byte {
	b = bytes.Clone(b)
	b[i] ^= 0x55
	return b
}

// TestCorruptIndex changes bytes of an encoded index, with and without fixing its
// digest: Decode fails, or the index it returns serves the stream or errors, never other
// bytes.
func TestCorruptIndex(t *testing.T) {
	data := testutil.Corpus(1<<20, 5)
	blob := zstdGo(t, data, zstd.SpeedDefault, zstd.WithWindowSize(256<<10))
	ix, windows := build(t, blob, 32<<10)
	enc := ix.Encode()
	if _, err := Decode(flip(enc, int64(len(enc)/2))); !errors.Is(err, ErrCorruptIndex) {
		t.Fatalf("a flipped byte: %v", err)
	}
	body := enc[:len(enc)-sha256.Size]
	decoded := 0
	for i := 0; i < len(body); i += 1 + len(body)/300 {
		b := flip(body, int64(i))
		sum := sha256.Sum256(b)
		bad, err := Decode(append(b, sum[:]...))
		if err != nil {
			if !errors.Is(err, ErrCorruptIndex) {
				t.Fatalf("byte %d: %v does not wrap ErrCorruptIndex", i, err)
			}
			continue
		}
		decoded++
		r := NewReader(bad, bytes.NewReader(blob), bytes.NewReader(windows), 1<<20)
		for k := range bad.NumSpans() {
			s := bad.Span(k)
			p := make([]byte, s.Len)
			if n, err := r.ReadAt(p, s.Off); err == nil && (s.Off+s.Len > int64(len(data)) || !bytes.Equal(p[:n], data[s.Off:s.Off+s.Len])) {
				t.Fatalf("byte %d changed: span %d served other bytes", i, k)
			}
		}
	}
	t.Logf("%d of %d changed indexes decoded; none served a wrong byte", decoded, len(body)/(1+len(body)/300))
}

// TestBuildErrors: a blob Build refuses, with the error saying why and where.
func TestBuildErrors(t *testing.T) {
	good := zstdGo(t, testutil.Corpus(300<<10, 6), zstd.SpeedDefault)
	bigWindow := zstdCmd(t, testutil.Corpus(300<<10, 6), "--long=28", "--no-content-size")
	for name, c := range map[string]struct {
		blob []byte
		want string
	}{
		"checksum":   {flip(good, int64(len(good)-2)), "checksum"},
		"truncated":  {good[:len(good)-10], "unexpected EOF"},
		"trailing":   {append(bytes.Clone(good), 1, 2, 3), "bytes at the end"},
		"no magic":   {append([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9}, good...), "no frame magic"},
		"big window": {bigWindow, "over the limit"},
		"block":      {flip(good, int64(len(good)/2)), "frame 0"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Build(bytes.NewReader(c.blob), 0, nil, &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "zstdindex: frame") {
				t.Fatalf("got %v, want an error about %q", err, c.want)
			}
		})
	}
}
