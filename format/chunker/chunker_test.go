package chunker

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// smallParams give many chunks on little data, for tests that need many boundaries.
var smallParams = Params{Min: 2 << 10, Avg: 8 << 10, Max: 64 << 10}

// randomBytes returns n bytes from a PCG source seeded with (seed, seed^0x9e3779b97f4a7c15):
// each Uint64 output is written little-endian, 8 bytes at a time (n is a multiple of 8).
// math/rand/v2's PCG is a specified algorithm, so these bytes are stable across Go releases.
func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}

// splitAll cuts data completely with Cut, as a caller holding the whole stream would.
func splitAll(t testing.TB, p Params, data []byte) []int {
	t.Helper()
	var lens []int
	for len(data) > 0 {
		n, ok := Cut(p, data, true)
		if !ok || n <= 0 || n > len(data) {
			t.Fatalf("Cut(%d bytes, final) = %d, %v", len(data), n, ok)
		}
		lens = append(lens, n)
		data = data[n:]
	}
	return lens
}

// refCut is a direct, slow transcription of the boundary rule documented on Cut: it computes
// H(n) from its definition for every candidate n. It checks that the optimised loop implements
// the documented rule, not merely itself.
func refCut(p Params, data []byte) int {
	b := 0
	for p.Avg>>b > 1 {
		b++
	}
	maskS := ^uint64(0) << (64 - (b + 2))
	maskL := ^uint64(0) << (64 - (b - 2))
	for n := p.Min; n <= len(data); n++ {
		if n == p.Max {
			return n
		}
		var h uint64
		for j := 0; j < 64; j++ {
			h += gear[data[n-1-j]] << j
		}
		mask := maskL
		if n < p.Avg {
			mask = maskS
		}
		if h&mask == 0 {
			return n
		}
	}
	return len(data)
}

func TestGearTable(t *testing.T) {
	if gear[0] != 0xd33f560db275a9ac || gear[255] != 0x274b8691ec0fd743 {
		t.Errorf("gear[0] = %#016x, gear[255] = %#016x", gear[0], gear[255])
	}
	var buf []byte
	for _, v := range gear {
		buf = binary.LittleEndian.AppendUint64(buf, v)
	}
	sum := sha256.Sum256(buf)
	if got, want := hex.EncodeToString(sum[:]), "63b38bb81f451835bba00cda6fce2f7981b6e8b84dd61c26643da80c5d95b251"; got != want {
		t.Errorf("gear table sha256 = %s, want %s", got, want)
	}
}

func TestMasks(t *testing.T) {
	s, l := masks(DefaultParams)
	if s != 0xffffe00000000000 || l != 0xfffe000000000000 {
		t.Errorf("masks(DefaultParams) = %#016x, %#016x", s, l)
	}
}

// Golden vectors. The inputs are randomBytes(seed, size); the lengths were produced once by
// this implementation (and cross-checked against an independent script following the
// documented rule) and are pinned here. If this test fails, chunk boundaries have changed:
// that invalidates every chunk digest lazypull has ever published, so fix the code, not the
// vector.
var golden = []struct {
	name   string
	p      Params
	seed   uint64
	size   int
	sha256 string // of the input, guards the generator
	lens   []int
}{
	{
		name:   "default-8MiB",
		p:      DefaultParams,
		seed:   1,
		size:   8 << 20,
		sha256: "a66c488569b8caf8b8d4fbe8508c413f5a584aaa72ccdcaa1b1b7aca89572c4d",
		lens: []int{
			82164, 178463, 170030, 186176, 143581, 138739, 177213, 190349, 95273, 161915,
			132578, 97772, 197478, 144230, 168302, 177910, 157377, 177853, 183627, 53373,
			143197, 136621, 113480, 177112, 155912, 157879, 73136, 158942, 79533, 49634,
			133316, 143606, 144745, 159358, 146150, 57314, 131074, 146474, 68476, 135929,
			164152, 100667, 132304, 158811, 160643, 151586, 175866, 159804, 153830, 133311,
			168784, 39188, 147458, 145156, 131737, 153528, 164075, 152527, 145091, 123799,
		},
	},
	{
		name:   "small-1MiB",
		p:      smallParams,
		seed:   2,
		size:   1 << 20,
		sha256: "80352b1331b2fd90229040f071e92632922f13d7cbbb1a16b335d17a0a20d838",
		lens: []int{
			10432, 8984, 10951, 9009, 8208, 16239, 8790, 7078, 12513, 8561,
			8580, 8610, 11511, 9669, 11708, 8566, 12691, 9333, 13035, 9640,
			8569, 8667, 8327, 9335, 6215, 2456, 7925, 10545, 8431, 8718,
			8797, 8431, 14533, 9333, 19186, 8157, 8268, 3638, 10579, 10813,
			8259, 8702, 12627, 10937, 2134, 10775, 11795, 4561, 13565, 9422,
			9810, 8514, 8432, 13634, 9311, 10659, 10368, 12572, 10473, 13293,
			8422, 11205, 8867, 6987, 9405, 8805, 8523, 10986, 10518, 17641,
			4401, 11637, 2479, 9667, 9637, 10633, 7757, 9838, 11059, 10539,
			10314, 11315, 8993, 10574, 8455, 15264, 8261, 12080, 8984, 8622,
			6523, 9341, 9858, 4002, 8832, 16470, 11914, 2528, 8203, 9139,
			13616, 8426, 13156, 10170, 8457, 5350, 3915, 5662, 9299, 6973,
		},
	},
}

func TestGolden(t *testing.T) {
	for _, g := range golden {
		t.Run(g.name, func(t *testing.T) {
			data := randomBytes(g.seed, g.size)
			sum := sha256.Sum256(data)
			if got := hex.EncodeToString(sum[:]); got != g.sha256 {
				t.Errorf("input sha256 = %s, want %s", got, g.sha256)
			}
			lens := splitAll(t, g.p, data)
			if !slices.Equal(lens, g.lens) {
				t.Errorf("chunk lengths changed:\n got %s\nwant %s", fmtLens(lens), fmtLens(g.lens))
			}
			var got []int
			c := New(bytes.NewReader(data), g.p)
			for {
				chunk, err := c.Next(nil)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, len(chunk))
			}
			if !slices.Equal(got, g.lens) {
				t.Errorf("Chunker lengths differ from golden:\n got %s", fmtLens(got))
			}
		})
	}
}

func fmtLens(lens []int) string {
	var b strings.Builder
	for i, n := range lens {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprint(&b, n)
	}
	return "{" + b.String() + "}"
}

func TestReference(t *testing.T) {
	p := Params{Min: 256, Avg: 1024, Max: 4096}
	data := randomBytes(3, 1<<20)
	// A run of zeros and a repeating pattern exercise the Max cut and the no-hit paths.
	clear(data[100000:120000])
	for i := 300000; i < 340000; i++ {
		data[i] = byte(i % 7)
	}
	for off := 0; off < len(data); {
		want := refCut(p, data[off:])
		got := Boundary(p, data[off:])
		if got != want {
			t.Fatalf("at offset %d: Boundary = %d, reference = %d", off, got, want)
		}
		off += got
	}
}

func TestProperties(t *testing.T) {
	for _, p := range []Params{DefaultParams, smallParams, {Min: 64, Avg: 128, Max: 256}} {
		t.Run(fmt.Sprint(p), func(t *testing.T) {
			data := randomBytes(4, 16<<20)
			lens := splitAll(t, p, data)
			total := 0
			for i, n := range lens {
				if n > p.Max || (n < p.Min && i != len(lens)-1) {
					t.Errorf("chunk %d of %d has length %d outside [%d, %d]", i, len(lens), n, p.Min, p.Max)
				}
				total += n
			}
			if total != len(data) {
				t.Errorf("chunks sum to %d, want %d", total, len(data))
			}
			mean := float64(total) / float64(len(lens))
			if mean < 0.5*float64(p.Avg) || mean > 2*float64(p.Avg) {
				t.Errorf("mean chunk size %.0f outside [%d, %d]", mean, p.Avg/2, 2*p.Avg)
			}
			t.Logf("%d chunks, mean %.0f (Avg %d)", len(lens), mean, p.Avg)

			// Streaming with erratic reads gives the same chunks, and their concatenation is
			// the input.
			c := New(&erraticReader{data: data, r: rand.New(rand.NewPCG(5, 6))}, p)
			var out []byte
			var buf []byte
			for i := 0; ; i++ {
				chunk, err := c.Next(buf)
				if err == io.EOF {
					if i != len(lens) {
						t.Errorf("Chunker gave %d chunks, Cut %d", i, len(lens))
					}
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if i >= len(lens) || len(chunk) != lens[i] {
					t.Fatalf("Chunker chunk %d has length %d, Cut gave %v", i, len(chunk), lens[i:min(i+1, len(lens))])
				}
				out = append(out, chunk...)
				buf = chunk
			}
			if !bytes.Equal(out, data) {
				t.Error("concatenated chunks differ from the input")
			}
		})
	}
}

// erraticReader returns data in reads of random size between 0 and 300 KiB, sometimes with
// io.EOF on the last bytes.
type erraticReader struct {
	data []byte
	r    *rand.Rand
}

func (e *erraticReader) Read(p []byte) (int, error) {
	if len(e.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), e.r.IntN(300<<10))], e.data)
	e.data = e.data[n:]
	if len(e.data) == 0 && e.r.IntN(2) == 0 {
		return n, io.EOF
	}
	return n, nil
}

func TestCutPartial(t *testing.T) {
	p := smallParams
	data := randomBytes(7, 4<<20)
	for off := 0; off < len(data); {
		rest := data[off:]
		n := Boundary(p, rest)
		// Every prefix that contains the boundary gives the same answer with final = false;
		// every shorter prefix asks for more data (or hits Max).
		for _, k := range []int{0, 1, p.Min - 1, p.Min, n - 1, n, n + 1, p.Max - 1, p.Max, len(rest)} {
			if k < 0 || k > len(rest) {
				continue
			}
			got, ok := Cut(p, rest[:k], false)
			switch {
			case k >= n && off+n < len(data) && (!ok || got != n):
				t.Fatalf("offset %d: Cut(prefix %d, false) = %d, %v; want %d, true", off, k, got, ok, n)
			case k < n && (ok || got != 0):
				t.Fatalf("offset %d: Cut(prefix %d, false) = %d, %v; want 0, false", off, k, got, ok)
			}
		}
		off += n
	}
	if n, ok := Cut(p, nil, true); n != 0 || ok {
		t.Errorf("Cut(empty, final) = %d, %v", n, ok)
	}
	if n, ok := Cut(p, data[:100], true); n != 100 || !ok {
		t.Errorf("Cut(100 bytes, final) = %d, %v", n, ok)
	}
	if n := Boundary(p, data[:p.Min]); n != p.Min {
		t.Errorf("Boundary(Min bytes) = %d", n)
	}
	zeros := make([]byte, 3*p.Max)
	if n, ok := Cut(p, zeros, false); n != p.Max || !ok {
		t.Errorf("Cut(zeros) = %d, %v; want Max", n, ok)
	}
}

// TestEdit checks the point of content-defined chunking: a small insertion or deletion in a
// 16 MiB buffer changes only the chunks around it.
func TestEdit(t *testing.T) {
	data := randomBytes(8, 16<<20)
	for _, p := range []Params{DefaultParams, smallParams} {
		orig := chunkSet(t, p, data)
		mid := len(data) / 2
		q1, q3 := len(data)/4, 3*len(data)/4
		edits := []struct {
			name       string
			edited     []byte
			maxChanged int // chunks of the edited buffer that are not chunks of the original
		}{
			{"insert-middle", slices.Concat(data[:mid], []byte("lazypull"), data[mid:]), 2},
			{"delete-middle", slices.Concat(data[:mid], data[mid+5:]), 2},
			{"overwrite-middle", slices.Concat(data[:mid], []byte{1, 2, 3}, data[mid+3:]), 2},
			{"insert-start", slices.Concat([]byte("xyz"), data), 2},
			{"insert-3-places", slices.Concat(data[:q1], []byte{0}, data[q1:mid], []byte{0}, data[mid:q3], []byte{0}, data[q3:]), 6},
		}
		for _, e := range edits {
			name, edited := e.name, e.edited
			lens := splitAll(t, p, edited)
			shared, changed, off := 0, 0, 0
			for _, n := range lens {
				if orig[sha256.Sum256(edited[off:off+n])] {
					shared += n
				} else {
					changed++
				}
				off += n
			}
			frac := float64(shared) / float64(len(edited))
			t.Logf("%v %s: %d of %d chunks changed, %.4f of bytes shared", p, name, changed, len(lens), frac)
			if frac < 0.9 || changed > e.maxChanged {
				t.Errorf("%v %s: %d of %d chunks changed, only %.4f of bytes shared", p, name, changed, len(lens), frac)
			}
		}
	}
}

func chunkSet(t *testing.T, p Params, data []byte) map[[32]byte]bool {
	set := map[[32]byte]bool{}
	off := 0
	for _, n := range splitAll(t, p, data) {
		set[sha256.Sum256(data[off:off+n])] = true
		off += n
	}
	return set
}

func TestValidate(t *testing.T) {
	if err := DefaultParams.Validate(); err != nil {
		t.Errorf("DefaultParams: %v", err)
	}
	for _, p := range []Params{
		{Min: 64, Avg: 128, Max: 129},
		{Min: 4 << 20, Avg: 8 << 20, Max: 64 << 20},
	} {
		if err := p.Validate(); err != nil {
			t.Errorf("%v: %v", p, err)
		}
	}
	for _, p := range []Params{
		{},
		{Min: 63, Avg: 128, Max: 256},               // Min below window
		{Min: 128, Avg: 128, Max: 256},              // Min == Avg
		{Min: 256, Avg: 128, Max: 512},              // Min > Avg
		{Min: 64, Avg: 96, Max: 256},                // Avg not a power of two
		{Min: 64, Avg: 128, Max: 128},               // Max == Avg
		{Min: 64, Avg: 128, Max: 100},               // Max < Avg
		{Min: 1 << 20, Avg: 2 << 20, Max: 65 << 20}, // Max too large
		{Min: -1, Avg: 128, Max: 256},
	} {
		if err := p.Validate(); err == nil {
			t.Errorf("%v: Validate accepted it", p)
		}
	}
	bad := Params{Min: 64, Avg: 96, Max: 256}
	if _, err := New(strings.NewReader("abc"), bad).Next(nil); err == nil || err == io.EOF {
		t.Errorf("Next with invalid params: %v", err)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("Cut with invalid params did not panic")
			}
		}()
		Cut(bad, []byte("abc"), true)
	}()
}

func TestChunkerEdges(t *testing.T) {
	p := smallParams
	// Empty stream: no chunks.
	c := New(strings.NewReader(""), p)
	if b, err := c.Next(nil); err != io.EOF || b != nil {
		t.Errorf("empty stream: %v, %v", b, err)
	}
	if _, err := c.Next(nil); err != io.EOF {
		t.Errorf("second Next after EOF: %v", err)
	}
	// Short stream: one chunk.
	c.Reset(strings.NewReader("hello"))
	if b, err := c.Next(nil); err != nil || string(b) != "hello" {
		t.Errorf("short stream: %q, %v", b, err)
	}
	if _, err := c.Next(nil); err != io.EOF {
		t.Errorf("after short stream: %v", err)
	}
	// Buffer reuse: a big enough buffer is used in place.
	data := randomBytes(9, 1<<20)
	c.Reset(bytes.NewReader(data))
	buf := make([]byte, p.Max)
	b, err := c.Next(buf)
	if err != nil || &b[0] != &buf[0] {
		t.Errorf("Next did not reuse the buffer (err %v)", err)
	}
	if !bytes.Equal(b, data[:len(b)]) {
		t.Error("first chunk differs from the input")
	}
	// Read errors are returned and sticky.
	boom := errors.New("boom")
	c.Reset(io.MultiReader(bytes.NewReader(data[:200<<10]), &errReader{boom}))
	var err2 error
	for range 100 {
		if _, err2 = c.Next(nil); err2 != nil {
			break
		}
	}
	if err2 != boom {
		t.Errorf("read error: got %v", err2)
	}
	if _, err := c.Next(nil); err != boom {
		t.Errorf("read error not sticky: %v", err)
	}
}

type errReader struct{ err error }

func (e *errReader) Read([]byte) (int, error) { return 0, e.err }

func BenchmarkChunker(b *testing.B) {
	for _, p := range []Params{DefaultParams, smallParams} {
		b.Run(fmt.Sprintf("avg=%dK", p.Avg>>10), func(b *testing.B) {
			data := randomBytes(10, 64<<20)
			r := bytes.NewReader(data)
			c := New(r, p)
			buf := make([]byte, p.Max)
			b.SetBytes(int64(len(data)))
			b.ResetTimer()
			for b.Loop() {
				r.Reset(data)
				c.Reset(r)
				for {
					chunk, err := c.Next(buf)
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
					buf = chunk
				}
			}
		})
	}
}

// BenchmarkCut measures boundary finding alone, on an in-memory buffer.
func BenchmarkCut(b *testing.B) {
	data := randomBytes(10, 64<<20)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		for rest := data; len(rest) > 0; {
			n, _ := Cut(DefaultParams, rest, true)
			rest = rest[n:]
		}
	}
}
