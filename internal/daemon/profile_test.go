package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/internal/fetch"
	"lazypull/internal/profile"
	"lazypull/internal/store"
	"lazypull/internal/testutil"
)

// subjectImage serves a registry (with or without the referrers API) holding one random
// image, and returns the repository and the image's descriptor.
func subjectImage(t *testing.T, referrersAPI bool) (name.Repository, v1.Descriptor) {
	t.Helper()
	repo := repoWith(t, referrersAPI, "app")
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Push(t, repo.Tag("v1").String(), img)
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := img.RawManifest()
	return repo, v1.Descriptor{MediaType: types.DockerManifestSchema2, Digest: d, Size: int64(len(raw))}
}

// repoWith is the repository path of a new in-process registry that answers the referrers
// API, or not (referrers are then found through the tag schema).
func repoWith(t *testing.T, referrersAPI bool, path string) name.Repository {
	t.Helper()
	var opts []testutil.RegistryOption
	if referrersAPI {
		opts = append(opts, testutil.WithReferrers())
	}
	repo, err := name.NewRepository(testutil.NewRegistry(t, opts...).Host + "/" + path)
	if err != nil {
		t.Fatal(err)
	}
	return repo
}

func testProfile(subject v1.Hash, created time.Time, path string) []byte {
	p := &profile.Profile{Subject: subject.String(), Created: created, Layers: []string{"sha256:" + strings.Repeat("b", 64)},
		Files: []profile.File{{Layer: 0, Path: path, Ranges: []profile.Range{{Off: 0, Len: 100}}}}}
	b, err := p.Marshal()
	if err != nil {
		panic(err)
	}
	return b
}

func registryOf(t *testing.T, repo name.Repository) *fetch.Registry {
	t.Helper()
	reg, err := testClient(t).Open(repo.Tag("v1").String())
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

// TestProfileRoundTrip: a pushed profile is found through the referrers API, and through
// the tag schema where the registry has no API; the newest of two wins.
func TestProfileRoundTrip(t *testing.T) {
	for _, api := range []bool{true, false} {
		name := map[bool]string{true: "referrers API", false: "tag schema"}[api]
		t.Run(name, func(t *testing.T) {
			repo, subject := subjectImage(t, api)
			reg := registryOf(t, repo)
			ctx := context.Background()
			if p, _, err := FindProfile(ctx, reg, subject.Digest); p != nil || err != nil {
				t.Fatalf("no profile pushed yet: %v, %v", p, err)
			}
			t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
			if _, err := profile.Push(nil, repo, subject, testProfile(subject.Digest, t0.Add(time.Hour), "new"), nil); err != nil {
				t.Fatal(err)
			}
			if _, err := profile.Push(nil, repo, subject, testProfile(subject.Digest, t0, "old"), nil); err != nil {
				t.Fatal(err)
			}
			// Something else referring to the image is not a profile.
			other, _ := random.Image(10, 1)
			testutil.Push(t, repo.Tag("sig").String(), mutateSubject(t, other, subject))
			p, desc, err := FindProfile(ctx, reg, subject.Digest)
			if err != nil || p == nil {
				t.Fatalf("FindProfile: %v, %v", p, err)
			}
			if p.Files[0].Path != "new" {
				t.Errorf("found the profile %s (%s); want the newest", desc.Digest, p.Files[0].Path)
			}
			_, hasTag := remote.Head(repo.Tag(subject.Digest.Algorithm + "-" + subject.Digest.Hex))
			if api != (hasTag != nil) {
				t.Errorf("referrers API %v, tag schema index present %v", api, hasTag == nil)
			}
		})
	}
}

// mutateSubject makes img refer to subject (its artifactType is its config's media type,
// not a profile's).
func mutateSubject(t *testing.T, img v1.Image, subject v1.Descriptor) v1.Image {
	t.Helper()
	return subjectImg{img, subject}
}

type subjectImg struct {
	v1.Image
	subject v1.Descriptor
}

func (s subjectImg) Manifest() (*v1.Manifest, error) {
	m, err := s.Image.Manifest()
	if err != nil {
		return nil, err
	}
	m = m.DeepCopy()
	m.Subject = &s.subject
	return m, nil
}

func (s subjectImg) RawManifest() ([]byte, error) {
	m, err := s.Manifest()
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	err = jsonEncode(&b, m)
	return b.Bytes(), err
}

func (s subjectImg) Digest() (v1.Hash, error) {
	raw, err := s.RawManifest()
	if err != nil {
		return v1.Hash{}, err
	}
	h, _, err := v1.SHA256(bytes.NewReader(raw))
	return h, err
}

// TestProfileRefused: a corrupt or oversized profile is refused with an error that says
// what is wrong with which profile.
func TestProfileRefused(t *testing.T) {
	cases := []struct {
		name string
		doc  []byte
		want string
	}{
		{"corrupt", []byte(`{"subject": 1}`), "not a profile document"},
		{"oversized", bytes.Repeat([]byte(" "), profile.MaxSize+1), "more than"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			repo, subject := subjectImage(t, false)
			if err := remote.WriteLayer(repo, static.NewLayer(c.doc, types.MediaType(profile.MediaType))); err != nil {
				t.Fatal(err)
			}
			if err := remote.WriteLayer(repo, static.NewLayer([]byte("{}"), profile.ArtifactType)); err != nil {
				t.Fatal(err)
			}
			raw, err := profile.Manifest(subject, c.doc, nil, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			h, _, _ := v1.SHA256(bytes.NewReader(raw))
			if err := remote.Put(repo.Digest(h.String()), rawManifest{raw, types.OCIManifestSchema1}); err != nil {
				t.Fatal(err)
			}
			reqs := registryOf(t, repo)
			_, _, err = FindProfile(context.Background(), reqs, subject.Digest)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), h.String()) {
				t.Fatalf("FindProfile: %v; want an error naming the profile %s and %q", err, h, c.want)
			}
			if c.name == "oversized" && reqs.Stats().Bytes > 1<<20 {
				t.Errorf("read %d bytes of an oversized profile; it should be refused before", reqs.Stats().Bytes)
			}
		})
	}
}

func jsonEncode(w io.Writer, v any) error { return json.NewEncoder(w).Encode(v) }

// TestProfileEmbedded: a small profile travels in its manifest (the layer descriptor's data
// field), so the document's blob is never fetched: here it is not even in the registry.
// Embedded data that does not match the descriptor is refused.
func TestProfileEmbedded(t *testing.T) {
	for _, tamper := range []bool{false, true} {
		t.Run(map[bool]string{false: "intact", true: "tampered"}[tamper], func(t *testing.T) {
			repo, subject := subjectImage(t, false)
			if err := remote.WriteLayer(repo, static.NewLayer([]byte("{}"), profile.ArtifactType)); err != nil {
				t.Fatal(err)
			}
			doc := testProfile(subject.Digest, time.Now(), "embedded")
			raw, err := profile.Manifest(subject, doc, nil, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if tamper {
				m, err := v1.ParseManifest(bytes.NewReader(raw))
				if err != nil {
					t.Fatal(err)
				}
				m.Layers[0].Data = bytes.Replace(m.Layers[0].Data, []byte("embedded"), []byte("EMBEDDED"), 1)
				if raw, err = json.Marshal(m); err != nil {
					t.Fatal(err)
				}
			}
			h, _, _ := v1.SHA256(bytes.NewReader(raw))
			if err := remote.Put(repo.Digest(h.String()), rawManifest{raw, types.OCIManifestSchema1}); err != nil {
				t.Fatal(err)
			}
			reg := registryOf(t, repo)
			p, _, err := FindProfile(context.Background(), reg, subject.Digest)
			if tamper {
				if err == nil || !strings.Contains(err.Error(), "embedded data has digest") {
					t.Fatalf("FindProfile of tampered embedded data: %v, %v; want it refused", p, err)
				}
				return
			}
			if err != nil || p == nil || p.Files[0].Path != "embedded" {
				t.Fatalf("FindProfile: %v, %v; want the embedded profile, without its blob", p, err)
			}
		})
	}
}

// TestProfileInTagIndex: on a registry without the referrers API, Push puts the profile's
// manifest (the document in it) into the referrers tag index, so the look-up reads the
// profile in the round trip that asks for the API and the tag: two requests, no more.
// Only the newest pushed keeps it there; embedded bytes that do not match their descriptor
// are refused.
func TestProfileInTagIndex(t *testing.T) {
	repo, subject := subjectImage(t, false)
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	first, err := profile.Push(nil, repo, subject, testProfile(subject.Digest, t0, "first"), nil)
	if err != nil {
		t.Fatal(err)
	}
	second, err := profile.Push(nil, repo, subject, testProfile(subject.Digest, t0.Add(time.Hour), "second"), nil)
	if err != nil {
		t.Fatal(err)
	}
	tag := repo.Tag(subject.Digest.Algorithm + "-" + subject.Digest.Hex)
	got, err := remote.Get(tag)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(got.Manifest))
	if err != nil {
		t.Fatal(err)
	}
	carried := map[v1.Hash]bool{}
	for _, d := range idx.Manifests {
		carried[d.Digest] = len(d.Data) > 0
	}
	if len(idx.Manifests) != 2 || carried[first.Digest] || !carried[second.Digest] {
		t.Fatalf("tag index %s: %d profiles, data carried %v; want both listed, only the newest (%s) with its manifest", tag, len(idx.Manifests), carried, second.Digest)
	}

	reg := registryOf(t, repo)
	p, desc, err := FindProfile(context.Background(), reg, subject.Digest)
	if err != nil || p == nil || p.Files[0].Path != "second" || desc.Digest != second.Digest {
		t.Fatalf("FindProfile: %v, %v, %v; want the newest profile", p, desc.Digest, err)
	}
	if n := reg.Stats().Requests; n != 2 {
		t.Errorf("the look-up took %d requests; want 2 (referrers API and tag, nothing else)", n)
	}

	// Tampered: the index's copy of the manifest differs from the manifest by a byte.
	tampered := false
	for i := range idx.Manifests {
		if d := idx.Manifests[i].Data; len(d) > 0 {
			d[bytes.Index(d, []byte("artifactType"))] = 'A'
			tampered = true
		}
	}
	if !tampered {
		t.Fatal("test broken: nothing tampered")
	}
	b, _ := json.Marshal(idx)
	if err := remote.Put(tag, rawIndex(b)); err != nil {
		t.Fatal(err)
	}
	if p, _, err := FindProfile(context.Background(), registryOf(t, repo), subject.Digest); err == nil || !strings.Contains(err.Error(), "embedded data has digest") {
		t.Fatalf("FindProfile of a tampered tag index: %v, %v; want it refused", p, err)
	}
}

type rawIndex []byte

func (m rawIndex) RawManifest() ([]byte, error)        { return m, nil }
func (m rawIndex) MediaType() (types.MediaType, error) { return types.OCIImageIndex, nil }

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
				pd, err := profile.Push(nil, repo, d, doc, nil)
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
