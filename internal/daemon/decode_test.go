package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"log/slog"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"

	"lazypull/format"
	"lazypull/internal/snapshot"
	"lazypull/internal/store"
	"lazypull/internal/testutil"
	"lazypull/internal/testutil/layertest"
)

// prepared is what prepareMeasured saw: Prepare's mounts and error, the bytes it
// allocated, and the warnings logged meanwhile.
type prepared struct {
	mounts any
	err    error
	alloc  uint64
	logs   *testutil.LogBuffer
}

// newSnapshotter returns a snapshotter over a SnapshotFS on a fresh store, both logging to
// log; all is closed when the test ends.
func newSnapshotter(t *testing.T, log *slog.Logger) (*SnapshotFS, *snapshot.Snapshotter) {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	fsys := NewSnapshotFS(st, nil, log, testClient(t))
	t.Cleanup(func() { fsys.Close() })
	s, err := snapshot.New(t.TempDir(), fsys, snapshot.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return fsys, s
}

// prepareMeasured prepares the layer desc of the image ref (manifest d) through a real
// snapshotter over a fresh store, labelled as a pull labels it, and measures what the
// Prepare allocates.
func prepareMeasured(t *testing.T, ref string, d v1.Hash, desc v1.Descriptor) prepared {
	t.Helper()
	logger, logs := testutil.NewLogAt(t, slog.LevelWarn)
	p := prepared{logs: logs}
	_, s := newSnapshotter(t, logger)
	labels := pulledLabels(ref, d.String(), desc.Digest.String(), desc.Annotations)
	labels[snapshots.LabelSnapshotRef] = "layer-" + desc.Digest.Hex
	ctx := namespaces.WithNamespace(context.Background(), "test")
	p.alloc = testutil.Allocated(func() { p.mounts, p.err = s.Prepare(ctx, "extract-1", "", snapshots.WithLabels(labels)) })
	return p
}

// pushLayerImage pushes a one-layer image of blob with the given annotations to a fresh
// in-process registry and returns its reference, manifest digest and layer descriptor.
func pushLayerImage(t *testing.T, blob []byte, ann map[string]string) (string, v1.Hash, v1.Descriptor) {
	t.Helper()
	img := imageOfLayer(t, blob, ann)
	ref := testutil.NewRegistry(t).Push(t, "crafted:v1", img)
	d, _ := img.Digest()
	m, _ := img.Manifest()
	return ref, d, m.Layers[0]
}

// craftedLayer is a lazypull layer blob whose index payload is replaced by the index
// declaring body (its header says body's length), with the annotations that locate it.
func craftedLayer(t *testing.T, body []byte) ([]byte, map[string]string) {
	t.Helper()
	b, _, res := layertest.FromTar(t, testutil.Tar(t, testutil.File("f", []byte("hi"))), nil)
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
	defer enc.Close()
	p := make([]byte, 24)
	copy(p, "LZPINDEX")
	binary.LittleEndian.PutUint16(p[8:], format.Version)
	binary.LittleEndian.PutUint64(p[16:], uint64(len(body)))
	p = enc.EncodeAll(body, p)
	if len(p) < 880 { // pad with a skippable frame to 880 bytes, as the index first reported
		p = binary.LittleEndian.AppendUint32(p, 0x184D2A50)
		p = binary.LittleEndian.AppendUint32(p, uint32(880-len(p)-4))
		p = append(p, make([]byte, 880-len(p))...)
	}
	out := append(bytes.Clone(b[:res.IndexOffset]), p...)
	out = append(out, b[len(b)-format.FooterSize:]...)
	sum := sha256.Sum256(p)
	return out, map[string]string{
		format.AnnotationVersion:     strconv.Itoa(format.Version),
		format.AnnotationIndexOffset: strconv.FormatInt(res.IndexOffset, 10),
		format.AnnotationIndexSize:   strconv.Itoa(len(p)),
		format.AnnotationIndexDigest: "sha256:" + hex.EncodeToString(sum[:]),
	}
}

// TestMountCraftedIndex: Prepare of a layer whose index is crafted to decode into far more
// memory than its size (names sharing 64 KiB prefixes; counts that fit the body alone but
// not together; more entries than the budget) fails the remote mount with one warning that
// names the layer and the limit, the layer takes the ordinary path, and the daemon
// allocates a few MiB doing so (a real snapshotter over a real store and registry).
func TestMountCraftedIndex(t *testing.T) {
	names := func() []byte { // 8000 entries whose 64 KiB names take 12 bytes each
		b := binary.AppendUvarint(nil, 0)
		b = binary.AppendUvarint(b, 8000)
		b = binary.AppendUvarint(b, 0)
		for i := range 8000 {
			if i == 0 {
				b = binary.AppendUvarint(b, 0)
				b = binary.AppendUvarint(b, format.MaxNameLen-1)
				b = append(b, strings.Repeat("a", format.MaxNameLen-1)...)
			} else {
				b = binary.AppendUvarint(b, format.MaxNameLen-2)
				b = binary.AppendUvarint(b, 1)
				b = append(b, 'b')
			}
			b = append(b, '0', 0, 0, 0, 0, 0, 0)
		}
		return b
	}
	counts := func(frames, entries uint64) []byte { // 8 MiB: counts, 272 KiB random, zeros
		b := binary.AppendUvarint(nil, frames)
		b = binary.AppendUvarint(b, entries)
		b = binary.AppendUvarint(b, 0)
		b = append(b, testutil.RandBytes(1, 272<<10)...)
		return append(b, make([]byte, 8<<20-len(b))...)
	}
	for _, c := range []struct {
		name string
		body []byte
		want string
	}{
		{"shared-prefix-names", names(), "times the payload"},
		{"counts-each-alone", counts(2<<20, 1<<19), "take at least"},
		{"entries-over-budget", counts(0, 800_000), "decode budget"},
	} {
		t.Run(c.name, func(t *testing.T) {
			blob, ann := craftedLayer(t, c.body)
			ref, d, desc := pushLayerImage(t, blob, ann)
			p := prepareMeasured(t, ref, d, desc)
			ms, err, n, logs := p.mounts, p.err, p.alloc, p.logs
			if err != nil || ms == nil {
				t.Fatalf("Prepare: %v; want the ordinary path's mounts", err)
			}
			lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], "level=WARN") || !strings.Contains(lines[0], desc.Digest.String()) || !strings.Contains(lines[0], c.want) {
				t.Fatalf("want one warning naming the layer and %q; logged:\n%s", c.want, logs.String())
			}
			t.Logf("%d-byte layer: Prepare allocated %d bytes; logged: %s", len(blob), n, lines[0])
			if n > 64<<20 {
				t.Fatalf("Prepare of a layer with a %s index allocated %d bytes", c.name, n)
			}
		})
	}
}

// TestReadSparseBounded: a read of 4 KiB of a 900 MiB sparse file (a 20 KB layer) through
// the daemon's layer allocated the whole file; it allocates a frame and a buffer now.
func TestReadSparseBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIP: hashes 900 MiB of holes")
	}
	data := bytes.Repeat([]byte("lazypull"), 1000)
	tb := testutil.SparseTar(t, "posix", 900<<20, map[int64][]byte{512 << 20: data}, nil)
	blob, ann, _ := layertest.FromTar(t, tb, nil)
	ref, _, _ := pushLayerImage(t, blob, ann)
	im, _ := openFresh(t, ref)
	l := im.Layers[0]
	e, ok := l.Index.Lookup("sparse")
	if !ok || !e.Sparse {
		t.Fatalf("no sparse entry: %+v", e)
	}
	p := make([]byte, 4096)
	var n int
	var err error
	a := testutil.Allocated(func() { n, err = l.ReadAt(context.Background(), e, p, 512<<20) })
	if err != nil || n != len(p) || !bytes.Equal(p, data[:4096]) {
		t.Fatalf("read 4 KiB at 512 MiB: %d bytes, %v", n, err)
	}
	t.Logf("layer of %d bytes, file of %d: a 4 KiB read allocated %d bytes", len(blob), e.Size, a)
	if a > 16<<20 {
		t.Fatalf("a 4 KiB read of a sparse file allocated %d bytes", a)
	}
}
