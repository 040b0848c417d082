package imageindex

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"fmt"
	"io"

	"lazypull/format/gzindex"
)

// Layer is the index of one image layer: its file table and, for a gzip layer, the
// checkpoints that serve its uncompressed tar stream by ranges of the blob.
type Layer struct {
	Table *Table
	GZ    *gzindex.Index // nil for an uncompressed tar layer: its blob is its tar stream
}

// layerMagic starts a layer blob; a big-endian uint16 version follows.
const layerMagic = "LZPGZLAY"

const layerVersion = 1

// MaxLayerSize bounds a layer blob DecodeLayer accepts: a compressed table and a gzindex.
const MaxLayerSize = MaxTableSize + gzindex.MaxSize

// MaxTableRatio and TableSlack bound what a compressed table of n bytes may inflate to:
// MaxTableRatio*n + TableSlack (and MaxTableSize), so that what a small hostile blob makes
// a reader hold stays small. Real tables deflate a few fold at most: sha256 digests do not
// compress.
const (
	MaxTableRatio = 32
	TableSlack    = 64 << 10
)

// tableLimit is what a compressed table of n bytes may inflate to.
func tableLimit(n int) int64 { return min(MaxTableRatio*int64(n)+TableSlack, MaxTableSize) }

// Encode returns the layer blob: magic "LZPGZLAY", version uint16 (big endian), the
// length of the compressed table (uvarint), the table's encoding compressed with raw
// deflate, then the gzindex's encoding (nothing for an uncompressed layer). The encoded
// table is decoded again before it is written: what no reader would accept (a name over
// format's limits) fails here, at the build, and not at every mount.
func (l *Layer) Encode() ([]byte, error) {
	raw := l.Table.Encode()
	if _, err := DecodeTable(raw); err != nil {
		return nil, fmt.Errorf("file table: %w", err)
	}
	var z bytes.Buffer
	zw, err := flate.NewWriter(&z, flate.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(raw); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	if int64(len(raw)) > tableLimit(z.Len()) {
		return nil, fmt.Errorf("file table of %d entries: %d bytes deflated to %d, over the limit a reader accepts", len(l.Table.Entries), len(raw), z.Len())
	}
	b := append([]byte(layerMagic), 0, layerVersion)
	b = binary.AppendUvarint(b, uint64(z.Len()))
	b = append(b, z.Bytes()...)
	if l.GZ != nil {
		b = append(b, l.GZ.Encode()...)
	}
	return b, nil
}

// DecodeLayer parses a layer blob, hostile: the table inflates to at most MaxTableRatio
// times its compressed size plus TableSlack (and MaxTableSize), then DecodeTable's and gzindex.Decode's bounds hold. gz says whether the layer is a
// gzip blob, which must then have a gzindex whose output is the table's tar stream.
func DecodeLayer(data []byte, gz bool) (*Layer, error) {
	rest, err := header(data, "layer", layerMagic, layerVersion, MaxLayerSize)
	if err != nil {
		return nil, err
	}
	n, k := binary.Uvarint(rest)
	if k <= 0 || n > uint64(len(rest)-k) {
		return nil, fmt.Errorf("%w: table length", ErrCorrupt)
	}
	ztable, gzpart := rest[k:k+int(n)], rest[k+int(n):]
	var raw bytes.Buffer
	limit := tableLimit(len(ztable))
	m, err := io.Copy(&raw, io.LimitReader(flate.NewReader(bytes.NewReader(ztable)), limit+1))
	if err != nil || m > limit {
		return nil, fmt.Errorf("%w: table does not inflate within %d bytes: %v", ErrCorrupt, limit, err)
	}
	t, err := DecodeTable(raw.Bytes())
	if err != nil {
		return nil, err
	}
	l := &Layer{Table: t}
	switch {
	case !gz && len(gzpart) > 0:
		return nil, fmt.Errorf("%w: a gzindex for an uncompressed layer", ErrCorrupt)
	case gz:
		if l.GZ, err = gzindex.Decode(gzpart); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
		if l.GZ.Size() != t.TarSize {
			return nil, fmt.Errorf("%w: the gzindex serves %d bytes, the table's tar stream is %d", ErrCorrupt, l.GZ.Size(), t.TarSize)
		}
	}
	return l, nil
}
