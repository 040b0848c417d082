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
