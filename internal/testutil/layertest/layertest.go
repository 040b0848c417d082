// Package layertest builds lazypull layers for tests, byte by byte where a test needs a
// layer the writer would not make (an index that is not the tar's).
//
// Like internal/testutil, it is for _test.go files only (internal/depcheck checks). It is
// apart from testutil because it imports format, which format's own tests cannot import
// back.
package layertest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"testing"

	"lazypull/format"
)

// FromTar converts a tar stream into a lazypull layer and returns its blob, its index
// annotations and what the writer said of it. With edit, the index is decoded, changed by
// edit and written back (WithIndex) in place of the writer's: a layer whose index is not
// its tar's, all digests of the index updated; res is still the writer's.
func FromTar(t testing.TB, tarball []byte, edit func(ix *format.Index)) (blob []byte, ann map[string]string, res *format.Result) {
	t.Helper()
	var out bytes.Buffer
	res, err := format.Write(context.Background(), &out, bytes.NewReader(tarball))
	if err != nil {
		t.Fatal(err)
	}
	b := out.Bytes()
	if edit == nil {
		return b, res.Annotations(), res
	}
	ix, err := format.DecodeIndex(b[res.IndexOffset : res.IndexOffset+res.IndexSize])
	if err != nil {
		t.Fatal(err)
	}
	edit(ix)
	payload, err := ix.Encode()
	if err != nil {
		t.Fatal(err)
	}
	blob, ann = WithIndex(b[:res.IndexOffset-8], payload)
	return blob, ann, res
}

// WithIndex appends an index payload and its footer to a layer's frames, as
// docs/format.md lays them out, and returns the blob and its index annotations.
func WithIndex(frames, payload []byte) ([]byte, map[string]string) {
	blob := bytes.Clone(frames)
	blob = binary.LittleEndian.AppendUint32(blob, 0x184D2A5D)
	blob = binary.LittleEndian.AppendUint32(blob, uint32(len(payload)))
	off := int64(len(blob))
	blob = append(blob, payload...)
	sum := sha256.Sum256(payload)
	blob = binary.LittleEndian.AppendUint32(blob, 0x184D2A5E)
	blob = binary.LittleEndian.AppendUint32(blob, 56)
	blob = append(blob, "LZPFOOTR"...)
	blob = binary.LittleEndian.AppendUint64(blob, uint64(off))
	blob = binary.LittleEndian.AppendUint64(blob, uint64(len(payload)))
	blob = append(blob, sum[:]...)
	r := format.Result{IndexOffset: off, IndexSize: int64(len(payload)), IndexDigest: format.Digest(sum).String()}
	return blob, r.Annotations()
}
