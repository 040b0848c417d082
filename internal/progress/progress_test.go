package progress

import (
	"bytes"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/internal/convert"
)

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 5 << 20: "5.0 MiB", 3 << 30: "3.0 GiB"} {
		if got := HumanBytes(n); got != want {
			t.Errorf("HumanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestTermProgress(t *testing.T) {
	var buf bytes.Buffer
	p := NewTerm(&buf, -1) // no terminal size: lines are not cut
	l := convert.Layer{Image: "img", Source: v1.Descriptor{Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}, Size: 2048}}
	p.LayerStart(l)
	p.LayerRead(l.Source.Digest, 1024)
	p.mu.Lock()
	p.redrawLocked(nil)
	p.mu.Unlock()
	if !strings.Contains(buf.String(), "reading sha256:abababababab 1.0 KiB / 2.0 KiB  50%") {
		t.Errorf("live line missing: %q", buf.String())
	}
	p.Write([]byte("a log line\n"))
	l.Result, l.Files, l.Chunks = v1.Descriptor{Size: 1500}, 7, 9
	p.LayerDone(l)
	p.Stop()
	p.Write([]byte("after stop\n"))
	out := buf.String()
	for _, want := range []string{"\x1b[1F\x1b[Ja log line\n", "done sha256:abababababab  2.0 KiB -> 1.5 KiB  7 files  9 chunks\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("output %q lacks %q", out, want)
		}
	}
	if !strings.HasSuffix(out, "chunks\nafter stop\n") {
		t.Errorf("output after stop: %q", out)
	}
}
