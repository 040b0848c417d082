// Package convert turns a container image into a lazypull image.
//
// Convert reads an image (one manifest, or an index of one per platform) from a registry or
// an OCI image layout, rewrites every layer with format.Write, and writes the result to a
// registry or an OCI image layout:
//
//   - each gzip, zstd or uncompressed tar layer becomes a format.MediaTypeLayer layer whose
//     decompressed stream is the original tar byte for byte, so its diff ID is unchanged and
//     the original config blob is written unchanged (same digest);
//   - with Options.Profile, each layer's entries are reordered instead, the profile's files
//     first (layout.go): the diff IDs change, and the config is rewritten with the new ones;
//   - layers that already are lazypull layers (format.IsLayer) are copied as they are;
//   - the result is an OCI image manifest per image, with the original manifest annotations
//     and the config embedded in the config descriptor's data field (up to 16 KiB; the blob
//     is written too), and an OCI index when the source was multi-platform and no platform
//     was picked.
//
// Every blob read is checked against its descriptor (size and digest), every layer against
// the diff ID its config lists. Blobs are written first, then manifests, and the tag last, so
// a conversion that fails leaves nothing tagged.
//
// Anything else (foreign or non-distributable layers, artifacts, schema 1 manifests) is
// refused with an error naming the image and the layer, before any layer is converted.
package convert
