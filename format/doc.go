// Package format is the lazypull layer format and its index: the reference
// implementation of docs/format.md, which specifies it byte for byte.
//
// A lazypull layer is an ordinary tar+zstd OCI layer (MediaTypeLayer) that any runtime
// pulls and unpacks as it is. Its zstd stream is cut into frames so that every content
// chunk of a regular file is a frame of its own, and its decompressed bytes are the source
// tar byte for byte (same diff ID). An index of every entry and chunk follows in a
// skippable frame, then a 64-byte footer; the layer descriptor's annotations
// (AnnotationIndexOffset, AnnotationIndexSize, AnnotationIndexDigest) say where the index
// lies, so a reader fetches it with one Range request and checks it against the manifest.
//
// # Chain of trust
//
// The manifest's digest covers the annotations; the annotations name the index's digest;
// the index names the sha256 of every chunk and file. ReadIndex, ReadIndexFrom and
// ReadIndexBytes check an index against its location before decoding it, and
// Chunk.Decode checks a chunk's bytes against its digest: a reader that goes through them
// serves no byte that was not checked.
//
// # Untrusted input
//
// An index comes from the image's producer through a registry. DecodeIndex checks every
// count and length against the bytes that remain and against a decode budget
// (IndexBudget) before allocating, and the limits (MaxIndexSize, MaxChunkSize and the
// others) bound what any index may declare; a hostile index is an error, never a panic.
// Decoded indexes are shared within a process by digest (weak pointers), so images that
// share a base layer share its decoded index.
//
// # Use
//
//	res, err := format.Write(ctx, w, tarStream)           // convert one layer
//	loc, err := format.LocationFromAnnotations(desc.Annotations)
//	ix, payload, err := format.ReadIndexFrom(rangeBody, blobSize, loc)
//	e, ok := ix.Lookup("usr/bin/python3")
//	data, err := chunk.Decode(nil, frame)                 // verify a fetched chunk
//
// Where chunks are cut is format/chunker's (FastCDC, content-defined), chosen through a
// Cutter. The package depends on nothing else of lazypull: the standard library and zstd
// only (internal/depcheck checks it), so that a tool or a second implementation can use it
// alone.
package format
