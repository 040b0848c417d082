package convert

import (
	"bytes"
	"fmt"
	"io"
	"lazypull/internal/ocilayout"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// maxManifestSize bounds how much of a manifest or config blob is read into memory.
const maxManifestSize = 64 << 20

// verifyReader checks a blob against its descriptor as it is read (ocilayout's, for blobs
// from a registry or a layout alike).
type verifyReader = ocilayout.VerifyReader

func newVerifyReader(r io.Reader, desc v1.Descriptor, onRead func(int64)) (*verifyReader, error) {
	return ocilayout.NewVerifyReader(r, desc, onRead)
}

// readVerified reads a whole small blob (manifest, config) and checks it against desc.
func readVerified(r io.Reader, desc v1.Descriptor) ([]byte, error) {
	if desc.Size > maxManifestSize {
		return nil, fmt.Errorf("blob %s is %d bytes, more than the %d allowed for a manifest or config", desc.Digest, desc.Size, maxManifestSize)
	}
	vr, err := newVerifyReader(r, desc, nil)
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(vr)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// descriptorOf is the sha256 descriptor of b with media type mt.
func descriptorOf(b []byte, mt types.MediaType) v1.Descriptor {
	h, n, _ := v1.SHA256(bytes.NewReader(b)) // reading from memory cannot fail
	return v1.Descriptor{MediaType: mt, Digest: h, Size: n}
}
