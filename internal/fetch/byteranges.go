package fetch

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"
)

// Readers of the three answers to a Range request: 206 with multipart/byteranges, 206 with
// one Content-Range, and 200 with the whole blob. Each is given the ranges asked for
// (wants: sorted, disjoint, none empty), hands each want it can serve to sink with exactly
// its bytes, and reports which it served. They never guess: bytes go to a want only from a
// part whose Content-Range covers it and whose framing checked out. Errors wrap
// errMalformed for an answer that breaks the format (or serves nothing asked for) and
// io.ErrUnexpectedEOF for one that ends early; other errors are the body's own.

// rangeSink receives the bytes of wants[i]; b is owned by the sink from then on.
type rangeSink func(i int, b []byte)

// progressSink is told, while a long part is read, that the first n bytes of wants[i] are
// in: b holds them, and they stay as they are (the part goes on in a buffer of its own
// when it grows). rangeSink gets the whole later (or nothing, if the part turns out bad).
// nil: no such news.
type progressSink func(i int, b []byte, n int64)

// Streaming a long part: its bytes are told to a progressSink as they come, so that what
// was asked for at the front of a span of megabytes (the first chunks of a large file)
// can be used before the last byte arrives. Parts shorter than progressMin are read
// whole. The last holdBack bytes of a part are only ever handed over whole, after the
// delimiter that follows them: a part shorter than its Content-Range says reads the next
// part's headers into its tail, and the delimiter check is what catches that. (What is
// handed over early is still checked, chunk by chunk, against its digest by the store.)
const (
	progressMin  = 256 << 10
	progressStep = 64 << 10
	holdBack     = 64 << 10
)

// partUpfront is how much of a part is allocated before its bytes arrive. A part's length
// is the answer's word (its Content-Range, checked against what was asked for, which is
// itself a claim: an index's frame sizes): up to partUpfront, a request's default bound
// (WithCoalescing), plus the frames that overhang a window's end (a read-ahead window of
// 16 MiB ends inside a chunk's frame: 512 KiB at most with the default chunker), it is
// read into one buffer of its length; past it (one frame of up to 72 MiB, a blob read
// whole) the buffer grows, at most doubling, as the bytes arrive, so an answer cut short
// costs what it sent. (With 16 MiB flat, every read-ahead window of a sequential read,
// 16 MiB and a few KiB, was allocated twice and copied once: 0.25 CPU s per GiB.)
const partUpfront = 17 << 20

// readPart reads the n-byte part that starts at blob offset first into a new buffer,
// telling progress of the wants in covered as their bytes come in.
func readPart(r io.Reader, n, first int64, wants []Range, covered []int, progress progressSink) ([]byte, error) {
	buf := make([]byte, 0, min(n, partUpfront))
	fill := func(end int64) error {
		for int64(len(buf)) < end {
			if len(buf) == cap(buf) {
				grown := make([]byte, len(buf), min(n, 2*int64(cap(buf))))
				buf = grown[:copy(grown, buf)]
			}
			k, err := io.ReadFull(r, buf[len(buf):min(end, int64(cap(buf)))])
			buf = buf[:len(buf)+k]
			if err != nil {
				return err
			}
		}
		return nil
	}
	if progress == nil || n < progressMin {
		err := fill(n)
		return buf, err
	}
	for int64(len(buf)) < n-holdBack {
		if err := fill(min(int64(len(buf))+progressStep, n-holdBack)); err != nil {
			return buf, err
		}
		have := int64(len(buf))
		for _, i := range covered {
			w := wants[i]
			lo := w.Off - first
			if in := min(have-lo, w.Len); in > 0 {
				progress(i, buf[lo:lo+in:lo+in], in)
			}
		}
	}
	err := fill(n)
	return buf, err
}

const (
	maxLine          = 4 << 10 // a delimiter or header line
	maxPreambleLines = 16
	maxPartHeaders   = 32
)

// readMultipart reads a multipart/byteranges body (RFC 9110 14.6). Parts may come in any
// order and may each cover several wants (a server may merge close ranges); a part that
// covers no want still outstanding, or is larger than the span of all wants, is malformed.
// A want's bytes are handed to sink only once its part has been read whole and the
// delimiter after it seen; progress (if not nil) hears of a long part's front earlier
// (readPart). size is the blob's size, which each part's Content-Range must agree with.
func readMultipart(r io.Reader, boundary string, wants []Range, size int64, sink rangeSink, progress progressSink) ([]bool, error) {
	got := make([]bool, len(wants))
	if len(wants) == 0 {
		return got, nil
	}
	if boundary == "" || len(boundary) > 200 || strings.ContainsAny(boundary, "\r\n") {
		return got, malformed("multipart boundary %q", boundary)
	}
	extent := wants[len(wants)-1].End() - wants[0].Off
	delim := "--" + boundary
	br := bufio.NewReaderSize(r, 2*maxLine)

	// The preamble, if any, up to the first delimiter. Its line end (CRLF, or a bare LF
	// from a sloppy server) is the one the CRLF after each part's data must have.
	var crlf bool
	for i := 0; ; i++ {
		if i == maxPreambleLines {
			return got, malformed("no multipart delimiter in the first %d lines", maxPreambleLines)
		}
		line, cr, err := readLine(br)
		if err != nil {
			return got, err
		}
		if d := trimPadding(line); d == delim {
			crlf = cr
			break
		} else if d == delim+"--" {
			return got, nil // no parts at all
		}
	}
	for {
		first, last, err := partHeaders(br, size)
		if err != nil {
			return got, err
		}
		var covered []int
		for i, w := range wants {
			if !got[i] && w.Off >= first && w.End() <= last+1 {
				covered = append(covered, i)
			}
		}
		n := last - first + 1
		if len(covered) == 0 {
			return got, malformed("part %d-%d serves no range asked for", first, last)
		}
		if n > extent {
			return got, malformed("part %d-%d larger than the %d bytes asked for", first, last, extent)
		}
		buf, err := readPart(br, n, first, wants, covered, progress)
		if err != nil {
			return got, unexpected(err)
		}
		// The data is followed by exactly the line end before the next delimiter;
		// anything else means the part is not as long as its Content-Range says.
		line, cr, err := readLine(br)
		if err != nil {
			return got, err
		}
		if len(line) != 0 || cr != crlf {
			return got, malformed("part %d-%d: its data is not %d bytes long", first, last, n)
		}
		line, _, err = readLine(br)
		if err != nil {
			return got, err
		}
		d := trimPadding(line)
		if d != delim && d != delim+"--" {
			return got, malformed("part %d-%d: no delimiter after its data", first, last)
		}
		for _, i := range covered {
			got[i] = true
			sink(i, buf[wants[i].Off-first:wants[i].End()-first:wants[i].End()-first])
		}
		if d == delim+"--" {
			return got, nil // the epilogue, if any, is ignored
		}
	}
}

// partHeaders reads one part's header lines and returns its Content-Range.
func partHeaders(br *bufio.Reader, size int64) (first, last int64, err error) {
	var cr string
	seen := false
	for i := 0; ; i++ {
		if i == maxPartHeaders {
			return 0, 0, malformed("more than %d part header lines", maxPartHeaders)
		}
		line, _, err := readLine(br)
		if err != nil {
			return 0, 0, err
		}
		if len(line) == 0 {
			break
		}
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok || len(k) == 0 || k[0] == ' ' || k[0] == '\t' {
			return 0, 0, malformed("part header line %q", truncate(line))
		}
		if strings.EqualFold(strings.TrimSpace(string(k)), "Content-Range") {
			if seen {
				return 0, 0, malformed("part with two Content-Range headers")
			}
			seen, cr = true, string(v)
		}
	}
	if !seen {
		return 0, 0, malformed("part without Content-Range")
	}
	return parseContentRange(cr, size)
}

// readSingle reads the body of a 206 answer with a single Content-Range (cr). A server may
// answer a multi-range request so, with one range that covers them all or (wrongly) with
// the first alone; wants it covers are served, the others left. contentLength is the
// response's, -1 if unknown.
func readSingle(r io.Reader, cr string, contentLength int64, wants []Range, size int64, sink rangeSink, progress progressSink) ([]bool, error) {
	got := make([]bool, len(wants))
	if len(wants) == 0 {
		return got, nil
	}
	first, last, err := parseContentRange(cr, size)
	if err != nil {
		return got, err
	}
	n := last - first + 1
	if extent := wants[len(wants)-1].End() - wants[0].Off; n > extent {
		return got, malformed("Content-Range %d-%d larger than the %d bytes asked for", first, last, extent)
	}
	if contentLength >= 0 && contentLength != n {
		return got, malformed("Content-Length %d for Content-Range %d-%d", contentLength, first, last)
	}
	var covered []int
	for i, w := range wants {
		if w.Off >= first && w.End() <= last+1 {
			covered = append(covered, i)
		}
	}
	if len(covered) == 0 {
		return got, malformed("Content-Range %d-%d serves no range asked for", first, last)
	}
	buf, err := readPart(r, n, first, wants, covered, progress)
	if err != nil {
		return got, unexpected(err)
	}
	var one [1]byte
	if k, _ := r.Read(one[:]); k > 0 {
		return got, malformed("body longer than its Content-Range %d-%d", first, last)
	}
	for _, i := range covered {
		got[i] = true
		sink(i, buf[wants[i].Off-first:wants[i].End()-first:wants[i].End()-first])
	}
	return got, nil
}

// readWhole serves wants from a 200 answer, the whole blob from offset 0, reading up to the
// end of the last want and no further. contentLength is the response's, -1 if unknown.
func readWhole(r io.Reader, contentLength int64, wants []Range, size int64, sink rangeSink) ([]bool, error) {
	got := make([]bool, len(wants))
	if contentLength >= 0 && size >= 0 && contentLength != size {
		return got, malformed("200 answer of %d bytes for a %d-byte blob", contentLength, size)
	}
	var pos int64
	for i, w := range wants {
		if w.Off < pos {
			return got, malformed("ranges out of order") // cannot happen: wants are sorted
		}
		if _, err := io.CopyN(io.Discard, r, w.Off-pos); err != nil {
			return got, unexpected(err)
		}
		buf, err := readPart(r, w.Len, w.Off, nil, nil, nil)
		if err != nil {
			return got, unexpected(err)
		}
		pos = w.End()
		got[i] = true
		sink(i, buf)
	}
	return got, nil
}

// parseContentRange parses "bytes FIRST-LAST/COMPLETE" (COMPLETE may be "*") and checks it
// against the blob's size.
func parseContentRange(v string, size int64) (first, last int64, err error) {
	v = strings.TrimSpace(v)
	unit, spec, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(unit, "bytes") {
		return 0, 0, malformed("Content-Range %q", truncate([]byte(v)))
	}
	spec = strings.TrimSpace(spec)
	rng, total, ok := strings.Cut(spec, "/")
	if !ok {
		return 0, 0, malformed("Content-Range %q", truncate([]byte(v)))
	}
	a, b, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, malformed("Content-Range %q", truncate([]byte(v)))
	}
	first, err1 := parseUint(a)
	last, err2 := parseUint(b)
	if err1 != nil || err2 != nil || first > last {
		return 0, 0, malformed("Content-Range %q", truncate([]byte(v)))
	}
	if total != "*" {
		t, err := parseUint(total)
		if err != nil {
			return 0, 0, malformed("Content-Range %q", truncate([]byte(v)))
		}
		if size >= 0 && t != size {
			return 0, 0, malformed("Content-Range %q: the blob is %d bytes", truncate([]byte(v)), size)
		}
	}
	if size >= 0 && last >= size {
		return 0, 0, malformed("Content-Range %q past the %d-byte blob", truncate([]byte(v)), size)
	}
	return first, last, nil
}

// parseUint parses plain decimal digits (no sign, no spaces) into a non-negative int64.
func parseUint(s string) (int64, error) {
	if s == "" || s[0] < '0' || s[0] > '9' {
		return 0, errors.New("not a number")
	}
	return strconv.ParseInt(s, 10, 64)
}

// readLine reads a line of at most maxLine bytes and returns it without its LF or CRLF,
// and whether it ended in CRLF.
func readLine(br *bufio.Reader) (line []byte, crlf bool, err error) {
	line, err = br.ReadSlice('\n')
	switch {
	case errors.Is(err, bufio.ErrBufferFull) || len(line) > maxLine:
		return nil, false, malformed("line longer than %d bytes", maxLine)
	case err != nil:
		return nil, false, unexpected(err)
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		return line[:n-1], true, nil
	}
	return line, false, nil
}

// trimPadding drops the whitespace RFC 2046 allows after a delimiter.
func trimPadding(line []byte) string {
	return string(bytes.TrimRight(line, " \t"))
}

// unexpected turns an EOF in the middle of an answer into io.ErrUnexpectedEOF.
func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

func truncate(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "..."
	}
	return string(b)
}
