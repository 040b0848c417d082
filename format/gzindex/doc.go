// Package gzindex gives random access into an unconverted gzip blob (an OCI tar+gzip
// layer as any builder pushed it) through an index built in one streaming pass: zlib's
// zran technique, in Go, with every byte served verified.
//
// Build reads the blob once and records a checkpoint at the first deflate block boundary
// after every span of compressed bytes: the bit offset of the block, its offset in the
// uncompressed stream, the sha256 of the span's output up to the next checkpoint, and the
// output before it that the span's matches copy (its window: at most 32 KiB, the bytes
// they skip zeroed, the rest raw-deflate-compressed), written to a separate window blob
// with only its length and sha256 in the index. A Reader then serves any uncompressed
// range by fetching only the spans it covers from an io.ReaderAt (a registry range
// fetcher), and a window from the window blob only when a read starts a span whose
// preceding output it does not keep, inflating each run from its checkpoint with this
// package's own inflater (compress/flate cannot start at a bit offset), and checking the
// window's digest, then each span's, before serving a byte of it.
//
// Encode and Decode give the index a compact versioned binary form. Decode treats its
// input as hostile: a trailing sha256, canonical varints, checkpoints in order within the
// blob, spans within MaxSpanOut, and at most MemFactor times the input's size allocated.
//
// The package depends on the standard library only, as format does, so that a tool can
// read these indexes without lazypull.
package gzindex
