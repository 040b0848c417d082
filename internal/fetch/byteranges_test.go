package fetch

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"lazypull/internal/testutil"
)

// The blob and the ranges the byteranges tests and fuzz targets ask for.
var (
	brBlob  = testutil.RandBytes(70, 4096)
	brWants = []Range{{10, 20}, {100, 50}, {1000, 1}, {2000, 300}}
)

const brBoundary = "3d6b6a416f9b5"

// bodyOpts shape a multipart/byteranges body of brBlob.
type bodyOpts struct {
	order    []int  // which wants, in which order (default all, in order)
	merge    bool   // one part for wants 0 and 1, the hole between them included
	lf       bool   // bare LF line ends
	preamble string // before the first delimiter
	epilogue string // after the close delimiter
	padding  string // after each delimiter
	header   string // an extra header value in each part
}

// brBody builds a body; end is the offset just past the close delimiter line.
func brBody(o bodyOpts) (body []byte, end int) {
	nl := "\r\n"
	if o.lf {
		nl = "\n"
	}
	order := o.order
	if order == nil {
		order = []int{0, 1, 2, 3}
	}
	var b bytes.Buffer
	b.WriteString(o.preamble)
	for k, i := range order {
		r := brWants[i]
		if o.merge && i == 1 {
			continue
		}
		if o.merge && i == 0 {
			r = Range{brWants[0].Off, brWants[1].End() - brWants[0].Off}
		}
		if k > 0 || o.preamble != "" {
			b.WriteString(nl)
		}
		b.WriteString("--" + brBoundary + o.padding + nl)
		b.WriteString("Content-Type: application/octet-stream" + nl)
		if o.header != "" {
			b.WriteString("X-Fuzz: " + o.header + nl)
		}
		fmt.Fprintf(&b, "Content-Range: bytes %d-%d/%d%s%s", r.Off, r.End()-1, len(brBlob), nl, nl)
		b.Write(brBlob[r.Off:r.End()])
	}
	b.WriteString(nl + "--" + brBoundary + "--" + o.padding + nl)
	end = b.Len()
	b.WriteString(o.epilogue)
	return b.Bytes(), end
}

type delivery map[int][]byte

func readBR(t testing.TB, body []byte, boundary string) (delivery, []bool, error) {
	got := delivery{}
	ok, err := readMultipart(bytes.NewReader(body), boundary, brWants, int64(len(brBlob)), func(i int, b []byte) {
		if _, dup := got[i]; dup {
			t.Fatalf("range %d delivered twice", i)
		}
		got[i] = bytes.Clone(b)
	}, nil)
	if len(ok) != len(brWants) {
		t.Fatalf("%d results for %d ranges", len(ok), len(brWants))
	}
	for i := range brWants {
		if ok[i] != (got[i] != nil) {
			t.Fatalf("range %d: reported %v, delivered %v", i, ok[i], got[i] != nil)
		}
	}
	return got, ok, err
}

// checkDelivered fails on any delivered range whose bytes are not the blob's.
func checkDelivered(t testing.TB, got delivery) {
	t.Helper()
	for i, b := range got {
		w := brWants[i]
		if !bytes.Equal(b, brBlob[w.Off:w.End()]) {
			t.Fatalf("range %d (%v): wrong bytes", i, w)
		}
	}
}

func TestReadMultipart(t *testing.T) {
	for name, o := range map[string]bodyOpts{
		"plain":      {},
		"reordered":  {order: []int{3, 1, 0, 2}},
		"merged":     {merge: true},
		"LF":         {lf: true},
		"preamble":   {preamble: "\r\n"},
		"text first": {preamble: "This is a multipart body.\r\n"},
		"epilogue":   {epilogue: "trailing junk, ignored\r\n--" + brBoundary + "\r\n"},
		"padding":    {padding: " \t "},
		"headers":    {header: "x"},
	} {
		t.Run(name, func(t *testing.T) {
			body, _ := brBody(o)
			got, _, err := readBR(t, body, brBoundary)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(brWants) {
				t.Fatalf("%d of %d ranges", len(got), len(brWants))
			}
			checkDelivered(t, got)
			// One byte at a time, as a slow network hands it over.
			got = delivery{}
			_, err = readMultipart(iotest.OneByteReader(bytes.NewReader(body)), brBoundary, brWants, int64(len(brBlob)),
				func(i int, b []byte) { got[i] = bytes.Clone(b) }, nil)
			if err != nil || len(got) != len(brWants) {
				t.Fatalf("byte by byte: %v, %d ranges", err, len(got))
			}
			checkDelivered(t, got)
		})
	}
	// As Go's multipart writer (and so http.ServeContent, and Docker's registry) writes it.
	body, boundary := goMultipart(brBlob, brWants)
	got, _, err := readBR(t, body, boundary)
	if err != nil || len(got) != len(brWants) {
		t.Fatalf("multipart.Writer body: %v", err)
	}
	checkDelivered(t, got)
}

// Cut anywhere, a body gives io.ErrUnexpectedEOF, and only the parts read whole.
func TestReadMultipartTruncated(t *testing.T) {
	body, end := brBody(bodyOpts{order: []int{2, 0, 3, 1}})
	for cut := range end {
		got, _, err := readBR(t, body[:cut], brBoundary)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("cut at %d: %v", cut, err)
		}
		checkDelivered(t, got)
	}
}

func TestReadMultipartMalformed(t *testing.T) {
	good, _ := brBody(bodyOpts{})
	cr := func(s string) []byte {
		return []byte("--" + brBoundary + "\r\nContent-Range: " + s + "\r\n\r\n" + string(brBlob[10:30]) + "\r\n--" + brBoundary + "--\r\n")
	}
	cases := map[string]struct {
		body     []byte
		boundary string
	}{
		"other boundary":      {good, "nope"},
		"empty boundary":      {good, ""},
		"no Content-Range":    {[]byte("--" + brBoundary + "\r\nContent-Type: x\r\n\r\nabc\r\n--" + brBoundary + "--\r\n"), brBoundary},
		"range not asked":     {cr("bytes 11-30/4096"), brBoundary},
		"range of other blob": {cr("bytes 10-29/4097"), brBoundary},
		"range past the end":  {cr("bytes 10-5000/4096"), brBoundary},
		"range backwards":     {cr("bytes 29-10/4096"), brBoundary},
		"negative":            {cr("bytes -10-29/4096"), brBoundary},
		"other unit":          {cr("items 10-29/4096"), brBoundary},
		"too large":           {cr("bytes 0-4095/4096"), brBoundary},
		"data too long":       {bytes.Replace(good, brBlob[10:30], append(bytes.Clone(brBlob[10:30]), 'x'), 1), brBoundary},
		"data too short":      {bytes.Replace(good, brBlob[10:30], brBlob[10:29], 1), brBoundary},
		"two Content-Ranges": {[]byte("--" + brBoundary + "\r\nContent-Range: bytes 10-29/4096\r\nContent-Range: bytes 10-29/4096\r\n\r\n" +
			string(brBlob[10:30]) + "\r\n--" + brBoundary + "--\r\n"), brBoundary},
		"duplicate part":  {append(bytes.TrimSuffix(good, []byte("--"+brBoundary+"--\r\n")), cr("bytes 10-29/4096")...), brBoundary},
		"header no colon": {[]byte("--" + brBoundary + "\r\nContent-Range bytes 10-29/4096\r\n\r\n"), brBoundary},
		"long line":       {[]byte("--" + brBoundary + "\r\nX: " + strings.Repeat("a", 10000) + "\r\n"), brBoundary},
		"long preamble":   {[]byte(strings.Repeat("line\r\n", 100)), brBoundary},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			got, _, err := readBR(t, c.body, c.boundary)
			if !errors.Is(err, errMalformed) {
				t.Fatalf("error %v, want malformed", err)
			}
			checkDelivered(t, got)
		})
	}
	// Parts missing: no error, the rest reported undelivered.
	body, _ := brBody(bodyOpts{order: []int{3, 1}})
	got, ok, err := readBR(t, body, brBoundary)
	if err != nil || len(got) != 2 || ok[0] || !ok[1] || ok[2] || !ok[3] {
		t.Fatalf("missing parts: %v %v", ok, err)
	}
	checkDelivered(t, got)
}

func TestReadSingleAndWhole(t *testing.T) {
	sink := func(got delivery) rangeSink { return func(i int, b []byte) { got[i] = bytes.Clone(b) } }
	// A range that covers several wants.
	got := delivery{}
	ok, err := readSingle(bytes.NewReader(brBlob[10:150]), "bytes 10-149/4096", 140, brWants, 4096, sink(got), nil)
	if err != nil || !ok[0] || !ok[1] || ok[2] || ok[3] {
		t.Fatalf("covering range: %v %v", ok, err)
	}
	checkDelivered(t, got)
	for name, c := range map[string]struct {
		body []byte
		cr   string
		cl   int64
		want error
	}{
		"short":          {brBlob[10:20], "bytes 10-29/4096", -1, io.ErrUnexpectedEOF},
		"long":           {brBlob[10:40], "bytes 10-29/4096", -1, errMalformed},
		"length differs": {brBlob[10:30], "bytes 10-29/4096", 25, errMalformed},
		"no header":      {brBlob[10:30], "", -1, errMalformed},
		"covers nothing": {brBlob[11:31], "bytes 11-30/4096", -1, errMalformed},
		"star total":     {brBlob[10:30], "bytes 10-29/*", 20, nil},
	} {
		got := delivery{}
		_, err := readSingle(bytes.NewReader(c.body), c.cr, c.cl, brWants[:1], 4096, sink(got), nil)
		if !errors.Is(err, c.want) && !(c.want == nil && err == nil) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
		checkDelivered(t, got)
	}
	got = delivery{}
	ok, err = readWhole(bytes.NewReader(brBlob), 4096, brWants, 4096, sink(got))
	if err != nil || len(got) != 4 {
		t.Fatalf("whole: %v %v", ok, err)
	}
	checkDelivered(t, got)
	got = delivery{}
	_, err = readWhole(bytes.NewReader(brBlob[:1500]), -1, brWants, 4096, sink(got))
	if !errors.Is(err, io.ErrUnexpectedEOF) || len(got) != 3 {
		t.Fatalf("whole, short: %v, %d ranges", err, len(got))
	}
	checkDelivered(t, got)
	if _, err := readWhole(bytes.NewReader(brBlob), 4000, brWants, 4096, sink(delivery{})); !errors.Is(err, errMalformed) {
		t.Fatalf("whole of another size: %v", err)
	}
}

// TestReadMultipartBoundaryInData: a part's data is as long as its Content-Range says,
// whatever it holds: a delimiter line inside it (RFC 2046 forbids it, but a server that
// picks its boundary without looking, as Go's http.ServeContent or nginx, may send one, and
// an image's author may put one in a layer) does not end the part.
func TestReadMultipartBoundaryInData(t *testing.T) {
	w := Range{100, 50}
	blob := bytes.Clone(brBlob)
	copy(blob[w.Off+10:], "\r\n--"+brBoundary+"\r\nContent-Range: bytes 0-9/4096\r\n\r\n")
	body := fmt.Sprintf("--%s\r\nContent-Range: bytes %d-%d/%d\r\n\r\n%s\r\n--%s--\r\n", brBoundary, w.Off, w.End()-1, len(blob), blob[w.Off:w.End()], brBoundary)
	var got []byte
	ok, err := readMultipart(strings.NewReader(body), brBoundary, []Range{w}, int64(len(blob)), func(i int, b []byte) { got = b }, nil)
	if err != nil || !ok[0] || !bytes.Equal(got, blob[w.Off:w.End()]) {
		t.Fatalf("%v %v: %q", ok, err, got)
	}
}

// endlessLines repeats line for ever and counts the bytes it has handed over.
type endlessLines struct {
	head, line string
	n          int
}

func (e *endlessLines) Read(p []byte) (int, error) {
	k := 0
	for k < len(p) {
		src := e.line
		if e.n < len(e.head) {
			src = e.head[e.n:]
		} else {
			src = src[(e.n-len(e.head))%len(e.line):]
		}
		c := copy(p[k:], src)
		k += c
		e.n += c
	}
	return k, nil
}

// TestReadMultipartHeadBound: the text around the parts' data (preamble, delimiters, part
// headers) is held to maxLine, maxPreambleLines and maxPartHeaders, not to mime/multipart's
// own bounds (10 MiB of header, 10000 header lines): an endless preamble or header block is
// refused as malformed after a few KiB of it have been read.
func TestReadMultipartHeadBound(t *testing.T) {
	first, _ := brBody(bodyOpts{order: []int{0}})
	first = bytes.TrimSuffix(first, []byte("--\r\n")) // the first part, and the next delimiter
	for name, c := range map[string]struct{ head, line string }{
		"preamble":       {"", "preamble\r\n"},
		"first headers":  {"--" + brBoundary + "\r\n", "X-A: b\r\n"},
		"later headers":  {string(first) + "\r\n", "X-A: b\r\n"},
		"long headers":   {"--" + brBoundary + "\r\n", "X-A: " + strings.Repeat("b", maxLine-7) + "\r\n"},
		"folded headers": {"--" + brBoundary + "\r\nX-A: b\r\n", " b\r\n"},
	} {
		t.Run(name, func(t *testing.T) {
			r := &endlessLines{head: c.head, line: c.line}
			got := delivery{}
			_, err := readMultipart(r, brBoundary, brWants, int64(len(brBlob)), func(i int, b []byte) { got[i] = bytes.Clone(b) }, nil)
			if !errors.Is(err, errMalformed) {
				t.Fatalf("error %v, want malformed", err)
			}
			checkDelivered(t, got)
			lines := max(maxPreambleLines, maxPartHeaders+3)
			if bound := len(c.head) + lines*len(c.line) + 16<<10; r.n > bound {
				t.Errorf("read %d bytes of the body before refusing it; the bounds allow %d", r.n, bound)
			}
		})
	}
}

// FuzzReadMultipart feeds hostile bodies to the multipart/byteranges reader. It must never
// panic, deliver a range twice or with the wrong length, or deliver bytes that are not in
// the body; a body that reports success has delivered what it says.
func FuzzReadMultipart(f *testing.F) {
	for _, o := range []bodyOpts{{}, {merge: true}, {lf: true}, {order: []int{2, 1}}, {preamble: "\r\n", padding: " "}} {
		body, _ := brBody(o)
		f.Add(body, brBoundary)
	}
	f.Add([]byte("--b\r\nContent-Range: bytes 10-29/4096\r\n\r\n01234567890123456789\r\n--b--\r\n"), "b")
	f.Add([]byte("--b\r\nContent-Range: bytes 0-4095/*\r\n\r\n"), "b")
	f.Add([]byte(""), "b")
	f.Fuzz(func(t *testing.T, body []byte, boundary string) {
		got, ok, err := readBR(t, body, boundary)
		for i, b := range got {
			if int64(len(b)) != brWants[i].Len {
				t.Fatalf("range %d: %d bytes, want %d", i, len(b), brWants[i].Len)
			}
			if !bytes.Contains(body, b) {
				t.Fatalf("range %d: bytes not in the body", i)
			}
		}
		if err != nil && !errors.Is(err, errMalformed) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("unexpected error kind: %v", err)
		}
		_ = ok
	})
}

// FuzzMultipartFraming varies how a correct answer is framed (order, merging, line ends,
// preamble, padding, headers, epilogue) and where it is cut. Whatever the framing, every
// byte delivered is the blob's; an uncut body delivers everything; a body cut before the
// close delimiter fails.
func FuzzMultipartFraming(f *testing.F) {
	f.Add(uint8(0), false, false, "", "", "", "", uint16(65535))
	f.Add(uint8(5), true, false, "\r\n", "junk", " ", "v", uint16(300))
	f.Add(uint8(9), false, true, "preamble", "", "\t", "", uint16(10))
	f.Fuzz(func(t *testing.T, perm uint8, merge, lf bool, preamble, epilogue, padding, header string, cut uint16) {
		clean := func(s string) string {
			return strings.Map(func(r rune) rune {
				if r == '\r' || r == '\n' || r == '-' {
					return -1
				}
				return r
			}, s)
		}
		pad := strings.Map(func(r rune) rune {
			if r == ' ' || r == '\t' {
				return r
			}
			return -1
		}, padding)
		order := []int{0, 1, 2, 3}
		p := int(perm)
		for i := len(order) - 1; i > 0; i-- { // a permutation picked by perm
			j := p % (i + 1)
			p /= i + 1
			order[i], order[j] = order[j], order[i]
		}
		o := bodyOpts{order: order, merge: merge, lf: lf, epilogue: epilogue, padding: pad, header: clean(header)}
		if pre := clean(preamble); pre != "" {
			o.preamble = pre + "\r\n"
		}
		body, end := brBody(o)
		n := min(int(cut), len(body))
		got, _, err := readBR(t, body[:n], brBoundary)
		checkDelivered(t, got)
		switch {
		case n >= end && (err != nil || len(got) != len(brWants)):
			t.Fatalf("whole body (%d of %d bytes): %v, %d ranges", n, len(body), err, len(got))
		case n < end && err == nil:
			t.Fatalf("body cut at %d of %d: no error", n, end)
		}
	})
}

func FuzzParseChallenge(f *testing.F) {
	f.Add(`Bearer realm="https://auth/token",service="reg",scope="repository:a:pull"`)
	f.Add(`Basic realm="x", Negotiate, Bearer realm=x`)
	f.Add(`Bearer realm="a\"b`)
	f.Fuzz(func(t *testing.T, v string) {
		ch, ok := parseChallenge([]string{v})
		if ok && ch.Scheme == "" {
			t.Fatal("challenge without a scheme")
		}
	})
}

func FuzzContentRange(f *testing.F) {
	f.Add("bytes 0-9/100", int64(100))
	f.Add("bytes 5-5/*", int64(-1))
	f.Add("bytes 9223372036854775807-9223372036854775807/9223372036854775807", int64(-1))
	f.Fuzz(func(t *testing.T, v string, size int64) {
		first, last, err := parseContentRange(v, size)
		if err != nil {
			return
		}
		if first < 0 || last < first || (size >= 0 && last >= size) {
			t.Fatalf("%q (size %d): %d-%d accepted", v, size, first, last)
		}
	})
}

// gatedReader hands over its bytes up to gate, then blocks until the gate is opened.
type gatedReader struct {
	r    io.Reader
	n    int64 // bytes handed over
	gate int64
	open chan struct{}
}

func (g *gatedReader) Read(p []byte) (int, error) {
	if g.n >= g.gate {
		select {
		case <-g.open:
		case <-time.After(5 * time.Second): // nothing told early: go on, and fail
		}
	} else if int64(len(p)) > g.gate-g.n {
		p = p[:g.gate-g.n]
	}
	k, err := g.r.Read(p)
	g.n += int64(k)
	return k, err
}

// TestReadProgress: a long part's front is told while the rest is still on its way (the
// reader blocks half-way), in both answers that can carry one; its last holdBack bytes
// only whole, after the part checked out; short parts only whole.
func TestReadProgress(t *testing.T) {
	blob := make([]byte, 4<<20)
	for i := range blob {
		blob[i] = byte(i * 7 / 5)
	}
	const off, n = 1000, 2 << 20
	wants := []Range{{0, 10}, {off, n}}
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	for _, w := range wants {
		p, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Range": {fmt.Sprintf("bytes %d-%d/%d", w.Off, w.End()-1, len(blob))}})
		_, _ = p.Write(blob[w.Off:w.End()])
	}
	mw.Close()
	for name, read := range map[string]func(r io.Reader, ws []Range, sink rangeSink, progress progressSink) ([]bool, error){
		"multipart": func(r io.Reader, ws []Range, sink rangeSink, progress progressSink) ([]bool, error) {
			return readMultipart(r, mw.Boundary(), ws, int64(len(blob)), sink, progress)
		},
		"single": func(r io.Reader, ws []Range, sink rangeSink, progress progressSink) ([]bool, error) {
			return readSingle(r, fmt.Sprintf("bytes %d-%d/%d", off, off+n-1, len(blob)), n, ws[1:], int64(len(blob)), sink, progress)
		},
	} {
		t.Run(name, func(t *testing.T) {
			body := mp.Bytes()
			if name == "single" {
				body = blob[off : off+n]
			}
			g := &gatedReader{r: bytes.NewReader(body), gate: int64(len(body)) / 2, open: make(chan struct{})}
			var mu sync.Mutex
			var seen int64 // the most of the long range told before the gate opened
			var whole, early bool
			progress := func(i int, b []byte, k int64) {
				mu.Lock()
				defer mu.Unlock()
				if int64(len(b)) != k || k <= 0 || k > n-holdBack {
					t.Errorf("progress of want %d: %d bytes told, %d given; want the long range's first, at most %d", i, k, len(b), n-holdBack)
					return
				}
				if !bytes.Equal(b[:k], blob[off:off+k]) {
					t.Errorf("progress: the first %d bytes are not the blob's", k)
				}
				if g.n < int64(len(body)) {
					early = true
				}
				seen = max(seen, k)
				if k >= int64(len(body))/4 {
					select {
					case <-g.open:
					default:
						close(g.open) // seen while the reader was held: go on
					}
				}
			}
			sink := func(i int, b []byte) {
				if len(b) == n {
					whole = bytes.Equal(b, blob[off:off+n])
				}
			}
			ok, err := read(g, wants, sink, progress)
			if err != nil || !ok[len(ok)-1] {
				t.Fatalf("%v %v", ok, err)
			}
			if !early || seen < int64(len(body))/4 || !whole {
				t.Errorf("told early %v, up to %d bytes; delivered whole %v", early, seen, whole)
			}
		})
	}
	// A short part: nothing but the whole.
	_, err := readSingle(bytes.NewReader(blob[:progressMin-1]), fmt.Sprintf("bytes 0-%d/%d", progressMin-2, len(blob)), progressMin-1,
		[]Range{{0, progressMin - 1}}, int64(len(blob)), func(int, []byte) {}, func(int, []byte, int64) { t.Error("progress of a short part") })
	if err != nil {
		t.Fatal(err)
	}
}

// BenchmarkReadMultipart reads four 4 MiB parts of a 32 MiB blob, as Go's multipart writer
// frames them, with progress told.
func BenchmarkReadMultipart(b *testing.B) {
	blob := testutil.RandBytes(5, 32<<20)
	wants := []Range{{0, 4 << 20}, {8 << 20, 4 << 20}, {16 << 20, 4 << 20}, {24 << 20, 4 << 20}}
	body, boundary := goMultipart(blob, wants)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := readMultipart(bytes.NewReader(body), boundary, wants, int64(len(blob)), func(int, []byte) {}, func(int, []byte, int64) {}); err != nil {
			b.Fatal(err)
		}
	}
}

// goMultipart is a multipart/byteranges answer of the ranges wants of blob, as Go's
// multipart writer (and so http.ServeContent, and Docker's registry) writes it, and its
// boundary.
func goMultipart(blob []byte, wants []Range) ([]byte, string) {
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	for _, w := range wants {
		p, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Range": {fmt.Sprintf("bytes %d-%d/%d", w.Off, w.End()-1, len(blob))}})
		_, _ = p.Write(blob[w.Off:w.End()])
	}
	_ = mw.Close()
	return b.Bytes(), mw.Boundary()
}
