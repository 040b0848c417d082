// Package ocilayout reads and writes directories in OCI image layout (oci-layout, index.json,
// blobs/ALG/HEX), the one implementation lazypull's converter, test-image builder and tools
// share.
//
// What it guarantees, beyond go-containerregistry's pkg/v1/layout (docs/design.md has the
// why):
//
//   - A blob is written to a temp file, checked against its descriptor (size and digest),
//     synced and renamed into place: a crash or a bad source never leaves a partial or wrong
//     blob under a digest's name.
//   - Tag replaces index.json atomically (temp file, fsync, rename, fsync of the directory),
//     and only once the manifest it names is in the layout; writers of one layout, in one
//     process or several, take turns (an flock on the directory), so none loses another's
//     tag.
//   - Reading index.json is bounded (MaxIndexSize, and jsonlimit's bound on what decoding
//     allocates), and a digest becomes a path only once it is known to be an algorithm and
//     hex digits: nothing a hostile layout says reaches outside its directory.
package ocilayout
