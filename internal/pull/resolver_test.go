package pull

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	dockerconfig "github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"

	"lazypull/internal/fetch"
	"lazypull/internal/testutil"
	"lazypull/internal/warm"
)

// lazyAnnotations mark a layer descriptor as a lazypull layer's (format.IsLayer).
var lazyAnnotations = map[string]string{
	"dev.lazypull.layer.index.digest": "sha256:" + strings.Repeat("1", 64),
	"dev.lazypull.layer.index.offset": "10",
	"dev.lazypull.layer.index.size":   "20",
}

// countingRegistry serves an in-process registry and counts its requests by method and
// path kind ("HEAD manifests", "GET blobs").
type countingRegistry struct {
	*testutil.Registry
	host string
}

func newCountingRegistry(t *testing.T) *countingRegistry {
	t.Helper()
	r := testutil.NewRegistry(t)
	return &countingRegistry{r, r.Host}
}

// counts returns the requests since the last call, counted by method and path kind.
func (c *countingRegistry) counts() map[string]int {
	out := map[string]int{}
	for _, line := range c.Take() {
		method, path, _ := strings.Cut(line, " ")
		path, _, _ = strings.Cut(path, " ")
		kind := "other"
		for _, k := range []string{"manifests", "blobs"} {
			if strings.Contains(path, "/"+k+"/") {
				kind = k
			}
		}
		if k := method + " " + kind; k != "GET other" { // the version check
			out[k]++
		}
	}
	return out
}

// TestPinnedResolver: containerd resolves REF and fetches its manifest through the
// pinned resolver without a request; the config and other references go to the registry
// through containerd's resolver.
func TestPinnedResolver(t *testing.T) {
	reg := newCountingRegistry(t)
	img, err := mutate.Append(mutate.MediaType(empty.Image, types.OCIManifestSchema1),
		mutate.Addendum{Layer: static.NewLayer([]byte("layer"), types.OCILayer), Annotations: lazyAnnotations})
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.host + "/app:v1"
	for _, tag := range []string{"v1", "v2"} {
		r, _ := name.ParseReference(reg.host + "/app:" + tag)
		if err := remote.Write(r, img); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	fr, err := openRegistry(ref)
	if err != nil {
		t.Fatal(err)
	}
	reg.counts()
	d, raw, err := fr.FetchManifest(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := reg.counts(); got["GET manifests"] != 1 || len(got) != 1 {
		t.Fatalf("FetchManifest sent %v; want one manifest GET", got)
	}
	desc := ocispec.Descriptor{MediaType: string(d.MediaType), Digest: digest.Digest(d.Digest.String()), Size: d.Size}
	next := docker.NewResolver(docker.ResolverOptions{Hosts: dockerconfig.ConfigureHosts(ctx, dockerconfig.HostOptions{DefaultScheme: "http"})})
	r := &pinnedResolver{next: next, ref: ref, desc: desc, raw: raw}

	n, got, err := r.Resolve(ctx, ref)
	if err != nil || n != ref || got.Digest != desc.Digest || got.MediaType != ocispec.MediaTypeImageManifest || got.Size != int64(len(raw)) {
		t.Fatalf("Resolve(%s) = %s %+v %v", ref, n, got, err)
	}
	f, err := r.Fetcher(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	if b := fetchAll(t, f.Fetch, got); !bytes.Equal(b, raw) {
		t.Errorf("the manifest fetched differs from the one pinned")
	}
	if got := reg.counts(); len(got) != 0 {
		t.Errorf("resolving and fetching the pinned manifest sent %v; want nothing", got)
	}
	m, _ := img.Manifest()
	cfg, _ := img.RawConfigFile()
	if b := fetchAll(t, f.Fetch, ocispec.Descriptor{MediaType: string(m.Config.MediaType), Digest: digest.Digest(m.Config.Digest.String()), Size: m.Config.Size}); !bytes.Equal(b, cfg) {
		t.Errorf("the config fetched differs")
	}
	if got := reg.counts(); got["GET blobs"] != 1 {
		t.Errorf("fetching the config sent %v; want it from the registry", got)
	}
	// Another reference goes to the registry.
	if _, got, err := r.Resolve(ctx, reg.host+"/app:v2"); err != nil || got.Digest != desc.Digest {
		t.Fatalf("Resolve(v2) = %+v, %v", got, err)
	}
	if got := reg.counts(); got["HEAD manifests"]+got["GET manifests"] == 0 {
		t.Errorf("resolving another reference sent %v; want it resolved by the registry", got)
	}

	// The config fetched early (as the pull does, once it has the manifest) is served
	// from memory when containerd asks for it.
	cfgDesc := ocispec.Descriptor{MediaType: string(m.Config.MediaType), Digest: digest.Digest(m.Config.Digest.String()), Size: m.Config.Size}
	r.config = fetchEarly(ctx, fr, m.Config)
	<-r.config.done
	if got := reg.counts(); got["GET blobs"] != 1 {
		t.Errorf("fetching the config early sent %v; want one blob GET", got)
	}
	if b := fetchAll(t, f.Fetch, cfgDesc); !bytes.Equal(b, cfg) {
		t.Errorf("the config served from memory differs")
	}
	if got := reg.counts(); len(got) != 0 {
		t.Errorf("fetching the config fetched early sent %v; want nothing", got)
	}
	// A config that failed to come early (here: not in the registry) is containerd's to fetch.
	missing := m.Config
	missing.Digest.Hex = strings.Repeat("0", 64)
	r.config = fetchEarly(ctx, fr, missing)
	<-r.config.done
	if r.config.err == nil {
		t.Fatal("fetching a missing config early succeeded")
	}
	reg.counts()
	wrong := cfgDesc
	wrong.Digest = digest.Digest(missing.Digest.String())
	rc, err := f.Fetch(ctx, wrong)
	if err == nil {
		_, err = io.ReadAll(rc) // containerd's fetcher asks on the first read
		rc.Close()
	}
	if err == nil {
		t.Errorf("fetching a missing config succeeded")
	}
	if got := reg.counts(); got["GET blobs"]+got["HEAD blobs"] == 0 {
		t.Errorf("a config that failed early was not asked of the registry again: %v", got)
	}
}

// ociManifest is a manifest to push as it is, bytes and media type.
type ociManifest []byte

func (m ociManifest) RawManifest() ([]byte, error)        { return m, nil }
func (m ociManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

// TestEmbeddedConfig: a config the manifest embeds (the config descriptor's data) is
// neither fetched early nor by containerd; embedded bytes that are not the config (another
// digest, another size) are dropped with a warning, and the config is fetched as for a
// manifest that embeds nothing.
func TestEmbeddedConfig(t *testing.T) {
	reg := newCountingRegistry(t)
	// No layers: the config is the one blob containerd is to fetch.
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	plain, _ := name.ParseReference(reg.host + "/app:plain")
	if err := remote.Write(plain, img); err != nil {
		t.Fatal(err)
	}
	cfg, _ := img.RawConfigFile()
	flipped := bytes.Clone(cfg)
	flipped[len(flipped)-1] ^= 1
	for _, tc := range []struct {
		name     string
		data     []byte
		fetched  bool // the config is asked of the registry
		warnings int
	}{
		{"none", nil, true, 0},
		{"embedded", cfg, false, 0},
		{"another digest", flipped, true, 1},
		{"another size", cfg[:len(cfg)-1], true, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, _ := img.Manifest()
			m = m.DeepCopy()
			m.Config.Data = tc.data
			raw, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			ref := reg.host + "/app:" + strings.ReplaceAll(tc.name, " ", "-")
			r, _ := name.ParseReference(ref)
			if err := remote.Put(r, ociManifest(raw)); err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			fr, err := openRegistry(ref)
			if err != nil {
				t.Fatal(err)
			}
			d, got, err := fr.FetchManifest(ctx, "")
			if err != nil || !bytes.Equal(got, raw) {
				t.Fatalf("FetchManifest: %v (same bytes: %v)", err, bytes.Equal(got, raw))
			}
			pm, err := v1.ParseManifest(bytes.NewReader(got))
			if err != nil {
				t.Fatal(err)
			}
			reg.counts()

			// As runPull does, once it has the manifest.
			config := fetchEarly(ctx, fr, pm.Config)
			<-config.done
			want := 0
			if tc.fetched {
				want = 1
			}
			if n := reg.counts()["GET blobs"]; n != want {
				t.Errorf("the early config sent %d blob GETs, want %d", n, want)
			}
			if !bytes.Equal(config.b, cfg) {
				t.Errorf("the early config is not the config")
			}

			// containerd's own fetch and children handlers, as its pull runs them.
			var logged bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logged, nil))
			next := docker.NewResolver(docker.ResolverOptions{Hosts: dockerconfig.ConfigureHosts(ctx, dockerconfig.HostOptions{DefaultScheme: "http"})})
			pr := &pinnedResolver{next: next, ref: ref, desc: pinnedDesc(d), raw: got, config: config}
			f, err := pr.Fetcher(ctx, ref)
			if err != nil {
				t.Fatal(err)
			}
			cs, err := local.NewStore(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			h := dropBadData(log, ref, images.Handlers(remotes.FetchHandler(cs, f), images.ChildrenHandler(cs)))
			if err := images.Dispatch(ctx, h, nil, pr.desc); err != nil {
				t.Fatalf("pull: %v", err)
			}
			if got := reg.counts(); len(got) != 0 {
				t.Errorf("containerd sent %v; want nothing (manifest pinned, config embedded or fetched early)", got)
			}
			cd := ocispec.Descriptor{MediaType: string(pm.Config.MediaType), Digest: digest.Digest(pm.Config.Digest.String()), Size: pm.Config.Size}
			if b, err := content.ReadBlob(ctx, cs, cd); err != nil || !bytes.Equal(b, cfg) {
				t.Errorf("containerd stored the config as %q, %v", b, err)
			}
			lines := strings.Split(strings.TrimSpace(logged.String()), "\n")
			if logged.Len() == 0 {
				lines = nil
			}
			if len(lines) != tc.warnings {
				t.Fatalf("logged %q; want %d warnings", lines, tc.warnings)
			}
			for _, l := range lines {
				if !strings.Contains(l, "level=WARN") || !strings.Contains(l, "image="+ref) || !strings.Contains(l, "config="+pm.Config.Digest.String()) {
					t.Errorf("warning %q does not name the image and the config", l)
				}
			}
		})
	}
}

func fetchAll(t *testing.T, fetch func(context.Context, ocispec.Descriptor) (io.ReadCloser, error), desc ocispec.Descriptor) []byte {
	t.Helper()
	rc, err := fetch(context.Background(), desc)
	if err != nil {
		t.Fatalf("fetch %s: %v", desc.Digest, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// warmServer serves the warm-up API on a unix socket and records the requests.
func warmServer(t *testing.T) (string, func() []warm.Request) {
	t.Helper()
	ln, sock := testutil.ListenUnix(t)
	var mu sync.Mutex
	var got []warm.Request
	srv := grpc.NewServer()
	warm.Register(srv, func(_ context.Context, r warm.Request) error {
		mu.Lock()
		got = append(got, r)
		mu.Unlock()
		return nil
	})
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return sock, func() []warm.Request {
		mu.Lock()
		defer mu.Unlock()
		return append([]warm.Request(nil), got...)
	}
}

// manifestOf returns an image manifest with one layer, lazy or not.
func manifestOf(t *testing.T, lazy bool) (ocispec.Descriptor, []byte, []ocispec.Descriptor) {
	t.Helper()
	layer := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerZstd, Digest: digest.FromString("layer"), Size: 5}
	if lazy {
		layer.Annotations = lazyAnnotations
	}
	cfg := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromString(t.Name()), Size: 2}
	raw, err := json.Marshal(ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: cfg, Layers: []ocispec.Descriptor{layer}})
	if err != nil {
		t.Fatal(err)
	}
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(raw), Size: int64(len(raw))}, raw,
		[]ocispec.Descriptor{cfg, layer}
}

// TestWarmerHandler: the image manifest containerd handles is sent once, as soon as its
// handler returns: from memory when the pull has it, else read back from the content store
// (a platform's manifest picked from an index); an image without lazypull layers is sent
// too (the snapshotter looks for its index artifact); indexes are not.
func TestWarmerHandler(t *testing.T) {
	sock, received := warmServer(t)
	cs, err := local.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	pinned, pinnedRaw, pinnedChildren := manifestOf(t, true)
	stored, storedRaw, storedChildren := manifestOf(t, true)
	stored.Digest, storedRaw = digest.FromBytes(append(storedRaw, ' ')), append(storedRaw, ' ')
	stored.Size = int64(len(storedRaw))
	plain, plainRaw, plainChildren := manifestOf(t, false)
	for _, m := range []struct {
		d   ocispec.Descriptor
		raw []byte
	}{{stored, storedRaw}, {plain, plainRaw}} {
		if err := content.WriteBlob(ctx, cs, m.d.Digest.String(), bytes.NewReader(m.raw), m.d); err != nil {
			t.Fatal(err)
		}
	}
	children := map[digest.Digest][]ocispec.Descriptor{pinned.Digest: pinnedChildren, stored.Digest: storedChildren, plain.Digest: plainChildren}
	h := images.HandlerFunc(func(_ context.Context, d ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		return children[d.Digest], nil
	})
	const ref = "127.0.0.1:5000/app:v1"
	w := newWarmer(slog.New(slog.DiscardHandler), ref, sock, cs)
	cached := func(d ocispec.Descriptor) []byte {
		if d.Digest == pinned.Digest {
			return pinnedRaw
		}
		return nil
	}
	wh := w.handler(cached, h)
	index := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromString("index"), Size: 5}
	for _, d := range []ocispec.Descriptor{index, pinned, stored, plain, pinned, stored} {
		if _, err := wh.Handle(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	w.wait()
	got := received()
	if len(got) != 3 {
		t.Fatalf("%d warm requests, want 3 (the image manifests, once each): %+v", len(got), got)
	}
	want := map[string][]byte{pinned.Digest.String(): pinnedRaw, stored.Digest.String(): storedRaw, plain.Digest.String(): plainRaw}
	for _, r := range got {
		if r.Ref != ref || !bytes.Equal(r.Manifest, want[r.Digest]) || r.MediaType != ocispec.MediaTypeImageManifest {
			t.Errorf("warm request %s %s %s: not the manifest handled", r.Ref, r.Digest, r.MediaType)
		}
		delete(want, r.Digest)
	}
	if len(want) != 0 {
		t.Errorf("not sent: %v", want)
	}

	// Nothing listening: no error, nothing waits long.
	w = newWarmer(slog.New(slog.DiscardHandler), ref, filepath.Join(t.TempDir(), "none.sock"), cs)
	w.manifest(ctx, pinned, pinnedRaw, nil)
	w.wait()
}

// openRegistry opens ref through a plain-HTTP registry client of its own.
func openRegistry(ref string) (*fetch.Registry, error) {
	c, err := fetch.NewClient(fetch.WithPlainHTTP())
	if err != nil {
		return nil, err
	}
	return c.Open(ref)
}
