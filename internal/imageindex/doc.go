// Package imageindex indexes an image as it is, unconverted: `lazypull index REF`. It
// reads each gzip, zstd (or plain tar) layer once, streaming, and builds for each its
// gzindex or zstdindex (checkpoints for random access into the compressed blob,
// format/gzindex, format/zstdindex) and its file table (each tar entry's metadata, as
// format's index carries it, and where each regular file's content lies in the
// uncompressed tar stream, with its sha256). It pushes them as one artifact referring to
// the image manifest (OCI subject): one blob per image layer, named by the layer's digest
// in an annotation, then a window blob per gzip or zstd layer (the windows its
// checkpoints need, read by range). The image itself is not touched.
//
// A table's encoding (Table.Encode, DecodeTable) and a layer blob's (Layer.Encode,
// DecodeLayer) are read from the registry, so decoding treats them as hostile: bounded
// lengths, canonical varints, ranges within the tar stream, and at most MemFactor times
// the input allocated.
package imageindex
