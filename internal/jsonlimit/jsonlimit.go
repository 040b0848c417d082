// Package jsonlimit bounds what decoding a JSON document from the network may allocate,
// before it is decoded.
//
// encoding/json decodes each object or array into a Go value: a struct, a map, a slice
// element. Two bytes of JSON ("{}") can become a struct of hundreds of bytes: a 4 MiB image
// index of empty descriptors, the largest manifest a registry may send, decodes into about
// 1 GiB. Scalars cost a small multiple of their text. So a document whose objects and
// arrays are few for its size decodes into a small multiple of its size; Check refuses the
// others before decoding.
package jsonlimit

import "fmt"

// Limits of Check: a document of n bytes may hold FreeContainers + n/BytesPerContainer
// objects and arrays. A descriptor (media type, digest, size) is over 100 bytes, a
// platform or annotations object some 40 or more; manifests, indexes and referrers lists
// average well over 64 bytes per object or array.
const (
	BytesPerContainer = 64
	FreeContainers    = 64
)

// Count returns the objects and arrays of a JSON text: the '{' and '[' outside strings.
// It does not validate the text; the decoder does.
func Count(b []byte) (objects, arrays int) {
	var str stringTracker
	for _, c := range b {
		switch {
		case str.step(c):
		case c == '{':
			objects++
		case c == '[':
			arrays++
		}
	}
	return objects, arrays
}

// stringTracker follows a JSON text byte by byte, to tell the bytes of its strings
// (quotes included) from the structure around them.
type stringTracker struct{ in, escaped bool }

// step takes the text's next byte c and reports whether it belongs to a string.
func (s *stringTracker) step(c byte) bool {
	switch {
	case s.escaped:
		s.escaped = false
	case s.in:
		switch c {
		case '\\':
			s.escaped = true
		case '"':
			s.in = false
		}
	case c == '"':
		s.in = true
	default:
		return false
	}
	return true
}

// Check returns an error, naming what the document is, when b holds more objects and
// arrays than a document of its size may (BytesPerContainer, FreeContainers).
func Check(b []byte, what string) error {
	o, a := Count(b)
	if limit := FreeContainers + len(b)/BytesPerContainer; o+a > limit {
		return fmt.Errorf("%s: %d objects and arrays in %d bytes, more than the %d a document of its size may hold", what, o+a, len(b), limit)
	}
	return nil
}

// Elements returns the number of elements of a JSON array b (the commas at its top level,
// outside strings, plus one), or 0 when b is not an array or is empty. It does not
// validate the text.
func Elements(b []byte) int {
	depth, commas, nonEmpty := 0, 0, false
	var str stringTracker
	for _, c := range b {
		if str.step(c) {
			nonEmpty = nonEmpty || depth >= 1 // a string in the array, or an element's
			continue
		}
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		case '{', '[':
			depth++
			if depth == 1 {
				if c != '[' {
					return 0
				}
				continue
			}
		case '}', ']':
			depth--
			continue
		case ',':
			if depth == 1 {
				commas++
			}
		}
		if depth >= 1 {
			nonEmpty = true
		}
	}
	if !nonEmpty {
		return 0
	}
	return commas + 1
}
