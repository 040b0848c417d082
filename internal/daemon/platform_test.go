package daemon

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/internal/profile"
	"lazypull/internal/store"
)

// TestPrefetchProfilePerPlatform: a profile is recorded on one platform's image manifest,
// and an image index of two platforms, opened for each, finds that platform's own profile
// (looked up by the platform manifest's digest) and prefetches what it names.
func TestPrefetchProfilePerPlatform(t *testing.T) {
	for _, api := range []bool{true, false} {
		t.Run(map[bool]string{true: "referrers API", false: "tag schema"}[api], func(t *testing.T) {
			repo := repoWith(t, api, "multi")
			platforms := map[string]*v1.Platform{
				"amd64": {OS: "linux", Architecture: "amd64"},
				"arm64": {OS: "linux", Architecture: "arm64", Variant: "v8"},
			}
			var adds []mutate.IndexAddendum
			descs := map[string]v1.Descriptor{}
			for arch, p := range platforms {
				img, _ := lazyImageOf(t, map[string][]byte{
					"bin/" + arch: []byte(strings.Repeat(arch, 1000)),
					"bin/common":  []byte(strings.Repeat("x", 5000)),
				})
				d, err := img.Digest()
				if err != nil {
					t.Fatal(err)
				}
				raw, _ := img.RawManifest()
				descs[arch] = v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: d, Size: int64(len(raw))}
				adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: p}})
			}
			idx := mutate.IndexMediaType(mutate.AppendManifests(empty.Index, adds...), types.OCIImageIndex)
			if err := remote.WriteIndex(repo.Tag("v1"), idx); err != nil {
				t.Fatal(err)
			}
			// Each platform's profile names the file only its image has.
			pushed := map[string]string{}
			for arch, d := range descs {
				doc, err := (&profile.Profile{Subject: d.Digest.String(), Created: time.Now().UTC().Truncate(time.Second),
					Layers: []string{"sha256:" + strings.Repeat("c", 64)},
					Files:  []profile.File{{Layer: 0, Path: "bin/" + arch, Ranges: []profile.Range{{Off: 0, Len: 100}}}}}).Marshal()
				if err != nil {
					t.Fatal(err)
				}
				pd, err := profile.Push(repo, d, doc, nil)
				if err != nil {
					t.Fatal(err)
				}
				pushed[arch] = pd.Digest.String()
			}
			for arch, p := range platforms {
				st, err := store.Open(t.TempDir())
				if err != nil {
					t.Fatal(err)
				}
				im, err := OpenImage(context.Background(), st, repo.Tag("v1").String(), OpenOptions{Platform: p, Client: testClient(t)})
				if err != nil {
					t.Fatal(err)
				}
				if im.Image.Descriptor.Digest != descs[arch].Digest {
					t.Fatalf("%s: opened manifest %s, want %s", arch, im.Image.Descriptor.Digest, descs[arch].Digest)
				}
				im.Prefetch(context.Background(), PrefetchOptions{Wait: time.Minute, Log: slog.New(slog.DiscardHandler)})
				ps, _ := im.PrefetchStats()
				if !ps.Done || ps.Err != "" || ps.Profile != pushed[arch] || ps.Files != 1 || ps.Stale != 0 {
					t.Errorf("%s: prefetch %+v; want the profile %s with its one file", arch, ps, pushed[arch])
				}
				if got := st.Stats().ChunksFetched; got != 1 {
					t.Errorf("%s: %d chunks prefetched, want the one of bin/%s", arch, got, arch)
				}
				im.Close()
				st.Close()
			}
		})
	}
}
