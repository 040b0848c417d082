package testutil

import (
	"io"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

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
