// Package layertest builds lazypull layers for tests, byte by byte where a test needs a
// layer the writer would not make (an index that is not the tar's).
//
// Like internal/testutil, it is for _test.go files only (internal/depcheck checks). It is
// apart from testutil because it imports format, which format's own tests cannot import
// back.
package layertest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"

	"lazypull/format"
)

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
