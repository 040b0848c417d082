package daemon

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/format"
	"lazypull/internal/testutil"
	"lazypull/internal/testutil/layertest"
)

// rawManifest is a manifest pushed as its bytes.
type rawManifest struct {
	b  []byte
	mt types.MediaType
}

func (m rawManifest) RawManifest() ([]byte, error)        { return m.b, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return m.mt, nil }

// shortRegistry is an in-process registry that answers a Range request reaching past a
// blob's real end as a registry serving a blob of the manifest's size would start to, with
// a 206 for the range asked for, and then sends the bytes it has and closes the connection.
// It counts the Range requests for the blob named blob.
type shortRegistry struct {
	h      http.Handler
	blobs  map[string][]byte // by digest, what it really holds
	claim  int64             // the size the manifest gives them
	ranges atomic.Int64
	blob   string
}

func (s *shortRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	i := strings.LastIndex(r.URL.Path, "/blobs/")
	rg := r.Header.Get("Range")
	if r.Method != http.MethodGet || i < 0 || rg == "" {
		s.h.ServeHTTP(w, r)
		return
	}
	d := r.URL.Path[i+len("/blobs/"):]
	if d == s.blob {
		s.ranges.Add(1)
	}
	b, ok := s.blobs[d]
	var start, end int64
	if _, err := fmt.Sscanf(rg, "bytes=%d-%d", &start, &end); !ok || err != nil || end < int64(len(b)) {
		s.h.ServeHTTP(w, r)
		return
	}
	w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, s.claim))
	w.Header().Set("Content-Length", strconv.FormatInt(end-start+1, 10))
	w.WriteHeader(http.StatusPartialContent)
	if start < int64(len(b)) {
		w.Write(b[start:])
	}
}

// pushClaimingImage pushes a one-layer image of the lazypull layer blob (annotations ann)
// whose manifest says the layer's index is claim bytes long and the layer as long as that
// makes it; the registry holds the real blob and serves it as shortRegistry does. With
// claim 0 the manifest is the true one.
func pushClaimingImage(t *testing.T, blob []byte, ann map[string]string, claim int64) (ref string, d v1.Hash, desc v1.Descriptor, reg *shortRegistry) {
	t.Helper()
	reg = &shortRegistry{blobs: map[string][]byte{}}
	img := imageOfLayer(t, blob, ann)
	ref = testutil.NewRegistry(t, testutil.WithHandler(func(h http.Handler) http.Handler { reg.h = h; return reg })).Push(t, "claims:v1", img)
	r, _ := name.ParseReference(ref)
	m, _ := img.Manifest()
	desc = m.Layers[0]
	reg.blob = desc.Digest.String()
	if claim > 0 {
		off, _ := strconv.ParseInt(ann[format.AnnotationIndexOffset], 10, 64)
		desc.Annotations = map[string]string{}
		for k, v := range ann {
			desc.Annotations[k] = v
		}
		desc.Annotations[format.AnnotationIndexSize] = strconv.FormatInt(claim, 10)
		desc.Size = off + claim + format.FooterSize
		m.Layers[0] = desc
		reg.blobs[desc.Digest.String()] = blob
		reg.claim = desc.Size
	}
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Put(r, rawManifest{raw, types.OCIManifestSchema1}); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(raw)
	return ref, v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", sum)}, desc, reg
}

// TestMountClaimedIndexSize: the index's size in a layer's annotations is the manifest's
// word, and the daemon allocated it before a byte of the index arrived (up to 256 MiB a
// layer, twice: the index's buffer and the request's), so a manifest claiming 256 MiB
// indexes the registry does not hold cost 512 MiB a layer. Now an index over
// format.MaxIndexSize (64 MiB) is refused at once, one under it is read as a stream that
// holds what arrives, and a body shorter than claimed fails with what came: either way
// Prepare takes the ordinary path with one warning naming the layer, having allocated a
// few MiB. A true manifest still mounts remotely, with one Range request for its index.
func TestMountClaimedIndexSize(t *testing.T) {
	var entries []testutil.Entry
	for i := range 200 {
		entries = append(entries, testutil.File(fmt.Sprintf("f%d", i), []byte(strings.Repeat(strconv.Itoa(i), 100))))
	}
	blob, ann, res := layertest.FromTar(t, testutil.Tar(t, entries...), nil)
	served := int64(len(blob)) - res.IndexOffset // what a range from the index on finds
	for _, c := range []struct {
		name  string
		claim int64
		want  string // in the warning; "" for a remote mount
	}{
		{"true", 0, ""},
		{"over-the-limit", 256 << 20, fmt.Sprintf("%s=%d: an index over the limit of %d bytes", format.AnnotationIndexSize, 256<<20, format.MaxIndexSize)},
		{"short-body", 60 << 20, fmt.Sprintf("%d of its %d bytes arrived", served, 60<<20)},
	} {
		t.Run(c.name, func(t *testing.T) {
			ref, d, desc, reg := pushClaimingImage(t, blob, ann, c.claim)
			p := prepareMeasured(t, ref, d, desc)
			ms, err, n, logs := p.mounts, p.err, p.alloc, p.logs
			t.Logf("claim %d: Prepare allocated %d bytes, sent %d Range requests for the layer; logged: %s", c.claim, n, reg.ranges.Load(), logs.String())
			if c.want == "" {
				if !errors.Is(err, errdefs.ErrAlreadyExists) || logs.String() != "" {
					t.Fatalf("Prepare of a true layer: %v; want it mounted remotely (ErrAlreadyExists), nothing logged; logged:\n%s", err, logs.String())
				}
				if got := reg.ranges.Load(); got != 1 {
					t.Fatalf("%d Range requests for the layer, want 1: its index", got)
				}
				return
			}
			if err != nil || ms == nil {
				t.Fatalf("Prepare: %v; want the ordinary path's mounts", err)
			}
			lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], "level=WARN") || !strings.Contains(lines[0], desc.Digest.String()) || !strings.Contains(lines[0], c.want) {
				t.Fatalf("want one warning naming the layer and %q; logged:\n%s", c.want, logs.String())
			}
			if n > 16<<20 {
				t.Fatalf("Prepare of a layer whose manifest claims a %d-byte index (%d bytes served) allocated %d bytes", c.claim, len(blob), n)
			}
		})
	}
}
