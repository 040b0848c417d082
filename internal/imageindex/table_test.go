package imageindex

import (
	"archive/tar"
	"bytes"
	"compress/flate"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"lazypull/format"
	"lazypull/format/gzindex"
	"lazypull/format/zstdindex"
	"lazypull/internal/testutil"
)

// testTar is a layer of every kind of entry: files (empty, small, over several spans),
// a directory, links, a device, a fifo, xattrs, nanosecond mtimes, a duplicate path.
func testTar(t testing.TB) []byte {
	dev := testutil.Entry{Hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: time.Unix(5, 0)}}
	fifo := testutil.Entry{Hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "run/fifo", Mode: 0o600, ModTime: time.Unix(-5, 0)}}
	ping := testutil.File("bin/ping", []byte("ping"))
	ping.Hdr.Format = tar.FormatPAX
	ping.Hdr.PAXRecords = map[string]string{"SCHILY.xattr.security.capability": "\x01\x00\x00\x02", "SCHILY.xattr.user.a": ""}
	ping.Hdr.ModTime = time.Unix(1700000000, 123456789)
	ping.Hdr.Uid, ping.Hdr.Gid, ping.Hdr.Mode = 1000, 1001, 0o4755
	return testutil.Tar(t,
		testutil.Dir("bin"),
		testutil.File("bin/empty", nil),
		ping,
		testutil.File("usr/lib/big", testutil.RandBytes(1, 700<<10)),
		testutil.File("usr/lib/text", bytes.Repeat([]byte("compressible text; "), 50000)),
		testutil.File("usr/share/corpus", testutil.Corpus(1<<20, 7)), // matches across checkpoints: windows
		testutil.Symlink("bin/sh", "/bin/bash"),
		testutil.Link("bin/ping2", "./bin/ping"),
		dev, fifo,
		testutil.File("../etc/motd", []byte("hello")),
		testutil.File("etc/motd", []byte("hello again")),
	)
}

func gzipped(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// zstded compresses b into one zstd frame at level 3, as skopeo writes a layer.
func zstded(t testing.TB, b []byte) []byte {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(b, nil)
}

// blobOf returns the tar stream tr as a layer blob of kind k.
func blobOf(t testing.TB, tr []byte, k Kind) []byte {
	switch k {
	case Gzip:
		return gzipped(t, tr)
	case Zstd:
		return zstded(t, tr)
	}
	return tr
}

// build indexes the layer blob in of kind kind, failing the test on an error.
func build(t testing.TB, in []byte, kind Kind, spanSize int64) *Built {
	t.Helper()
	b, _ := buildWindows(t, in, kind, spanSize)
	return b
}

// buildWindows indexes the layer blob in of kind kind and returns its window blob too.
func buildWindows(t testing.TB, in []byte, kind Kind, spanSize int64) (*Built, []byte) {
	t.Helper()
	var w bytes.Buffer
	b, err := BuildLayer(bytes.NewReader(in), kind, spanSize, &w)
	if err != nil {
		t.Fatal(err)
	}
	return b, w.Bytes()
}

// encode returns b's layer blob, failing the test on an error.
func encode(t testing.TB, b *Built) []byte {
	t.Helper()
	enc, err := b.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return enc
}

// TestBuildLayer builds the index of a gzip layer, of a zstd one and of their tar, and
// checks each entry against its tar header and each file's bytes read through the gzindex
// or zstdindex (and the tar itself) against the file.
func TestBuildLayer(t *testing.T) {
	tr := testTar(t)
	for _, k := range []Kind{Tar, Gzip, Zstd} {
		blob := blobOf(t, tr, k)
		b, windows := buildWindows(t, blob, k, 64<<10)
		if b.DiffID != format.Digest(sha256.Sum256(tr)) || b.Table.TarSize != int64(len(tr)) {
			t.Fatalf("%v: diff ID %s, tar size %d: want the tar's", k, b.DiffID, b.Table.TarSize)
		}
		if b.Kind() != k || (k == Gzip && b.GZ.NumSpans() < 2) || (k == Zstd && b.ZS.NumSpans() < 2) || k != Tar && (b.WindowsSize() != int64(len(windows)) || len(windows) == 0) {
			t.Fatalf("%v: index of kind %v (%d bytes of windows)", k, b.Kind(), len(windows))
		}
		var ra interface {
			ReadAt([]byte, int64) (int, error)
		} = bytes.NewReader(tr)
		switch k {
		case Gzip:
			ra = gzindex.NewReader(b.GZ, bytes.NewReader(blob), bytes.NewReader(windows), 2<<20)
		case Zstd:
			ra = zstdindex.NewReader(b.ZS, bytes.NewReader(blob), bytes.NewReader(windows), 0)
		}
		checkTable(t, b.Table, tr, ra)
	}
}

// checkTable compares t with the tar stream tr, reading contents through ra.
func checkTable(t *testing.T, tab *Table, tr []byte, ra interface {
	ReadAt([]byte, int64) (int, error)
}) {
	t.Helper()
	r := tar.NewReader(bytes.NewReader(tr))
	i := 0
	for ; ; i++ {
		h, err := r.Next()
		if err != nil {
			break
		}
		if i >= len(tab.Entries) {
			t.Fatalf("table has %d entries, the tar more", len(tab.Entries))
		}
		e := tab.Entries[i]
		want := format.EntryFromHeader(h)
		want.Digest, want.TarOffset, want.TarLen = e.Digest, e.TarOffset, e.TarLen
		if !reflect.DeepEqual(e, want) {
			t.Errorf("entry %d:\n got %+v\nwant %+v", i, e, want)
		}
		if !e.IsRegular() {
			continue
		}
		body := make([]byte, e.Size)
		r.Read(body)
		got := make([]byte, e.TarLen)
		if _, err := ra.ReadAt(got, e.TarOffset); err != nil && len(got) > 0 {
			t.Fatalf("%s: read %d+%d: %v", e.Name, e.TarOffset, e.TarLen, err)
		}
		if !bytes.Equal(got, body) || e.Digest != format.Digest(sha256.Sum256(body)) {
			t.Errorf("%s: content or digest differs", e.Name)
		}
	}
	if i != len(tab.Entries) {
		t.Fatalf("table has %d entries, the tar %d", len(tab.Entries), i)
	}
}

// TestLayerRoundTrip: a layer blob decodes to what was encoded, and encodes again to the
// same bytes.
func TestLayerRoundTrip(t *testing.T) {
	for _, k := range []Kind{Gzip, Zstd} {
		b := build(t, blobOf(t, testTar(t), k), k, 64<<10)
		enc := encode(t, b)
		l, err := DecodeLayer(enc, k)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(l.Table, b.Table) {
			t.Fatalf("%v: the table decodes to another", k)
		}
		if k == Gzip && !bytes.Equal(l.GZ.Encode(), b.GZ.Encode()) || k == Zstd && !bytes.Equal(l.ZS.Encode(), b.ZS.Encode()) {
			t.Fatalf("%v: the index decodes to another", k)
		}
		if again, _ := l.Encode(); !bytes.Equal(again, enc) {
			t.Fatalf("%v: a decoded layer encodes to other bytes", k)
		}
		for _, other := range []Kind{Tar, Gzip, Zstd} {
			if _, err := DecodeLayer(enc, other); other != k && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("the %v layer's index read as a %v layer's: %v", k, other, err)
			}
		}
	}
	enc := encode(t, build(t, gzipped(t, testTar(t)), Gzip, 64<<10))
	if _, err := DecodeLayer(enc, Tar); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a gzindex for an uncompressed layer: %v", err)
	}
	plain := build(t, testTar(t), Tar, 0)
	penc := encode(t, plain)
	for _, k := range []Kind{Gzip, Zstd} {
		if _, err := DecodeLayer(penc, k); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("a %v layer without its index: %v", k, err)
		}
	}
}

// TestBuildLayerRefuses: a blob that is not gzip, a tar cut short, a gzip stream with a
// bad CRC fail, with no goroutine left behind (the test's leak would hang the pipe).
func TestBuildLayerRefuses(t *testing.T) {
	tr := testTar(t)
	blob := gzipped(t, tr)
	bad := bytes.Clone(blob)
	bad[len(bad)-5] ^= 1 // the CRC
	zblob := zstded(t, tr)
	for name, c := range map[string]struct {
		in   []byte
		kind Kind
	}{
		"not gzip":       {tr, Gzip},
		"truncated gz":   {blob[:len(blob)/2], Gzip},
		"crc":            {bad, Gzip},
		"truncated tar":  {tr[:1000], Tar},
		"cut gz tar":     {gzipped(t, tr[:len(tr)/2+7]), Gzip},
		"not zstd":       {tr, Zstd},
		"truncated zstd": {zblob[:len(zblob)/2], Zstd},
		"cut zstd tar":   {zstded(t, tr[:len(tr)/2+7]), Zstd},
	} {
		if _, err := BuildLayer(bytes.NewReader(c.in), c.kind, 0, io.Discard); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := BuildLayer(bytes.NewReader(zblob), Zstd, 0, nil); err == nil {
		t.Error("a zstd layer built without a window writer")
	}
}

// TestDecodeTableHostile: claims beyond the bytes, unclean names, ranges out of order or
// past the stream, unknown flags and versions, trailing bytes all fail with ErrCorrupt.
func TestDecodeTableHostile(t *testing.T) {
	b := build(t, testTar(t), Tar, 0)
	good := b.Table
	edit := func(f func(*Table)) []byte {
		c := &Table{TarSize: good.TarSize, Entries: append([]format.Entry(nil), good.Entries...)}
		f(c)
		return c.Encode()
	}
	find := func(tab *Table, n string) *format.Entry {
		for i := range tab.Entries {
			if tab.Entries[i].Name == n {
				return &tab.Entries[i]
			}
		}
		t.Fatalf("no %s", n)
		return nil
	}
	enc := good.Encode()
	header := len(tableMagic) + 2
	for name, data := range map[string][]byte{
		"empty":          nil,
		"magic":          append([]byte("LZPXTABL"), enc[8:]...),
		"version":        append(append([]byte(tableMagic), 0, 9), enc[header:]...),
		"trailing":       append(bytes.Clone(enc), 0),
		"truncated":      enc[:len(enc)-1],
		"many entries":   append(append([]byte(tableMagic), 0, 1, 0), 0xff, 0xff, 0xff, 0xff, 0x0f),
		"unclean name":   edit(func(c *Table) { c.Entries[1].Name = "bin/../x" }),
		"absolute name":  edit(func(c *Table) { c.Entries[1].Name = "/bin" }),
		"past the end":   edit(func(c *Table) { find(c, "usr/lib/big").TarOffset = c.TarSize - 10 }),
		"overlap":        edit(func(c *Table) { find(c, "usr/lib/text").TarOffset -= 1000 }),
		"size mismatch":  edit(func(c *Table) { find(c, "bin/ping").TarLen++ }),
		"mode":           edit(func(c *Table) { c.Entries[0].Mode = 0o17777 }),
		"sparse non-reg": edit(func(c *Table) { c.Entries[0].Sparse = true }),
		"long name":      edit(func(c *Table) { c.Entries[0].Name = strings.Repeat("a", format.MaxNameLen+1) }),
		"xattrs":         edit(func(c *Table) { find(c, "bin/ping").Xattrs = make([]format.Xattr, format.MaxXattrs+1) }),
		"nsec":           edit(func(c *Table) { c.Entries[0].ModNsec = 1e9 }),
	} {
		if _, err := DecodeTable(data); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", name, err)
		}
	}
	if _, err := DecodeTable(enc); err != nil {
		t.Fatal(err)
	}
	// A flag whose field is its zero value would decode to an entry that encodes
	// otherwise: refused, so that decoding is one to one.
	one := (&Table{Entries: []format.Entry{{Name: "a", Type: '5'}}}).Encode()
	if _, err := DecodeTable(one); err != nil {
		t.Fatal(err)
	}
	flags := len(tableMagic) + 2 + 2 // after the tar size and the count
	for name, c := range map[string]struct {
		flag byte
		zero []byte
	}{
		"nsec":      {flagNsec, []byte{0}},
		"link name": {flagLinkname, []byte{0}},
		"device":    {flagDevice, []byte{0, 0}},
		"xattrs":    {flagXattrs, []byte{0}},
	} {
		b := bytes.Clone(one)
		b[flags] = c.flag
		b = append(b, c.zero...)
		if _, err := DecodeTable(b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("flagged zero %s: %v, want ErrCorrupt", name, err)
		}
	}
}

// TestLayerInflateBound: a table that deflates beyond MaxTableRatio is refused by Encode
// and, crafted, by DecodeLayer before it is inflated whole.
func TestLayerInflateBound(t *testing.T) {
	tab := &Table{Entries: make([]format.Entry, 200000)}
	for i := range tab.Entries {
		tab.Entries[i] = format.Entry{Name: "a", Type: '5'}
	}
	if _, err := (&Layer{Table: tab}).Encode(); err == nil || !strings.Contains(err.Error(), "over the limit") {
		t.Fatalf("Encode of a table deflating %d-fold: %v", MaxTableRatio, err)
	}
	raw := tab.Encode()
	var z bytes.Buffer
	zw, _ := flate.NewWriter(&z, flate.BestCompression)
	zw.Write(raw)
	zw.Close()
	b := append([]byte(layerMagic), 0, layerVersion)
	b = binary.AppendUvarint(b, uint64(z.Len()))
	b = append(b, z.Bytes()...)
	if _, err := DecodeLayer(b, Tar); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "does not inflate within") {
		t.Fatalf("DecodeLayer: %v", err)
	}
}
