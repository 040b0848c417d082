package layertest

import (
	"bytes"
	"context"
	"testing"

	"lazypull/format"
	"lazypull/internal/testutil"
)

// TestWithIndex: a layer's frames with its own index put back by WithIndex are the
// writer's blob, byte for byte, with the writer's annotations.
func TestWithIndex(t *testing.T) {
	var out bytes.Buffer
	res, err := format.Write(context.Background(), &out, bytes.NewReader(testutil.Tar(t, testutil.File("a", []byte("hello")))))
	if err != nil {
		t.Fatal(err)
	}
	b := out.Bytes()
	blob, ann := WithIndex(b[:res.IndexOffset-8], b[res.IndexOffset:res.IndexOffset+res.IndexSize])
	if !bytes.Equal(blob, b) {
		t.Errorf("blob differs from the writer's: %d bytes, want %d", len(blob), len(b))
	}
	for k, v := range res.Annotations() {
		if ann[k] != v {
			t.Errorf("annotation %s = %q, want %q", k, ann[k], v)
		}
	}
	if _, err := format.Open(bytes.NewReader(blob), int64(len(blob)), ann); err != nil {
		t.Error(err)
	}
}

// TestFromTar: without edit, the writer's layer; with an edit, the same frames and the
// edited index, which opens and names what edit wrote.
func TestFromTar(t *testing.T) {
	tb := testutil.Tar(t, testutil.File("a", []byte("hello")), testutil.File("b", []byte("bee")))
	plain, ann, res := FromTar(t, tb, nil)
	if ann[format.AnnotationIndexDigest] != res.IndexDigest {
		t.Errorf("annotations %v, want the writer's index digest %s", ann, res.IndexDigest)
	}
	swap := func(ix *format.Index) {
		ix.Entries[0].Name, ix.Entries[1].Name = ix.Entries[1].Name, ix.Entries[0].Name
	}
	blob, ann, _ := FromTar(t, tb, swap)
	if !bytes.Equal(blob[:res.IndexOffset-8], plain[:res.IndexOffset-8]) {
		t.Error("the frames changed")
	}
	l, err := format.Open(bytes.NewReader(blob), int64(len(blob)), ann)
	if err != nil {
		t.Fatal(err)
	}
	if l.Index.Entries[0].Name != "b" {
		t.Errorf("first entry %q, want the edited b", l.Index.Entries[0].Name)
	}
}
