package testutil

import (
	"bytes"
	"io"
	"testing"

	"github.com/klauspost/compress/zstd"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// GzipLayer returns the tar stream tr as a gzip layer, as docker builds them.
func GzipLayer(t testing.TB, tr []byte) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(tr)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// ZstdLayer returns the tar stream tr as an OCI tar+zstd layer, one frame at zstd's
// default level (3), as skopeo and buildkit write them.
func ZstdLayer(t testing.TB, tr []byte) v1.Layer {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	blob := enc.EncodeAll(tr, nil)
	enc.Close()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(blob)), nil },
		tarball.WithMediaType(types.OCILayerZStd))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// ImageOf returns an image of layers, in that order, with an empty config.
func ImageOf(t testing.TB, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// Compressed returns a layer's blob as the registry holds it.
func Compressed(t testing.TB, l v1.Layer) []byte {
	t.Helper()
	return readAll(t, l.Compressed)
}

// Uncompressed returns a layer's tar.
func Uncompressed(t testing.TB, l v1.Layer) []byte {
	t.Helper()
	return readAll(t, l.Uncompressed)
}

func readAll(t testing.TB, open func() (io.ReadCloser, error)) []byte {
	t.Helper()
	rc, err := open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
