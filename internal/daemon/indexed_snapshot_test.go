package daemon

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	dto "github.com/prometheus/client_model/go"

	"lazypull/internal/imageindex"
	"lazypull/internal/profile"
	"lazypull/internal/snapshot"
	"lazypull/internal/store"
	"lazypull/internal/testutil"
)

// indexedSnapshotFS returns a snapshotter file system over a new store, with its fallback
// metrics, logging to the returned buffer.
func indexedSnapshotFS(t *testing.T) (*SnapshotFS, *store.Store, *FallbackMetrics, *testutil.LogBuffer) {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	log, logs := testutil.NewLogAt(t, slog.LevelInfo)
	f := NewSnapshotFS(st, nil, log, testClient(t))
	t.Cleanup(func() { f.Close() })
	m := NewFallbackMetrics()
	f.SetFallbackMetrics(m)
	return f, st, m, logs
}

// criLabels are the labels containerd's unpacker gives the Prepare of layer i of the
// image a CRI pull (or `lazypull pull`) pulled: CRI's, and the layer's chain ID.
func criLabels(t *testing.T, ref string, art *imageindex.Result, i int) map[string]string {
	t.Helper()
	diffIDs := make([]v1.Hash, len(art.Layers))
	for k, lr := range art.Layers {
		h, err := v1.NewHash(lr.Blob.Annotations[imageindex.AnnotationDiffID])
		if err != nil {
			t.Fatal(err)
		}
		diffIDs[k] = h
	}
	return map[string]string{LabelCRIImageRef: ref, LabelCRIManifestDigest: art.Image.Digest.String(),
		LabelCRILayerDigest: art.Layers[i].Layer.Digest.String(), LabelChainID: chainIDs(diffIDs)[i]}
}

// TestSnapshotFSIndexedImage: the snapshotter mounts each layer of an unconverted image
// from its index artifact, given the labels a CRI pull gives (no lazypull labels): files
// read back as the tar has them, a small file goes into the store under its digest (so
// the next mount of any layer holding it reads it locally), a large one by the spans that
// hold it (counted in the layer's usage and kept by a prune), and a Prepare whose chain ID
// is not the layer's place in the image falls back, warned of and counted.
func TestSnapshotFSIndexedImage(t *testing.T) {
	testutil.NeedRoot(t, "FUSE mounts")
	ref, files, art := indexedFixture(t)
	f, st, m, logs := indexedSnapshotFS(t)
	ctx := context.Background()
	dirs := []string{testutil.ShortDir(t), testutil.ShortDir(t)}
	for i, dir := range dirs {
		if err := f.Mount(ctx, dir, criLabels(t, ref, art, i)); err != nil {
			t.Fatalf("layer %d: %v\n%s", i, err, logs)
		}
		t.Cleanup(func() { f.Unmount(ctx, dir) })
	}
	for name, dir := range map[string]string{"etc/os-release": dirs[0], "usr/share/doc.txt": dirs[0], "usr/lib/libbig.so": dirs[0], "etc/hostname": dirs[1]} {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || !bytes.Equal(got, files[name]) {
			t.Errorf("%s: %d bytes, %v; want its %d", name, len(got), err, len(files[name]))
		}
	}
	doc, _ := f.Images()[0].indexed[0].Index.Lookup("usr/share/doc.txt")
	// The store puts a read's file together in the background, after the read is served.
	testutil.WaitFor(t, time.Minute, doc.Name+", read, to be in the store", func() bool {
		_, ok := st.LocalPath(storeFile(doc))
		return ok
	})
	// The large file is stored by the spans that hold it (indexed_large.go).
	l0, big := f.Images()[0].indexed[0], int64(len(files["usr/lib/libbig.so"]))
	testutil.WaitFor(t, time.Minute, "the large file's spans, read, to be in the store", func() bool { return l0.held().Bytes >= doc.Size+big })
	if b, n, err := f.Usage(ctx, dirs[0], criLabels(t, ref, art, 0)); err != nil || b < doc.Size+big || n < 2 {
		t.Errorf("usage of layer 0: %d bytes in %d objects, %v; want at least the files read", b, n, err)
	}
	keep, _, _ := KeepInUse(st, nil, f.Images())
	if !slices.ContainsFunc(keep.Files, func(kf store.File) bool { return kf.Digest == doc.Digest }) {
		t.Errorf("a prune would not keep %s, read through a mounted layer", doc.Name)
	}
	for s := range l0.largeSpans() {
		if !slices.ContainsFunc(keep.Files, func(kf store.File) bool { return kf.Digest == s.Digest }) {
			t.Errorf("a prune would not keep the span at %d of the large file, read through a mounted layer", s.Off)
		}
	}
	if !strings.Contains(logs.String(), "image opened from its index artifact") {
		t.Errorf("no line saying the image was opened from its index:\n%s", logs)
	}

	wrong := criLabels(t, ref, art, 1)
	wrong[LabelChainID] = criLabels(t, ref, art, 0)[LabelChainID]
	err := f.Mount(ctx, testutil.ShortDir(t), wrong)
	if !errors.Is(err, snapshot.ErrNotRemote) || !strings.Contains(err.Error(), "chain") {
		t.Errorf("layer 1 prepared as layer 0's chain: %v; want a fallback naming the chain", err)
	}
	if got := countReason(t, m, ReasonIndex); got != 1 {
		t.Errorf("fallbacks for reason index: %v, want 1", got)
	}
}

// TestSnapshotFSIndexBoundByDiffID: an index artifact whose layer gives another diff ID
// than the image config's serves nothing of that layer, which falls back with a line
// naming both; the other layer is still mounted from the index. An image without an
// artifact takes the ordinary path quietly (ErrNotLazy), after one line for the image.
func TestSnapshotFSIndexBoundByDiffID(t *testing.T) {
	testutil.NeedRoot(t, "FUSE mounts")
	ref, _, art := indexedFixture(t)
	blobs := make([]v1.Descriptor, len(art.Layers))
	for i, lr := range art.Layers {
		blobs[i] = lr.Blob
		blobs[i].Annotations = maps.Clone(lr.Blob.Annotations)
	}
	blobs[0].Annotations[imageindex.AnnotationDiffID] = blobs[1].Annotations[imageindex.AnnotationDiffID]
	putArtifact(t, ref, art.Image, blobs)

	f, _, m, logs := indexedSnapshotFS(t)
	ctx := context.Background()
	err := f.Mount(ctx, testutil.ShortDir(t), criLabels(t, ref, art, 0))
	if !errors.Is(err, snapshot.ErrNotRemote) || !strings.Contains(err.Error(), "diff ID") {
		t.Errorf("layer of another diff ID: %v; want a fallback naming the diff ID", err)
	}
	if !strings.Contains(logs.String(), "layer not mounted lazily") || countReason(t, m, ReasonIndex) != 1 {
		t.Errorf("no warning or count for the layer:\n%s", logs)
	}
	dir := testutil.ShortDir(t)
	if err := f.Mount(ctx, dir, criLabels(t, ref, art, 1)); err != nil {
		t.Fatalf("the other layer: %v", err)
	}
	f.Unmount(ctx, dir)

	// Under the pinned policy no index is looked up: the ordinary path, quietly, with one
	// line for the image, not one for each of its layers (each opens it again).
	f2, _, _, logs2 := indexedSnapshotFS(t)
	f2.SetProfileChoice(ProfileChoice{Policy: PolicyPinned})
	for i := range art.Layers {
		if err := f2.Mount(ctx, testutil.ShortDir(t), criLabels(t, ref, art, i)); !errors.Is(err, ErrNotLazy) {
			t.Errorf("layer %d under the pinned policy: %v; want ErrNotLazy", i, err)
		}
	}
	if n := strings.Count(logs2.String(), "no index artifact"); n != 1 {
		t.Errorf("%d lines about the missing index, want 1:\n%s", n, logs2)
	}
}

// countReason returns lazypull_fallback_layers_total{reason}.
func countReason(t *testing.T, m *FallbackMetrics, reason string) float64 {
	t.Helper()
	var pb dto.Metric
	if err := m.layers.WithLabelValues(reason).Write(&pb); err != nil {
		t.Fatal(err)
	}
	return pb.GetCounter().GetValue()
}

// putArtifact pushes, as the newest referrer of subject, an index artifact manifest over
// blobs already in ref's repository.
func putArtifact(t *testing.T, ref string, subject v1.Descriptor, blobs []v1.Descriptor) {
	t.Helper()
	putArtifactAt(t, ref, subject, blobs, time.Now().Add(time.Hour))
}

// putArtifactAt pushes an index artifact manifest over blobs already in ref's repository,
// created at created.
func putArtifactAt(t *testing.T, ref string, subject v1.Descriptor, blobs []v1.Descriptor, created time.Time) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := imageindex.Manifest(subject, blobs, created)
	if err != nil {
		t.Fatal(err)
	}
	h, _, _ := v1.SHA256(bytes.NewReader(raw))
	if err := remote.Put(r.Context().Digest(h.String()), rawManifest{raw, types.OCIManifestSchema1}); err != nil {
		t.Fatal(err)
	}
}

// TestPrefetchIndexedImage: the profile of an unconverted image served from its index
// artifact is prefetched: its small files, and the spans holding the profiled range of a
// large file, are in the store before anything reads them, and reading them then asks
// the registry for nothing. The index artifact's manifest and the profile's, embedded in
// the referrers tag index by their pushes, are not fetched on their own.
func TestPrefetchIndexedImage(t *testing.T) {
	reg := testutil.NewRegistry(t)
	ref, files, art := indexedFixtureOn(t, reg)
	p := &profile.Profile{Subject: art.Image.Digest.String(), Created: time.Now().UTC().Truncate(time.Second),
		Layers: []string{art.Layers[0].Layer.Digest.String(), art.Layers[1].Layer.Digest.String()},
		Files: []profile.File{
			{Layer: 0, Path: "usr/share/doc.txt", Ranges: []profile.Range{{Off: 0, Len: 100}}},
			{Layer: 1, Path: "etc/hostname", Ranges: []profile.Range{{Off: 0, Len: 4}}},
			{Layer: 0, Path: "usr/lib/libbig.so", Ranges: []profile.Range{{Off: 0, Len: 4096}}},
		}}
	profDesc := pushProfile(t, ref, art.Image, p, nil)
	reg.Take()
	im, ps := openPrefetched(t, ref)
	for _, r := range reg.Take() {
		for _, d := range []v1.Hash{art.Artifact.Digest, profDesc.Digest} {
			if strings.HasSuffix(r, "/manifests/"+d.String()) {
				t.Errorf("%s: the artifact's manifest fetched, not read from the referrers tag index", r)
			}
		}
	}
	want := int64(len(files["usr/share/doc.txt"]) + len(files["etc/hostname"]))
	if !im.FromIndex() || ps.Profile == "" || ps.Files != 3 || ps.Bytes < want+4096 || ps.Bytes > want+1<<20 || ps.Err != "" {
		t.Fatalf("prefetch %+v; want the two small files, %d bytes, and a span or two of the large one", ps, want)
	}
	before := im.Registry.Stats()
	for _, name := range []string{"usr/share/doc.txt", "etc/hostname"} {
		got, err := readIndexed(t, im.FSLayers(), name)
		if err != nil || !bytes.Equal(got, files[name]) {
			t.Errorf("%s: %d bytes, %v", name, len(got), err)
		}
	}
	l := im.indexed[0]
	e, _ := l.Index.Lookup("usr/lib/libbig.so")
	b := make([]byte, 4096)
	if n, err := l.ReadAt(t.Context(), e, b, 0); n != len(b) || err != nil || !bytes.Equal(b, files["usr/lib/libbig.so"][:4096]) {
		t.Errorf("large file's profiled range: %d bytes, %v", n, err)
	}
	if after := im.Registry.Stats(); after.Requests != before.Requests {
		t.Errorf("reading the prefetched files made %d requests", after.Requests-before.Requests)
	}
}
