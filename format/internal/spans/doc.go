// Package spans is the reading side that format/gzindex and format/zstdindex share: a
// stream served by spans, each decoded whole and checked by its index before any of it is
// served, with the most recently used spans kept up to a number of bytes and the decodes
// in flight held to a budget. It depends on the standard library only, as they do.
package spans
