package convert

import (
	"bytes"
	"context"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// damageBlob wraps a registry so that GETs of the blob with digest h come back changed by f.
func damageBlob(h v1.Hash, f func([]byte) []byte) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+h.String()) {
				next.ServeHTTP(w, r)
				return
			}
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			body := f(rec.Body.Bytes())
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.WriteHeader(rec.Code)
			w.Write(body)
		})
	}
}

// refuse wraps a registry so that requests matching refused get status code.
func refuse(code int, refused func(*http.Request) bool) func(http.Handler) http.Handler {
	return refuseWith(code, `{"errors":[{"code":"DENIED","message":"not for you"}]}`, refused)
}

// refuseWith is refuse with the error document body.
func refuseWith(code int, body string, refused func(*http.Request) bool) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !refused(r) {
				next.ServeHTTP(w, r)
				return
			}
			if code == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			w.Write([]byte(body))
		})
	}
}

func isWrite(r *http.Request) bool { return r.Method != http.MethodGet && r.Method != http.MethodHead }

// TestConvertErrors feeds Convert broken sources and unwritable destinations. Each must fail
// with one line that names the image, the layer where there is one, and the cause, and leave
// no tag under the destination.
func TestConvertErrors(t *testing.T) {
	rng := rand.New(rand.NewSource(8))
	good := func() *fixture {
		return newFixture(t, rng, true, layerSpec{mt: types.OCILayer}, layerSpec{mt: types.OCILayer})
	}
	junk := make([]byte, 3000)
	rng.Read(junk)
	clean := newRegistry(t, nil)
	repos := 0

	type setup struct {
		src, dst string
		opts     func(*Options)
		want     []string // substrings of the error
		not      []string // what the error must not say
	}
	// Sources with one bad layer, the second: its digest must be in the error.
	badLayer := func(spec layerSpec) *fixture {
		return newFixture(t, rng, true, layerSpec{mt: types.OCILayer}, spec)
	}
	inRegistry := func(t *testing.T, f *fixture, wrap func(http.Handler) http.Handler) string {
		host := clean
		if wrap != nil {
			host = newRegistry(t, wrap)
		}
		repos++
		src := host + "/bad/" + strconv.Itoa(repos) + ":v1"
		pushFixtures(t, src, f.manifest, f.manifestMT, f)
		return src
	}
	inLayout := func(t *testing.T, f *fixture, damage func(path string)) string {
		dir := t.TempDir()
		writeFixtures(t, dir, "v1", f.manifest, f.manifestMT, f)
		if damage != nil {
			damage(blobPath(dir, f.layers[1].Digest))
		}
		return "oci:" + dir + ":v1"
	}
	layoutDst := func(t *testing.T) string { return "oci:" + filepath.Join(t.TempDir(), "dst") + ":out" }
	registryDst := func(t *testing.T) string {
		repos++
		return clean + "/dst/" + strconv.Itoa(repos) + ":out"
	}

	cases := []struct {
		name  string
		setup func(t *testing.T) setup
	}{
		{"registry/unknown media type", func(t *testing.T) setup {
			f := badLayer(layerSpec{mt: "application/x-tarball-of-sorts"})
			return setup{src: inRegistry(t, f, nil), dst: registryDst(t), want: []string{f.layers[1].Digest.String(), "application/x-tarball-of-sorts", "unsupported media type"}}
		}},
		{"registry/foreign layer", func(t *testing.T) setup {
			f := badLayer(layerSpec{mt: types.DockerForeignLayer})
			return setup{src: inRegistry(t, f, nil), dst: registryDst(t), want: []string{f.layers[1].Digest.String(), string(types.DockerForeignLayer), "non-distributable"}}
		}},
		{"registry/corrupt gzip", func(t *testing.T) setup {
			f := badLayer(layerSpec{mt: types.OCILayer, blob: junk})
			return setup{src: inRegistry(t, f, nil), dst: registryDst(t), want: []string{f.layers[1].Digest.String(), "corrupt gzip"}}
		}},
		{"registry/corrupt zstd", func(t *testing.T) setup {
			f := badLayer(layerSpec{mt: types.OCILayerZStd, blob: junk})
			return setup{src: inRegistry(t, f, nil), dst: layoutDst(t), want: []string{f.layers[1].Digest.String(), "corrupt zstd"}}
		}},
		{"registry/gzip of something not a tar", func(t *testing.T) setup {
			f := badLayer(layerSpec{mt: types.OCILayer, blob: compress(t, junk, types.OCILayer)})
			return setup{src: inRegistry(t, f, nil), dst: layoutDst(t), want: []string{f.layers[1].Digest.String(), "tar"}}
		}},
		{"registry/blob shorter than its descriptor", func(t *testing.T) setup {
			f := badLayer(layerSpec{mt: types.OCILayer, descSize: 1 << 20})
			return setup{src: inRegistry(t, f, nil), dst: registryDst(t), want: []string{f.layers[1].Digest.String(), "truncated blob"}}
		}},
		{"registry/truncated response", func(t *testing.T) setup {
			f := badLayer(layerSpec{mt: types.OCILayer})
			src := inRegistry(t, f, damageBlob(f.layers[1].Digest, func(b []byte) []byte { return b[:len(b)/2] }))
			return setup{src: src, dst: registryDst(t), want: []string{f.layers[1].Digest.String(), "truncated blob"}}
		}},
		{"registry/digest mismatch", func(t *testing.T) setup {
			f := badLayer(layerSpec{mt: types.OCILayer})
			src := inRegistry(t, f, damageBlob(f.layers[1].Digest, func(b []byte) []byte {
				b = bytes.Clone(b)
				b[len(b)/2] ^= 1
				return b
			}))
			return setup{src: src, dst: registryDst(t), want: []string{f.layers[1].Digest.String(), "digest mismatch"}}
		}},
		{"registry/config diff ID mismatch", func(t *testing.T) setup {
			f := good()
			f.setConfig(t, []v1.Hash{sha(f.tars[0]), sha([]byte("something else"))})
			f.build(t, true)
			return setup{src: inRegistry(t, f, nil), dst: registryDst(t), want: []string{f.layers[1].Digest.String(), "diff ID", sha([]byte("something else")).String()}}
		}},
		{"registry/tag missing", func(t *testing.T) setup {
			src := strings.TrimSuffix(inRegistry(t, good(), nil), ":v1") + ":v2"
			return setup{src: src, dst: registryDst(t), want: []string{src, "not found (404)", "MANIFEST_UNKNOWN"}}
		}},
		{"registry/repository missing", func(t *testing.T) setup {
			src := clean + "/no/such/repo:v1"
			return setup{src: src, dst: registryDst(t), want: []string{src, "not found (404)", "NAME_UNKNOWN"}}
		}},
		{"registry/unreachable", func(t *testing.T) setup {
			s := httptest.NewServer(http.NotFoundHandler())
			host := strings.TrimPrefix(s.URL, "http://")
			s.Close()
			src := host + "/gone/away:v1"
			return setup{src: src, dst: layoutDst(t), want: []string{src, "unreachable", "connection refused"}}
		}},
		{"registry/source refuses (401)", func(t *testing.T) setup {
			f := good()
			host := newRegistry(t, refuse(http.StatusUnauthorized, func(r *http.Request) bool {
				return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/")
			}))
			src := host + "/private/image:v1"
			pushFixtures(t, src, f.manifest, f.manifestMT, f)
			return setup{src: src, dst: layoutDst(t), want: []string{src, "401", "authentication refused"}}
		}},
		{"registry/source wants credentials, with docker-registry's detail (401)", func(t *testing.T) setup {
			f := good()
			host := newRegistry(t, refuseWith(http.StatusUnauthorized,
				`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":[{"Type":"repository","Class":"","Name":"private/image","Action":"pull"}]}]}`,
				func(r *http.Request) bool {
					return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/")
				}))
			src := host + "/private/image:v1"
			pushFixtures(t, src, f.manifest, f.manifestMT, f)
			return setup{src: src, dst: layoutDst(t), want: []string{src, "401", "authentication refused", "registry " + host + " refused the credentials",
				"docker login " + host, "UNAUTHORIZED: authentication required"}, not: []string{"map[", "Action:pull"}}
		}},
		{"registry/source forbids a blob (403)", func(t *testing.T) setup {
			f := good()
			host := newRegistry(t, refuse(http.StatusForbidden, func(r *http.Request) bool {
				return r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+f.layers[1].Digest.String())
			}))
			src := host + "/private/image:v1"
			pushFixtures(t, src, f.manifest, f.manifestMT, f)
			return setup{src: src, dst: layoutDst(t), want: []string{src, f.layers[1].Digest.String(), "403", "access denied"}}
		}},
		{"registry/destination refuses push (403)", func(t *testing.T) setup {
			f := good()
			dstHost := newRegistry(t, refuse(http.StatusForbidden, isWrite))
			return setup{src: inRegistry(t, f, nil), dst: dstHost + "/readonly/image:out", want: []string{dstHost + "/readonly/image:out", "403", "cannot push"}}
		}},
		{"registry/destination wants credentials (401)", func(t *testing.T) setup {
			f := good()
			dstHost := newRegistry(t, refuse(http.StatusUnauthorized, isWrite))
			return setup{src: inLayout(t, f, nil), dst: dstHost + "/private/image:out", want: []string{dstHost + "/private/image:out", "401"}}
		}},
		{"registry/destination refuses manifests (403)", func(t *testing.T) setup {
			f := good()
			dstHost := newRegistry(t, refuse(http.StatusForbidden, func(r *http.Request) bool {
				return r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/manifests/")
			}))
			return setup{src: inLayout(t, f, nil), dst: dstHost + "/half/image:out", want: []string{dstHost + "/half/image:out", "403", "push manifest"}}
		}},
		{"registry/destination fails a layer upload (500)", func(t *testing.T) setup {
			f := good()
			dstHost := newRegistry(t, refuse(http.StatusInternalServerError, func(r *http.Request) bool {
				return r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/blobs/uploads/") &&
					r.URL.Query().Get("digest") != f.configDesc.Digest.String()
			}))
			return setup{src: inLayout(t, f, nil), dst: dstHost + "/half/image:out", want: []string{dstHost + "/half/image:out", "convert layer sha256:", "registry failed (500 Internal Server Error)"}}
		}},
		{"index/one platform has a corrupt layer", func(t *testing.T) setup {
			amd := good()
			arm := badLayer(layerSpec{mt: types.OCILayer, blob: junk})
			arm.platform = &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}
			arm.setConfig(t, []v1.Hash{sha(arm.tars[0]), sha(arm.tars[1])})
			arm.build(t, true)
			src := clean + "/bad/index:v1"
			pushFixtures(t, src, rawIndex(t, types.OCIImageIndex, []*fixture{amd, arm}), types.OCIImageIndex, amd, arm)
			return setup{src: src, dst: registryDst(t), want: []string{src + " (linux/arm64/v8)", arm.layers[1].Digest.String(), "corrupt gzip"}}
		}},
		{"layout/digest mismatch", func(t *testing.T) setup {
			f := good()
			src := inLayout(t, f, flipFileByte(func(n int) int { return n / 2 }))
			return setup{src: src, dst: layoutDst(t), want: []string{src, f.layers[1].Digest.String(), "digest mismatch"}}
		}},
		{"layout/digest mismatch in a tar header, uncompressed", func(t *testing.T) setup {
			f := badLayer(layerSpec{mt: types.OCIUncompressedLayer})
			src := inLayout(t, f, flipFileByte(func(int) int { return 600 })) // the second header: the tar reader fails first
			return setup{src: src, dst: layoutDst(t), want: []string{src, f.layers[1].Digest.String(), "digest mismatch"}}
		}},
		{"layout/digest mismatch in file content, uncompressed", func(t *testing.T) setup {
			f := badLayer(layerSpec{mt: types.OCIUncompressedLayer})
			src := inLayout(t, f, flipFileByte(func(int) int { return 2000 })) // content of the first file, where tar does not look
			return setup{src: src, dst: layoutDst(t), want: []string{src, f.layers[1].Digest.String(), "digest mismatch"}}
		}},
		{"layout/truncated blob", func(t *testing.T) setup {
			f := good()
			src := inLayout(t, f, func(p string) {
				fi, _ := os.Stat(p)
				os.Truncate(p, fi.Size()/2)
			})
			return setup{src: src, dst: layoutDst(t), want: []string{src, f.layers[1].Digest.String(), "truncated blob"}}
		}},
		{"layout/missing blob", func(t *testing.T) setup {
			f := good()
			src := inLayout(t, f, func(p string) { os.Remove(p) })
			return setup{src: src, dst: layoutDst(t), want: []string{src, f.layers[1].Digest.String(), "missing"}}
		}},
		{"layout/unknown media type", func(t *testing.T) setup {
			f := badLayer(layerSpec{mt: "application/vnd.example.layer.v1.tar+lz4"})
			src := inLayout(t, f, nil)
			return setup{src: src, dst: layoutDst(t), want: []string{src, f.layers[1].Digest.String(), "application/vnd.example.layer.v1.tar+lz4"}}
		}},
		{"layout/corrupt gzip", func(t *testing.T) setup {
			f := badLayer(layerSpec{mt: types.DockerLayer, blob: junk})
			src := inLayout(t, f, nil)
			return setup{src: src, dst: registryDst(t), want: []string{src, f.layers[1].Digest.String(), "corrupt gzip"}}
		}},
		{"layout/tag missing", func(t *testing.T) setup {
			f := good()
			src := strings.TrimSuffix(inLayout(t, f, nil), ":v1") + ":v2"
			return setup{src: src, dst: layoutDst(t), want: []string{`tag "v2" not found`, "tags: v1"}}
		}},
		{"layout/no layout", func(t *testing.T) setup {
			src := "oci:" + filepath.Join(t.TempDir(), "nothing")
			return setup{src: src, dst: layoutDst(t), want: []string{src, "no OCI layout"}}
		}},
		{"layout/destination not writable", func(t *testing.T) setup {
			f := good()
			file := filepath.Join(t.TempDir(), "file")
			os.WriteFile(file, nil, 0o644)
			dst := "oci:" + filepath.Join(file, "sub") + ":out"
			return setup{src: inLayout(t, f, nil), dst: dst, want: []string{dst, "not a directory"}}
		}},
		{"single image of another platform", func(t *testing.T) setup {
			src := inLayout(t, good(), nil)
			return setup{src: src, dst: layoutDst(t), opts: func(o *Options) { o.Platform = &v1.Platform{OS: "linux", Architecture: "arm64"} },
				want: []string{src, "image is for linux/amd64, not linux/arm64"}}
		}},
		{"platform missing", func(t *testing.T) setup {
			f := good()
			dir := t.TempDir()
			writeFixtures(t, dir, "v1", rawIndex(t, types.OCIImageIndex, []*fixture{f}), types.OCIImageIndex, f)
			return setup{src: "oci:" + dir + ":v1", dst: layoutDst(t), opts: func(o *Options) { o.Platform = &v1.Platform{OS: "linux", Architecture: "s390x"} },
				want: []string{"oci:" + dir + ":v1", "linux/s390x", "linux/amd64"}}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.setup(t)
			opts := testOptions()
			opts.TempDir = t.TempDir()
			if s.opts != nil {
				s.opts(&opts)
			}
			_, err := Convert(context.Background(), s.src, s.dst, opts)
			if err == nil {
				t.Fatalf("Convert(%s, %s) succeeded", s.src, s.dst)
			}
			msg := err.Error()
			t.Logf("error: %s", msg)
			for _, w := range s.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error does not name %q", w)
				}
			}
			for _, w := range s.not {
				if strings.Contains(msg, w) {
					t.Errorf("error says %q", w)
				}
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error is more than one line")
			}
			if left, _ := os.ReadDir(opts.TempDir); len(left) != 0 {
				t.Errorf("temp files left behind: %v", left)
			}
			if strings.HasPrefix(s.dst, layoutPrefix) {
				loc, _ := parseLocation(s.dst, false)
				if tags := layoutTags(t, loc.dir); len(tags) != 0 {
					t.Errorf("destination has tags %v", tags)
				}
			} else if registryHasTag(t, s.dst) {
				t.Errorf("destination %s is tagged", s.dst)
			}
		})
	}
}

// flipFileByte is an edit of a blob file in a layout: it flips a bit of the byte at(n) of
// the file's n bytes.
func flipFileByte(at func(n int) int) func(p string) {
	return func(p string) {
		b, _ := os.ReadFile(p)
		b[at(len(b))] ^= 1
		os.WriteFile(p, b, 0o644)
	}
}
