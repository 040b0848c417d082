package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus"

	"lazypull/internal/profile"
	"lazypull/internal/store"
	"lazypull/internal/testutil"
)

// pushed pushes a profile of path, created at created, for subject in repo and returns
// its manifest's digest.
func pushed(t *testing.T, repo name.Repository, subject v1.Descriptor, created time.Time, path string) v1.Hash {
	t.Helper()
	d, err := profile.Push(nil, repo, subject, testProfile(subject.Digest, created, path), nil)
	if err != nil {
		t.Fatal(err)
	}
	return d.Digest
}

// TestChooseProfilePolicies: under policy off, and under pinned without a pin, no request
// reaches the registry, however many profiles refer to the image; a pinned profile is
// used, under pinned and under referrers, even when a newer one refers to the image, and
// the referrers are not asked for it.
func TestChooseProfilePolicies(t *testing.T) {
	for _, api := range []bool{true, false} {
		t.Run(map[bool]string{true: "referrers API", false: "tag schema"}[api], func(t *testing.T) {
			repo, subject := subjectImage(t, api)
			t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
			old := pushed(t, repo, subject, t0, "old")
			newer := pushed(t, repo, subject, t0.Add(time.Hour), "new")
			ctx := context.Background()

			for _, c := range []ProfileChoice{{Policy: PolicyOff}, {Policy: PolicyOff, Pin: old}, {Policy: PolicyPinned},
				{Policy: PolicyPinned, Pins: map[v1.Hash]v1.Hash{newer: old}}} { // a pin for another image
				reg := registryOf(t, repo)
				f, err := ChooseProfile(ctx, reg, subject.Digest, c)
				if err != nil || f.Profile != nil || f.Why == "" {
					t.Errorf("%+v: %+v, %v; want no profile, and why", c, f, err)
				}
				if n := reg.Stats().Requests; n != 0 {
					t.Errorf("%+v: %d requests reached the registry; want none", c, n)
				}
			}

			for _, c := range []ProfileChoice{{Policy: PolicyPinned, Pin: old}, {Policy: PolicyReferrers, Pin: old},
				{Policy: PolicyPinned, Pins: map[v1.Hash]v1.Hash{subject.Digest: old}}} {
				reg := registryOf(t, repo)
				f, err := ChooseProfile(ctx, reg, subject.Digest, c)
				if err != nil || f.Profile == nil || f.Desc.Digest != old || f.Profile.Files[0].Path != "old" || f.Source != SourcePin {
					t.Fatalf("%+v: %+v, %v; want the pinned profile %s", c, f.Desc, err, old)
				}
				if n := reg.Stats().Requests; n != 1 {
					t.Errorf("%+v: %d requests; want 1 (the pinned manifest, its document in it), no referrers", c, n)
				}
			}

			f, err := ChooseProfile(ctx, registryOf(t, repo), subject.Digest, ProfileChoice{})
			if err != nil || f.Desc.Digest != newer || f.Source != SourceReferrers || f.Candidates != 2 {
				t.Fatalf("default policy: %+v, %v; want the newest referrer %s of 2", f.Desc, err, newer)
			}
		})
	}
}

// TestPinnedProfileOfAnotherImage: a pinned profile whose subject is another image (in the
// same repository) is refused with an error naming both; so is one the referrers tag
// schema's index lists for the image, its manifest embedded, while it refers to another
// (the index is a tag: anyone with push rights can write it).
func TestPinnedProfileOfAnotherImage(t *testing.T) {
	repo, subject := subjectImage(t, false)
	other, _ := random.Image(512, 1)
	testutil.Push(t, repo.Tag("other").String(), other)
	od, _ := other.Digest()
	raw, _ := other.RawManifest()
	otherDesc := v1.Descriptor{MediaType: subject.MediaType, Digest: od, Size: int64(len(raw))}
	foreign := pushed(t, repo, otherDesc, time.Now(), "foreign")

	_, err := ChooseProfile(context.Background(), registryOf(t, repo), subject.Digest, ProfileChoice{Policy: PolicyPinned, Pin: foreign})
	if !errors.Is(err, ErrProfileSubject) || !strings.Contains(err.Error(), od.String()) || !strings.Contains(err.Error(), subject.Digest.String()) ||
		!strings.Contains(err.Error(), foreign.String()) {
		t.Fatalf("pinned profile of another image: %v; want ErrProfileSubject naming the profile, its subject and the image", err)
	}

	// The other image's tag schema index, copied to this image's tag.
	otherTag := repo.Tag(od.Algorithm + "-" + od.Hex)
	got, err := remote.Get(otherTag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Put(repo.Tag(subject.Digest.Algorithm+"-"+subject.Digest.Hex), rawIndex(got.Manifest)); err != nil {
		t.Fatal(err)
	}
	f, err := ChooseProfile(context.Background(), registryOf(t, repo), subject.Digest, ProfileChoice{})
	if !errors.Is(err, ErrProfileSubject) || f.Profile != nil {
		t.Fatalf("a referrer of another image listed for this one: %+v, %v; want ErrProfileSubject", f.Desc, err)
	}
}

// TestChooseReferrerDeterministic: among profiles of equal creation times, the same one is
// chosen whatever order the referrers list them in (the tag schema's index is written by
// whoever pushes: here in one order, then the other); one that claims a time far ahead
// does not win over an honest newer one, pushed before or after it.
func TestChooseReferrerDeterministic(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	repo, subject := subjectImage(t, false)
	pushed(t, repo, subject, t0, "a")
	pushed(t, repo, subject, t0, "b")
	tag := repo.Tag(subject.Digest.Algorithm + "-" + subject.Digest.Hex)
	got, err := remote.Get(tag)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(got.Manifest))
	if err != nil || len(idx.Manifests) != 2 {
		t.Fatalf("tag schema index: %v, %v", idx, err)
	}
	var chosen []v1.Hash
	for range 2 {
		slices.Reverse(idx.Manifests)
		b, _ := json.Marshal(idx)
		if err := remote.Put(tag, rawIndex(b)); err != nil {
			t.Fatal(err)
		}
		f, err := ChooseProfile(context.Background(), registryOf(t, repo), subject.Digest, ProfileChoice{})
		if err != nil || f.Profile == nil || f.Candidates != 2 || !strings.Contains(f.Why, "greatest digest") {
			t.Fatalf("listed %s, %s: %+v, %v", idx.Manifests[0].Digest, idx.Manifests[1].Digest, f, err)
		}
		chosen = append(chosen, f.Desc.Digest)
	}
	if chosen[0] != chosen[1] {
		t.Errorf("profiles of equal times listed in either order: chose %s, then %s; want the same", chosen[0], chosen[1])
	}

	// A claim of the year 2999, pushed before and after an honest recording.
	for _, future := range []bool{false, true} {
		repo, subject := subjectImage(t, false)
		var honest v1.Hash
		if future {
			pushed(t, repo, subject, time.Date(2999, 1, 1, 0, 0, 0, 0, time.UTC), "future")
		}
		honest = pushed(t, repo, subject, time.Now().Add(-time.Minute), "honest")
		if !future {
			pushed(t, repo, subject, time.Date(2999, 1, 1, 0, 0, 0, 0, time.UTC), "future")
		}
		f, err := ChooseProfile(context.Background(), registryOf(t, repo), subject.Digest, ProfileChoice{})
		if err != nil || f.Desc.Digest != honest {
			t.Errorf("future claim pushed first %v: chose %s (%v); want the honest %s", future, f.Desc.Digest, err, honest)
		}
	}
}

// TestChooseReferrerOrder: chooseReferrer picks the same descriptor from every order of
// the same list.
func TestChooseReferrerOrder(t *testing.T) {
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	d := func(hex byte, created string) v1.Descriptor {
		return v1.Descriptor{Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat(string(hex), 64)},
			Annotations: map[string]string{profile.AnnotationCreated: created}}
	}
	refs := []v1.Descriptor{
		d('1', "2026-05-01T00:00:00Z"), d('2', "2026-05-01T00:00:00Z"), d('3', "2026-04-01T00:00:00Z"),
		d('4', "9999-01-01T00:00:00Z"), d('5', "not a time"), d('6', ""),
	}
	want, _ := chooseReferrer(refs, now)
	if want.Digest.Hex[0] != '2' {
		t.Fatalf("chose %s; want the greatest digest of the newest plausible time (2...)", want.Digest)
	}
	perm := slices.Clone(refs)
	for i := range 200 {
		// A deterministic shuffle per round.
		for j := len(perm) - 1; j > 0; j-- {
			k := (i*31 + j*17) % (j + 1)
			perm[j], perm[k] = perm[k], perm[j]
		}
		if got, _ := chooseReferrer(perm, now); got.Digest != want.Digest {
			t.Fatalf("order %v: chose %s; want %s", perm, got.Digest, want.Digest)
		}
	}
}

// TestProfileChoiceReported: the profile an image used (pinned, and found) is in the
// image's one "profile chosen" log line, its prefetch stats and `lazypull stats` (the
// stats file), and the metrics: the look-up counted by policy and outcome, and the
// digest in lazypull_profile_images while the image is open; a pin of another image's
// profile is counted refused.
func TestProfileChoiceReported(t *testing.T) {
	ref, _, p, pack, subject, _ := packFixture(t)
	r, _ := name.ParseReference(ref)
	doc, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	pinnedDesc, err := profile.Push(nil, r.Context(), subject, doc, pack)
	if err != nil {
		t.Fatal(err)
	}
	later := *p
	later.Created = p.Created.Add(time.Hour)
	pushProfile(t, ref, subject, &later, nil) // newer: the referrers' choice

	metrics := NewProfileMetrics(nil)
	var open []*Image
	metrics.SetImages(func() []*Image { return open })
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	run := func(c ProfileChoice) (*Image, PrefetchStats, string) {
		t.Helper()
		var logs testutil.LogBuffer // the prefetch logs from its goroutines
		im, err := openImage(context.Background(), st, ref, OpenOptions{Profile: &c, Client: testClient(t), partial: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(im.Close)
		im.waitKept()
		im.Prefetch(context.Background(), PrefetchOptions{Wait: time.Minute, Log: slog.New(slog.NewJSONHandler(&logs, nil)), Metrics: metrics})
		ps, _ := im.PrefetchStats()
		if !ps.Done {
			t.Fatalf("prefetch not done: %+v", ps)
		}
		open = append(open, im)
		return im, ps, logs.String()
	}

	_, ps, logs := run(ProfileChoice{Policy: PolicyPinned, Pin: pinnedDesc.Digest})
	if ps.Profile != pinnedDesc.Digest.String() || ps.Source != SourcePin || ps.Policy != PolicyPinned || ps.Err != "" {
		t.Errorf("pinned: prefetch stats %+v; want the pinned profile %s", ps, pinnedDesc.Digest)
	}
	checkChosenLine(t, logs, pinnedDesc.Digest.String(), "pinned", OutcomePinned)

	_, ps, logs = run(ProfileChoice{Policy: PolicyReferrers})
	var newest string
	if ps.Source != SourceReferrers || ps.Candidates != 2 || ps.Profile == "" || ps.Profile == pinnedDesc.Digest.String() {
		t.Errorf("referrers: prefetch stats %+v; want the newer referrer of 2", ps)
	}
	newest = ps.Profile
	checkChosenLine(t, logs, newest, "referrers", OutcomeReferrer)

	_, ps, _ = run(ProfileChoice{Policy: PolicyPinned, Pin: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0", 64)}})
	if ps.Err == "" || ps.Profile != "" {
		t.Errorf("pin of a missing profile: %+v; want an error and no profile", ps)
	}

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(metrics.Collectors()...)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var series []string
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			s := mf.GetName() + "{"
			for _, l := range m.GetLabel() {
				s += l.GetName() + "=" + l.GetValue() + ","
			}
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			series = append(series, fmt.Sprintf("%s} %v", s, v))
		}
	}
	slices.Sort(series)
	want := []string{
		"lazypull_profile_images{profile=" + newest + ",source=referrers,} 1",
		"lazypull_profile_images{profile=" + pinnedDesc.Digest.String() + ",source=pin,} 1",
		"lazypull_profile_lookups_total{outcome=error,policy=pinned,} 1",
		"lazypull_profile_lookups_total{outcome=pinned,policy=pinned,} 1",
		"lazypull_profile_lookups_total{outcome=referrer,policy=referrers,} 1",
	}
	slices.Sort(want)
	if !slices.Equal(series, want) {
		t.Errorf("metrics:\n%s\nwant:\n%s", strings.Join(series, "\n"), strings.Join(want, "\n"))
	}

	// What `lazypull stats` reads.
	dir := t.TempDir()
	if err := WriteStats(dir, CollectStats(st, open)); err != nil {
		t.Fatal(err)
	}
	s, err := ReadStats(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range s.Prefetch {
		got = append(got, p.Profile+" "+p.Source)
	}
	if !slices.Equal(got, []string{pinnedDesc.Digest.String() + " pin", newest + " referrers", " pin"}) {
		t.Errorf("stats file: profiles %q", got)
	}
}

// checkChosenLine checks that logs hold one "profile chosen" line, naming the profile,
// the policy and the outcome.
func checkChosenLine(t *testing.T, logs, profile, policy, outcome string) {
	t.Helper()
	n := 0
	for line := range strings.Lines(logs) {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil || rec["msg"] != "profile chosen" {
			continue
		}
		n++
		if rec["profile"] != profile || rec["policy"] != policy || rec["outcome"] != outcome || rec["why"] == "" {
			t.Errorf("profile chosen: %s; want profile %s, policy %s, outcome %s, and why", line, profile, policy, outcome)
		}
	}
	if n != 1 {
		t.Errorf("%d \"profile chosen\" lines; want 1:\n%s", n, logs)
	}
}

// snapshotterPinFixture is warmFixture with prefetch under choice, and two profiles of the
// image pushed: old, then a newer one (the referrers' choice).
func snapshotterPinFixture(t *testing.T, choice ProfileChoice) (f *SnapshotFS, ref string, img v1.Image, d, old, newer v1.Hash, reqs *requestLog) {
	t.Helper()
	f, ref, img, d, reqs = warmFixture(t)
	f.SetPrefetch(PrefetchOptions{Log: slog.New(slog.DiscardHandler)})
	r, _ := name.ParseReference(ref)
	raw, _ := img.RawManifest()
	subject := v1.Descriptor{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: d, Size: int64(len(raw))}
	t0 := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	old = pushed(t, r.Context(), subject, t0, "old")
	newer = pushed(t, r.Context(), subject, t0.Add(time.Minute), "new")
	if choice.Pins != nil {
		choice.Pins = map[v1.Hash]v1.Hash{d: old}
	}
	f.SetProfileChoice(choice)
	reqs.reset()
	return f, ref, img, d, old, newer, reqs
}

// prefetched opens the layer the labels name, as a Prepare does, and returns its image's
// prefetch stats once the prefetch is done.
func prefetched(t *testing.T, f *SnapshotFS, labels map[string]string) (*Image, PrefetchStats) {
	t.Helper()
	_, im, err := f.layer(context.Background(), labels)
	if err != nil {
		t.Fatal(err)
	}
	im.WaitPrefetch(context.Background(), time.Minute, nil)
	ps, _ := im.PrefetchStats()
	if !ps.Done {
		t.Fatalf("prefetch not done: %+v", ps)
	}
	return im, ps
}

// TestSnapshotterProfilePin: under the snapshotter's pinned policy, the profile a pull
// pinned (its layers' lazypull.profile label, and its warm request) is used though a
// newer one refers to the image, and an image pulled without a pin gets none, without a
// look-up request; the label counts only beside lazypull's own labels, not beside CRI's
// alone (where it comes from the image's manifest); the node's pins by image digest
// serve CRI's pulls.
func TestSnapshotterProfilePin(t *testing.T) {
	f, ref, img, d, old, _, reqs := snapshotterPinFixture(t, ProfileChoice{Policy: PolicyPinned})
	labels := labelsOf(t, ref, img, d)
	unpinned := maps.Clone(labels)
	labels[LabelProfile] = old.String()
	raw, _ := img.RawManifest()
	if err := f.Warm(context.Background(), ref, d.String(), "", raw, old.String()); err != nil {
		t.Fatal(err)
	}
	im, ps := prefetched(t, f, labels)
	if ps.Profile != old.String() || ps.Source != SourcePin || ps.Policy != PolicyPinned {
		t.Errorf("pinned by the pull: %+v; want the pinned profile %s", ps, old)
	}
	if got := f.Images(); len(got) != 1 || got[0] != im {
		t.Errorf("%d images open; want the warm one, which the Prepare joined", len(got))
	}
	if n := reqs.count("GET referrers") + reqs.count("GET referrers-tag"); n != 0 {
		t.Errorf("%d referrers requests for a pinned profile", n)
	}

	reqs.reset()
	if _, ps = prefetched(t, f, unpinned); ps.Profile != "" || ps.LookupRequests != 0 || ps.Why == "" {
		t.Errorf("pulled without a pin under policy pinned: %+v; want no profile, no look-up", ps)
	}
	if n := reqs.count("GET referrers") + reqs.count("GET referrers-tag"); n != 0 {
		t.Errorf("%d referrers requests under policy pinned without a pin; want none", n)
	}

	layer := labels[LabelLayerDigest]
	cri := map[string]string{LabelCRIImageRef: ref, LabelCRILayerDigest: layer, LabelProfile: old.String()}
	if _, ps = prefetched(t, f, cri); ps.Profile != "" {
		t.Errorf("CRI labels and a lazypull.profile annotation of the image's own: %+v; want it ignored", ps)
	}
	if _, err := pinOf(map[string]string{LabelImageRef: ref, LabelProfile: "sha256:x"}); err == nil {
		t.Errorf("a malformed lazypull.profile label was taken")
	}

	f, ref, img, d, old, _, _ = snapshotterPinFixture(t, ProfileChoice{Policy: PolicyPinned, Pins: map[v1.Hash]v1.Hash{}})
	layer = labelsOf(t, ref, img, d)[LabelLayerDigest]
	if _, ps = prefetched(t, f, map[string]string{LabelCRIImageRef: ref, LabelCRILayerDigest: layer}); ps.Profile != old.String() || ps.Source != SourcePin {
		t.Errorf("CRI pull of an image the node pins: %+v; want the node's pin %s", ps, old)
	}

	// Policy off: no look-up request, pinned or not.
	f, ref, img, d, old, _, reqs = snapshotterPinFixture(t, ProfileChoice{Policy: PolicyOff})
	labels = labelsOf(t, ref, img, d)
	for _, l := range []map[string]string{maps.Clone(labels), labels} {
		labels[LabelProfile] = old.String() // the second time
		if _, ps = prefetched(t, f, l); ps.Profile != "" || ps.Policy != PolicyOff || ps.LookupRequests != 0 {
			t.Errorf("policy off: %+v; want no profile, no look-up", ps)
		}
	}
	if n := reqs.count("GET referrers") + reqs.count("GET referrers-tag") + reqs.count("GET manifests"); n != 1 {
		t.Errorf("policy off: %d referrers and manifest requests; want the image manifest's only", n)
	}
}
