// Package chunker owns lazypull's content-defined chunking: the rule that decides where a large
// file is cut into chunks, so that an insertion or deletion in the file moves only the
// boundaries near the edit and the chunks elsewhere keep their bytes (and digests).
//
// The algorithm is FastCDC (Xia et al., "FastCDC: a Fast and Efficient Content-Defined Chunking
// Approach for Data Deduplication", USENIX ATC '16): a gear rolling hash with normalized
// chunking. Everything that fixes the boundaries — the gear table, the masks, the hash window,
// the minimum/average/maximum sizes — is specified exactly in this package's documentation
// (see Cut), so that a second implementation reproduces the same boundaries byte for byte.
// Changing any of it changes every chunk lazypull produces; the golden tests pin it.
//
// The package owns only where the cuts fall. It does not hash, compress, store or index chunks;
// callers do that with the lengths or byte slices it returns.
//
// Two entry points:
//
//   - Cut and Boundary work on a byte slice already in memory.
//   - Chunker reads an io.Reader and returns one chunk per call to Next, reusing the caller's
//     buffer.
package chunker
