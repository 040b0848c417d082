package format

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"lazypull/internal/testutil"
)

// TestReadIndexClaimedSize: the index's size in a location is the manifest's word; reading
// it allocated all of it before a byte came (256 MiB at most). Now a location over
// MaxIndexSize is refused, and a payload is read into a buffer that grows as its bytes
// arrive, so a blob that holds far less than claimed costs what it holds and fails saying
// how much came. Real indexes read as before, from a ReaderAt, a stream or bytes.
func TestReadIndexClaimedSize(t *testing.T) {
	blob, res := convert(t, manyFiles(t, 300))
	loc, err := LocationFromAnnotations(res.Annotations())
	if err != nil {
		t.Fatal(err)
	}
	size := int64(len(blob))
	payload := blob[loc.Offset : loc.Offset+loc.Size]
	if _, err := ReadIndex(bytes.NewReader(blob), size, &loc); err != nil {
		t.Fatalf("ReadIndex of a real layer: %v", err)
	}
	if _, err := ReadIndex(bytes.NewReader(blob), size, nil); err != nil {
		t.Fatalf("ReadIndex of a real layer by its footer: %v", err)
	}
	if _, p, err := ReadIndexFrom(bytes.NewReader(payload), size, loc); err != nil || !bytes.Equal(p, payload) {
		t.Fatalf("ReadIndexFrom of a real layer: %v", err)
	}
	if _, err := ReadIndexBytes(payload, size, loc); err != nil {
		t.Fatalf("ReadIndexBytes of a real layer: %v", err)
	}

	claim := loc
	claim.Size = 60 << 20
	claimed := claim.Offset + claim.Size + FooterSize
	held := size - loc.Offset // what the blob holds from the index on
	want := fmt.Sprintf("index at %d+%d: %d of its %d bytes arrived", claim.Offset, claim.Size, held, claim.Size)
	var n uint64
	n = testutil.Allocated(func() { _, err = ReadIndex(bytes.NewReader(blob), claimed, &claim) })
	if err == nil || !strings.Contains(err.Error(), want) || n > 2<<20 {
		t.Fatalf("ReadIndex of a %d-byte layer claiming a %d-byte index: %v, %d bytes allocated; want %q and at most 2 MiB", size, claim.Size, err, n, want)
	}
	n = testutil.Allocated(func() { _, _, err = ReadIndexFrom(bytes.NewReader(blob[loc.Offset:]), claimed, claim) })
	if err == nil || !strings.Contains(err.Error(), want) || n > 2<<20 {
		t.Fatalf("ReadIndexFrom of %d bytes claiming a %d-byte index: %v, %d bytes allocated; want %q and at most 2 MiB", held, claim.Size, err, n, want)
	}
	if _, err := ReadIndexBytes(payload, claimed, claim); err == nil {
		t.Fatal("ReadIndexBytes took a payload shorter than its location")
	}

	over := loc
	over.Size = MaxIndexSize + 1
	for name, err := range map[string]error{
		"ReadIndex": func() error {
			_, err := ReadIndex(bytes.NewReader(blob), over.Offset+over.Size+FooterSize, &over)
			return err
		}(),
		"ReadIndexFrom": func() error {
			_, _, err := ReadIndexFrom(bytes.NewReader(blob), over.Offset+over.Size+FooterSize, over)
			return err
		}(),
		"LocationFromAnnotations": func() error {
			a := res.Annotations()
			a[AnnotationIndexSize] = fmt.Sprint(over.Size)
			_, err := LocationFromAnnotations(a)
			return err
		}(),
	} {
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("over the limit of %d bytes", MaxIndexSize)) {
			t.Fatalf("%s of an index of %d bytes: %v", name, over.Size, err)
		}
	}
}
