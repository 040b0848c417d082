package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus"

	"lazypull/internal/fetch"
	"lazypull/internal/snapshot"
	"lazypull/internal/testutil"
)

// TestEveryFallbackWarnsAndCounts: the registry refuses the snapshotter the manifest of a
// two-layer image (401). Both layers take the ordinary path, and each says so in one
// warning that names it and why (not only the first: the second used to be at debug), and
// counts in lazypull_fallback_layers_total{reason="auth"}. A layer that is no lazypull
// layer is neither warned of nor counted.
func TestEveryFallbackWarnsAndCounts(t *testing.T) {
	img := twoLayerImageWith(t, map[string][]byte{"etc/a": []byte("a")}, map[string][]byte{"etc/b": []byte("b")}, nil)
	ref, reqs, subject := pushCounted(t, img, "fallback:v1")
	reqs.refuseManifests.Store(true)
	log, logs := testutil.NewLogAt(t, slog.LevelWarn)
	fsys, s := newSnapshotter(t, log)
	m := NewFallbackMetrics()
	fsys.SetFallbackMetrics(m)
	man, _ := img.Manifest()
	ctx := namespaces.WithNamespace(context.Background(), "test")
	parent := ""
	for i, l := range man.Layers {
		labels := pulledLabels(ref, subject.Digest.String(), l.Digest.String(), l.Annotations)
		labels[snapshots.LabelSnapshotRef] = "layer-" + l.Digest.Hex
		key := fmt.Sprintf("extract-%d", i)
		if _, err := s.Prepare(ctx, key, parent, snapshots.WithLabels(labels)); err != nil {
			t.Fatalf("Prepare of layer %d: %v; want the ordinary path", i, err)
		}
		if err := s.Commit(ctx, "layer-"+l.Digest.Hex, key); err != nil {
			t.Fatal(err)
		}
		parent = "layer-" + l.Digest.Hex
	}
	// A plain layer: no lazypull labels.
	if _, err := s.Prepare(ctx, "plain", parent, snapshots.WithLabels(map[string]string{snapshots.LabelSnapshotRef: "plain-layer"})); err != nil {
		t.Fatal(err)
	}
	t.Logf("logged:\n%s", logs.String())
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != len(man.Layers) {
		t.Fatalf("%d log lines, want one warning per layer:\n%s", len(lines), logs.String())
	}
	for i, l := range man.Layers {
		line := lines[i]
		if !strings.Contains(line, "level=WARN") || !strings.Contains(line, l.Digest.String()) || !strings.Contains(line, "reason=auth") || !strings.Contains(line, "401") {
			t.Errorf("layer %d: want a warning naming it, reason=auth and the 401; got %s", i, line)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.Collectors()...)
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 || len(mfs[0].GetMetric()) != len(FallbackReasons) {
		t.Fatalf("gathered %v, %v; want lazypull_fallback_layers_total with one series per reason", mfs, err)
	}
	for _, s := range mfs[0].GetMetric() {
		r, want := s.GetLabel()[0].GetValue(), 0.0
		if r == ReasonAuth {
			want = float64(len(man.Layers))
		}
		if got := s.GetCounter().GetValue(); got != want {
			t.Errorf("lazypull_fallback_layers_total{reason=%q} = %v, want %v", r, got, want)
		}
	}
}

// TestStatsWrittenOnChange: the stats file is written when an image opens or a layer
// mounts (SnapshotFS.OnChange kicks KeepStats), not only at its tick; it lists the images,
// those that failed to open too, with whether they are lazy.
func TestStatsWrittenOnChange(t *testing.T) {
	f, ref, img, d, reqs := warmFixture(t)
	dir := t.TempDir()
	kick := make(chan struct{}, 1)
	f.OnChange(func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		KeepStats(ctx, dir, time.Hour, kick, func() Stats {
			s := CollectStats(f.store, f.Images())
			s.Open = append(s.Open, f.FailedImages()...)
			return s
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	if _, _, err := f.layer(context.Background(), labelsOf(t, ref, img, d)); err != nil {
		t.Fatal(err)
	}
	m, _ := img.Manifest()
	var s Stats
	testutil.WaitFor(t, 10*time.Second, "the stats file to list the image", func() bool {
		s, _ = ReadStats(dir)
		return len(s.Open) == 1
	})
	if o := s.Open[0]; o.Layers != len(m.Layers) || o.Lazy != len(m.Layers) || o.Fetch == nil || o.Fetch.Requests == 0 {
		t.Errorf("image listed as %+v; want all %d layers lazy, with its requests", o, len(m.Layers))
	}
	// A layer whose index the registry refuses is listed as downloaded whole for that reason.
	if o := imageStats(&Image{Ref: "r", Registry: f.Images()[0].Registry, Failed: map[string]error{
		"sha256:1": &fetch.Error{StatusCode: 401}, "sha256:2": errors.New("bad index"), "sha256:3": ErrNotLazy,
	}}); o.Fallbacks[ReasonAuth] != 1 || o.Fallbacks[ReasonIndex] != 1 || o.Plain != 1 || o.Layers != 3 {
		t.Errorf("failed layers listed as %+v", o)
	}
	// An image that fails to open is listed, not lazy, with why.
	img2, _ := lazyImageOf(t, map[string][]byte{"bin/other": []byte("other")})
	other := reqs.reg.Push(t, "other:v1", img2)
	d2, _ := img2.Digest()
	reqs.refuseManifests.Store(true)
	if _, _, err := f.layer(context.Background(), labelsOf(t, other, img2, d2)); err == nil {
		t.Fatal("the layer of an image whose manifest is refused opened")
	}
	testutil.WaitFor(t, 10*time.Second, "the stats file to list the failed image", func() bool {
		s, _ = ReadStats(dir)
		return len(s.Open) == 2
	})
	for _, o := range s.Open {
		switch {
		case o.Image == imageKeyOf(t, ref, d) && o.Err == "":
		case o.Image == imageKeyOf(t, other, d2) && strings.HasPrefix(o.Err, ReasonAuth+": "):
		default:
			t.Errorf("listed %+v", o)
		}
	}
}

func imageKeyOf(t *testing.T, ref string, d v1.Hash) string {
	t.Helper()
	k, err := imageKey(ref, d.String())
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestNotLazyImageListed: an image none of whose layers mounts lazily is closed with its
// last Prepare, and still listed by FailedImages (for `lazypull stats`), with why; the
// list is bounded, and an image that opens lazily leaves it.
func TestNotLazyImageListed(t *testing.T) {
	f, ref, img, d, reqs := warmFixture(t)
	reqs.refuseBlobs.Store(true) // the layer's index: 401
	labels := labelsOf(t, ref, img, d)
	if err := f.Mount(context.Background(), t.TempDir(), labels); !errors.Is(err, snapshot.ErrNotRemote) {
		t.Fatalf("Mount: %v; want the ordinary path", err)
	}
	got := f.FailedImages()
	if len(got) != 1 || got[0].Image != imageKeyOf(t, ref, d) || got[0].Lazy != 0 || got[0].Layers != 1 || got[0].Fallbacks[ReasonAuth] != 1 {
		t.Fatalf("listed %+v; want the image, its one layer downloaded whole (auth)", got)
	}
	if len(f.Images()) != 0 {
		t.Errorf("the image is still open")
	}
	reqs.refuseBlobs.Store(false)
	if err := f.Mount(context.Background(), t.TempDir(), labels); err != nil {
		t.Fatal(err)
	}
	if got := f.FailedImages(); len(got) != 0 {
		t.Errorf("listed %+v after the image mounted lazily", got)
	}
	var n notLazyImages
	for i := range maxNotLazy + 5 {
		n.add(ImageStats{Image: fmt.Sprint(i)})
	}
	if l := n.list(); len(l) != maxNotLazy || l[0].Image != "5" {
		t.Errorf("bounded list holds %d, oldest %q", len(l), l[0].Image)
	}
}
