// Package zstdindex gives random access into an unconverted zstd blob (an OCI tar+zstd
// layer as any builder pushed it) through an index built in one streaming pass, with
// every byte served verified.
//
// Build decodes the blob once with this package's own block decoder (RFC 8878; Huffman
// literals through klauspost/compress/huff0) and records a checkpoint at the first frame
// start or block boundary after every span of compressed bytes. A frame start needs no
// state. A block boundary inside a frame needs the decoder's: the window (the frame's
// output before it, as far back as the span's matches read; stored as the runs of bytes
// they read),
// the three repeat offsets, and the entropy tables in force (the Huffman table, the FSE
// tables of literals lengths, match lengths and offsets). The window goes to a second
// blob, compressed, which a reader fetches by range; the index keeps the rest and the
// sha256 of each span's output.
//
// A Reader decodes a span with a stock decoder (klauspost/compress/zstd): the
// checkpoint's state becomes a zstd dictionary (RFC 8878 section 5: tables, repeat
// offsets, content = window), and the span's blocks, copied verbatim behind a new frame
// header naming it, the last one marked last, a frame it can decode. No byte is served
// before its span's output matches its digest.
//
// Encode and Decode give the index a compact versioned binary form. Decode treats its
// input as hostile: a trailing sha256, canonical varints, checkpoints in order, spans and
// windows within the limits, dictionary tables that parse, and at most MemFactor times
// the input's size allocated.
//
// The package depends on the standard library and klauspost/compress only, as format
// does, so that a tool can read these indexes without lazypull.
package zstdindex
