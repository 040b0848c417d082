package fetch

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"mime/multipart"
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
// whole. The last holdBack bytes of a part are only ever handed over whole, once the part
// has checked out (the delimiter after it, or the end of a single range's body): a part
// whose data is not as long as its Content-Range says is only caught at its end. (What is
// handed over early is still checked, chunk by chunk, against its digest by the store.)
const (
	progressMin  = 256 << 10
	progressStep = 64 << 10
	holdBack     = 64 << 10
)

// partUpfront is how much of a part is allocated before its bytes arrive. A part's length
// is the answer's word (its Content-Range, checked against what was asked for, which is
// itself a claim: an index's frame sizes): up to partUpfront, a request's default bound
// (WithCoalescing), it is read into one buffer of its length; past it (one frame of up to
// 72 MiB, a blob read whole) the buffer grows, at most doubling, as the bytes arrive, so
// an answer cut short costs what it sent.
const partUpfront = 16 << 20

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

// readMultipart reads a multipart/byteranges body (RFC 9110 14.6) with mime/multipart's
// Reader (raw parts: no transfer decoding). Parts may come in any order and may each cover
// several wants (a server may merge close ranges); a part that covers no want still
// outstanding, or is larger than the span of all wants, is malformed, and so is one whose
// data is not exactly as long as its Content-Range says. A want's bytes are handed to sink
// only once its part has been read whole and the delimiter after it, with the next part's
// headers (or the close delimiter), has checked out; progress (if not nil) hears of a long
// part's front earlier (readPart). size is the blob's size, which each part's
// Content-Range must agree with.
func readMultipart(r io.Reader, boundary string, wants []Range, size int64, sink rangeSink, progress progressSink) ([]bool, error) {
	got := make([]bool, len(wants))
	if len(wants) == 0 {
		return got, nil
	}
	if boundary == "" || len(boundary) > 200 || strings.ContainsAny(boundary, "\r\n") {
		return got, malformed("multipart boundary %q", boundary)
	}
	extent := wants[len(wants)-1].End() - wants[0].Off
	g := &headGuard{body: r, br: bufio.NewReaderSize(r, 2*maxLine), delim: "--" + boundary, preamble: true}
	mr := multipart.NewReader(g, boundary)
	var (
		covered []int  // the wants of the part read last, not yet handed over
		first   int64  // its first byte in the blob
		buf     []byte // its bytes
	)
	for {
		p, err := mr.NextRawPart()
		if err != nil && err != io.EOF {
			return got, g.classify(err)
		}
		// The delimiter after the part read last checked out.
		for _, i := range covered {
			got[i] = true
			sink(i, buf[wants[i].Off-first:wants[i].End()-first:wants[i].End()-first])
		}
		if err == io.EOF {
			return got, nil // the close delimiter; the epilogue, if any, is ignored
		}
		crs := p.Header.Values("Content-Range")
		switch {
		case len(crs) == 0:
			return got, malformed("part without Content-Range")
		case len(crs) > 1:
			return got, malformed("part with two Content-Range headers")
		}
		var last int64
		if first, last, err = parseContentRange(crs[0], size); err != nil {
			return got, err
		}
		covered = covered[:0]
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
		short := malformed("part %d-%d: its data is not %d bytes long", first, last, n)
		g.data, g.lines, g.header = n, 0, false
		if buf, err = readPart(partData{p, short}, n, first, wants, covered, progress); err != nil {
			return got, g.classify(err)
		}
		// The data is followed by the delimiter: the part has no more. (The Reader takes
		// a delimiter cut short for data: classify sees the cut.)
		var one [1]byte
		if k, err := p.Read(one[:]); k > 0 {
			return got, g.classify(short)
		} else if err != io.EOF {
			return got, g.classify(err)
		}
	}
}

// partData reads a part's data, which ends (io.EOF: the reader met the delimiter) before
// its Content-Range said it would with short.
type partData struct {
	p     *multipart.Part
	short error
}

func (d partData) Read(b []byte) (int, error) {
	n, err := d.p.Read(b)
	if err == io.EOF {
		err = d.short
	}
	return n, err
}

// headGuard sits between the body and the multipart.Reader. It hands the Reader a part's
// data as it comes, up to the length its Content-Range says (data), and everything else
// (preamble, line ends, delimiters, headers) one line at a time, so that it holds that text
// to lazypull's bounds, far below the Reader's own (10 MiB of header, 10000 header lines):
// lines of at most maxLine bytes, at most maxPreambleLines of them before the first
// delimiter and maxPartHeaders+3 after a part's data. In a part's header lines it replaces
// control characters with spaces, as RFC 9110 5.5 allows, where the Reader would refuse
// the part. It turns the body's EOF into io.ErrUnexpectedEOF: a body that ends before its
// close delimiter line has is cut short (the Reader would take a close delimiter without
// its line end for the end).
type headGuard struct {
	body     io.Reader
	br       *bufio.Reader // body
	delim    string
	data     int64  // bytes of a part's data still to hand over as they come
	preamble bool   // no delimiter yet
	header   bool   // the lines are a part's headers
	lines    int    // lines handed over since the data (or in the preamble)
	rest     []byte // of the line being handed over
	last     byte   // the last byte handed over
	eof      bool   // the body has ended
	err      error  // the body's own error, if any
}

func (g *headGuard) Read(p []byte) (int, error) {
	if len(g.rest) > 0 {
		n := copy(p, g.rest)
		g.rest = g.rest[n:]
		g.last = p[n-1]
		return n, nil
	}
	if g.data > 0 {
		p = p[:min(int64(len(p)), g.data)]
		var n int
		var err error
		if g.br.Buffered() > 0 {
			n, err = g.br.Read(p)
		} else {
			n, err = g.body.Read(p)
		}
		g.data -= int64(n)
		if n > 0 {
			g.last = p[n-1]
		}
		return n, g.bodyErr(err)
	}
	line, err := g.br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) || len(line) > maxLine {
		return 0, malformed("line longer than %d bytes", maxLine)
	}
	if len(line) == 0 {
		return 0, g.bodyErr(err)
	}
	g.lines++
	text := line // without its line end: LF, or CRLF
	if t, ok := bytes.CutSuffix(text, []byte("\n")); ok {
		text, _ = bytes.CutSuffix(t, []byte("\r"))
	}
	switch d := trimPadding(text); {
	case d == g.delim || d == g.delim+"--":
		if g.preamble {
			g.preamble, g.lines = false, 1
		}
		g.header = true
	case g.preamble && g.lines == maxPreambleLines:
		return 0, malformed("no multipart delimiter in the first %d lines", maxPreambleLines)
	case !g.preamble && g.lines > maxPartHeaders+3:
		return 0, malformed("more than %d part header lines", maxPartHeaders)
	case g.header && len(text) == 0:
		g.header = false
	case g.header:
		for i, c := range text {
			if c < ' ' && c != '\t' || c == 0x7f {
				text[i] = ' '
			}
		}
	}
	if err != nil {
		g.bodyErr(err) // the line is cut: the next Read says so
	}
	n := copy(p, line)
	g.rest = line[n:] // the Reader reads g again only once it has used all of line
	g.last = p[n-1]
	return n, nil
}

// bodyErr turns the body's EOF into io.ErrUnexpectedEOF and notes any other error.
func (g *headGuard) bodyErr(err error) error {
	switch {
	case err == nil:
	case errors.Is(err, io.EOF):
		g.eof = true
		return io.ErrUnexpectedEOF
	default:
		g.err = err
	}
	return err
}

// classify returns err, an error of the multipart.Reader or of a part, as readMultipart
// reports it: the body's own error, io.ErrUnexpectedEOF for a body cut short (the Reader
// takes a last line without its line end for a whole one: a header cut in two is "missing
// colon" to it), errMalformed for a body the Reader or the guard refused.
func (g *headGuard) classify(err error) error {
	switch {
	case g.err != nil && errors.Is(err, g.err):
		return g.err
	case errors.Is(err, io.ErrUnexpectedEOF), g.eof && g.last != '\n':
		return io.ErrUnexpectedEOF
	case errors.Is(err, errMalformed):
		return err
	}
	return malformed("%v", err)
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
