// Package wire is the encoding that format/gzindex and format/zstdindex share for their
// indexes: a magic and a version, canonical uvarints and byte strings, and a trailing
// sha256 of all before it; read as hostile. The standard library only, as they are.
package wire
