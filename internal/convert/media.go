package convert

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"lazypull/internal/ocilayout"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Errors a conversion can be refused or stopped with; test them with errors.Is. The error
// text around them names the image and the blob.
var (
	// ErrUnsupportedMediaType: a manifest, config or layer of a kind lazypull does not convert.
	ErrUnsupportedMediaType = errors.New("unsupported media type")
	// ErrCorrupt: a layer's bytes do not decompress as its media type says they should.
	ErrCorrupt = errors.New("corrupt")
	// ErrTruncated: a blob ended before the size its descriptor gives (ocilayout's, which
	// checks every blob read).
	ErrTruncated = ocilayout.ErrTruncated
	// ErrDigestMismatch: a blob's bytes do not hash to its descriptor's digest (or are longer
	// than its size), or a layer does not decompress to the diff ID its config lists.
	ErrDigestMismatch = ocilayout.ErrDigestMismatch
)

// mediaTypeNondistributableZstd is the one non-distributable OCI layer type ggcr has no constant for.
const mediaTypeNondistributableZstd types.MediaType = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

// compression is how a source layer's tar stream is compressed.
type compression int

const (
	uncompressed compression = iota
	gzipped
	zstdCompressed
)

func (c compression) String() string {
	switch c {
	case gzipped:
		return "gzip"
	case zstdCompressed:
		return "zstd"
	}
	return "tar"
}

// layerCompression maps a layer media type to its compression, refusing anything that is not a
// distributable tar layer.
func layerCompression(mt types.MediaType) (compression, error) {
	switch mt {
	case types.DockerLayer, types.OCILayer:
		return gzipped, nil
	case types.OCILayerZStd:
		return zstdCompressed, nil
	case types.DockerUncompressedLayer, types.OCIUncompressedLayer:
		return uncompressed, nil
	case types.DockerForeignLayer, types.OCIRestrictedLayer, types.OCIUncompressedRestrictedLayer,
		mediaTypeNondistributableZstd:
		return 0, fmt.Errorf("%w: layer media type %s is foreign/non-distributable", ErrUnsupportedMediaType, mt)
	case "":
		return 0, fmt.Errorf("%w: layer has no media type", ErrUnsupportedMediaType)
	}
	return 0, fmt.Errorf("%w: layer media type %s", ErrUnsupportedMediaType, mt)
}

// manifestKind is what a manifest blob holds.
type manifestKind int

const (
	kindImage manifestKind = iota + 1
	kindIndex
)

// classifyManifest decides whether raw is an image manifest or an index. mt is the media type
// the reference or descriptor gave; when it is empty (OCI lets a descriptor omit it, and some
// registries send no Content-Type), the manifest's own mediaType field or shape decides.
func classifyManifest(mt types.MediaType, raw []byte) (manifestKind, error) {
	var probe struct {
		MediaType types.MediaType `json:"mediaType"`
		Manifests json.RawMessage `json:"manifests"`
		Config    json.RawMessage `json:"config"`
		FSLayers  json.RawMessage `json:"fsLayers"`
	}
	if err := json.Unmarshal(raw, &probe); err != nil {
		return 0, fmt.Errorf("parse manifest: %w", err)
	}
	if mt == "" || strings.HasPrefix(string(mt), "text/plain") || mt == "application/json" || mt == "application/octet-stream" {
		mt = probe.MediaType
	}
	switch mt {
	case types.DockerManifestSchema2, types.OCIManifestSchema1:
		return kindImage, nil
	case types.DockerManifestList, types.OCIImageIndex:
		return kindIndex, nil
	case types.DockerManifestSchema1, types.DockerManifestSchema1Signed:
		return 0, fmt.Errorf("%w: Docker schema 1 manifest (%s); re-push the image with a current client", ErrUnsupportedMediaType, mt)
	case "":
		switch {
		case len(probe.FSLayers) > 0:
			return 0, fmt.Errorf("%w: Docker schema 1 manifest", ErrUnsupportedMediaType)
		case len(bytes.TrimSpace(probe.Manifests)) > 0:
			return kindIndex, nil
		case len(bytes.TrimSpace(probe.Config)) > 0:
			return kindImage, nil
		}
		return 0, fmt.Errorf("%w: manifest without a media type", ErrUnsupportedMediaType)
	}
	return 0, fmt.Errorf("%w: manifest media type %s", ErrUnsupportedMediaType, mt)
}

// checkConfigMediaType refuses configs of anything but a container image (Helm charts,
// artifacts, plugins...).
func checkConfigMediaType(mt types.MediaType) error {
	switch mt {
	case types.DockerConfigJSON, types.OCIConfigJSON:
		return nil
	}
	return fmt.Errorf("%w: config media type %s (not a container image)", ErrUnsupportedMediaType, mt)
}
