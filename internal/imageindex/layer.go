package imageindex

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"strings"

	"lazypull/format/gzindex"
	"lazypull/format/zstdindex"
)

// Kind is how an image layer's blob holds its tar stream.
type Kind int

const (
	// Tar is an uncompressed layer: its blob is its tar stream.
	Tar Kind = iota
	// Gzip is a gzip layer, served through a gzindex.
	Gzip
	// Zstd is a zstd layer, served through a zstdindex and its window blob.
	Zstd
)

func (k Kind) String() string {
	switch k {
	case Tar:
		return "tar"
	case Gzip:
		return "gzip"
	case Zstd:
		return "zstd"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// KindOf tells how a layer blob of media type mt holds its tar stream: OCI's and
// Docker's tar, tar+gzip and tar+zstd layers are indexed.
func KindOf(mt string) (Kind, error) {
	switch {
	case strings.HasSuffix(mt, "zstd"):
		return Zstd, nil
	case strings.HasSuffix(mt, "gzip"):
		return Gzip, nil
	case strings.HasSuffix(mt, ".tar"):
		return Tar, nil
	}
	return 0, fmt.Errorf("media type %s is not a tar layer lazypull indexes", mt)
}

// Layer is the index of one image layer: its file table and, for a compressed layer, the
// checkpoints that serve its uncompressed tar stream by ranges of the blob and of its
// window blob.
type Layer struct {
	Table *Table
	GZ    *gzindex.Index   // a gzip layer's
	ZS    *zstdindex.Index // a zstd layer's
}

// WindowsSize returns the length of the layer's window blob (0: it needs none).
func (l *Layer) WindowsSize() int64 {
	switch {
	case l.GZ != nil:
		return l.GZ.WindowsSize()
	case l.ZS != nil:
		return l.ZS.WindowsSize()
	}
	return 0
}

// Kind returns the kind of layer l indexes.
func (l *Layer) Kind() Kind {
	switch {
	case l.GZ != nil:
		return Gzip
	case l.ZS != nil:
		return Zstd
	}
	return Tar
}

// layerMagic starts a layer blob; a big-endian uint16 version follows.
const layerMagic = "LZPGZLAY"

const layerVersion = 1

// MaxLayerSize bounds a layer blob DecodeLayer accepts: a compressed table and a gzindex
// or a zstdindex.
const MaxLayerSize = MaxTableSize + max(gzindex.MaxSize, zstdindex.MaxSize)

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
// deflate, then the gzindex's or zstdindex's encoding (nothing for an uncompressed
// layer). The encoded
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
	switch {
	case l.GZ != nil && l.ZS != nil:
		return nil, errors.New("a layer with both a gzindex and a zstdindex")
	case l.GZ != nil:
		b = append(b, l.GZ.Encode()...)
	case l.ZS != nil:
		b = append(b, l.ZS.Encode()...)
	}
	return b, nil
}

// DecodeLayer parses a layer blob, hostile: the table inflates to at most MaxTableRatio
// times its compressed size plus TableSlack (and MaxTableSize), then DecodeTable's and
// gzindex.Decode's or zstdindex.Decode's bounds hold. kind is the image layer's: a gzip
// (zstd) layer must have a gzindex (zstdindex) whose output is the table's tar stream, a
// tar layer neither.
func DecodeLayer(data []byte, kind Kind) (*Layer, error) {
	rest, err := header(data, "layer", layerMagic, layerVersion, MaxLayerSize)
	if err != nil {
		return nil, err
	}
	n, k := binary.Uvarint(rest)
	if k <= 0 || n > uint64(len(rest)-k) {
		return nil, fmt.Errorf("%w: table length", ErrCorrupt)
	}
	ztable, ixpart := rest[k:k+int(n)], rest[k+int(n):]
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
	size := t.TarSize
	switch kind {
	case Tar:
		if len(ixpart) > 0 {
			return nil, fmt.Errorf("%w: an index of checkpoints for an uncompressed layer", ErrCorrupt)
		}
	case Gzip:
		if l.GZ, err = gzindex.Decode(ixpart); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
		size = l.GZ.Size()
	case Zstd:
		if l.ZS, err = zstdindex.Decode(ixpart); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
		size = l.ZS.Size()
	default:
		return nil, fmt.Errorf("imageindex: layer of kind %v", kind)
	}
	if size != t.TarSize {
		return nil, fmt.Errorf("%w: the %v index serves %d bytes, the table's tar stream is %d", ErrCorrupt, kind, size, t.TarSize)
	}
	return l, nil
}
