package daemon

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/format"
	"lazypull/internal/profile"
)

// TestPackKeepsOnlyItsLayersIndexes: a pack's index records were each kept until taken,
// whatever their digest, so a pack could make the daemon hold up to its 1 GiB in index
// records no layer asks for. Now only the indexes of the image's layers are kept, one
// record per layer: what the pack's indexes hold is at most format.MaxIndexSize per layer.
func TestPackKeepsOnlyItsLayersIndexes(t *testing.T) {
	mine, other := format.Digest{1}, format.Digest{2}
	var buf bytes.Buffer
	pw := profile.NewPackWriter(&buf)
	big := bytes.Repeat([]byte("x"), 1<<20)
	for _, r := range []struct {
		d format.Digest
		b []byte
	}{{other, big}, {other, big}, {mine, []byte("mine")}, {mine, []byte("again")}} {
		if err := pw.Index(r.d, r.b); err != nil {
			t.Fatal(err)
		}
	}
	if err := pw.Chunk(format.Digest{3}, []byte("frame")); err != nil {
		t.Fatal(err)
	}
	reg, err := testClient(t).Open("127.0.0.1:1/packs")
	if err != nil {
		t.Fatal(err)
	}
	p := newPack(context.Background(), reg, v1.Descriptor{Digest: v1.Hash{Algorithm: "sha256", Hex: "00"}, Size: int64(buf.Len())},
		map[format.Digest]int{mine: 1}, slog.New(slog.DiscardHandler))
	p.opened, p.rc = true, io.NopCloser(&buf)
	if p.pr, err = profile.NewPackReader(p.rc, int64(buf.Len())); err != nil {
		t.Fatal(err)
	}
	if b, ok := p.index(mine); !ok || string(b) != "mine" {
		t.Fatalf("index of a layer: %q, %v", b, ok)
	}
	if b, ok := p.index(other); ok {
		t.Fatalf("the pack kept %d bytes of an index no layer of the image has", len(b))
	}
	if len(p.indexes) != 0 || p.next == nil {
		t.Fatalf("the pack holds %d index records after reading to its first chunk (%v)", len(p.indexes), p.next != nil)
	}
}
