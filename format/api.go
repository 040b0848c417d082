package format

import "strconv"

// Media type and annotation keys. A lazypull layer is an ordinary zstd-compressed OCI layer;
// the annotations on its descriptor are what tell a lazypull reader where the index lies.
const (
	MediaTypeLayer = "application/vnd.oci.image.layer.v1.tar+zstd"

	AnnotationVersion     = "dev.lazypull.layer.version"
	AnnotationIndexOffset = "dev.lazypull.layer.index.offset"
	AnnotationIndexSize   = "dev.lazypull.layer.index.size"
	AnnotationIndexDigest = "dev.lazypull.layer.index.digest"
)

// Result describes a layer written by Write.
type Result struct {
	// Digest is "sha256:<hex>" of the layer blob, Size its length in bytes.
	Digest string
	Size   int64
	// DiffID is "sha256:<hex>" of the uncompressed tar stream. Write keeps the tar stream byte
	// for byte, so it equals the diff ID of the source layer.
	DiffID string
	// TarSize is the length of the uncompressed tar stream.
	TarSize int64

	// IndexOffset and IndexSize locate the index payload inside the blob; IndexDigest is
	// "sha256:<hex>" of those bytes.
	IndexOffset int64
	IndexSize   int64
	IndexDigest string

	Entries int // tar entries
	Files   int // regular files with content
	Chunks  int // content chunks
}

// Annotations returns the descriptor annotations a manifest must carry for this layer.
func (r *Result) Annotations() map[string]string {
	return map[string]string{
		AnnotationVersion:     strconv.Itoa(Version),
		AnnotationIndexOffset: strconv.FormatInt(r.IndexOffset, 10),
		AnnotationIndexSize:   strconv.FormatInt(r.IndexSize, 10),
		AnnotationIndexDigest: r.IndexDigest,
	}
}

// IsLayer reports whether a descriptor's annotations mark a lazypull layer.
func IsLayer(annotations map[string]string) bool {
	_, ok := annotations[AnnotationIndexDigest]
	return ok
}
