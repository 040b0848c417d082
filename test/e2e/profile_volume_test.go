package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/internal/profile"
)

// volumeNamespace is the containerd namespace of TestProfileVolume's recordings: the runner
// image is unpacked there, which TestProfileContainerd's namespace must not have.
const volumeNamespace = "lazypull-profile-volume"

// TestProfileVolume records the profile of a data image, which has no program: a model
// image (one file of weights) is mounted read-only at /model in a container of the plain
// python image (the runner, unpacked by containerd), whose python reads a few ranges of the
// weights. The profile is the model's and lists those ranges of its file; a mount of the
// model in a fresh store (prefetch on) has them in the store before they are read: reading
// them fetches nothing.
func TestProfileVolume(t *testing.T) {
	e := setup(t)
	const size, rangeMiB = 64, 1
	model, weights := e.modelImage(t, "model-volume", size)
	subject := remoteHead(t, model)
	offs := scatteredRanges(4, rangeMiB, size)
	want := rangeSums(t, weights, offs, rangeMiB)

	runner := fmt.Sprintf("%s/e2e/runner-%d:plain", e.registry, os.Getpid())
	e.push(t, filepath.Join(e.images, "python"), "python", runner)
	must(t, "ctr", "--address", e.containerd, "--namespace", volumeNamespace, "image", "pull", "--plain-http", runner)

	out := filepath.Join(t.TempDir(), "profile.json")
	args := []string{"profile", "--plain-http", "--address", e.containerd, "--namespace", volumeNamespace,
		"--volume", "/model", "--runner-image", runner, "--duration", "3m", "--output", out,
		model, "--", "python3", "-c", readRangesScript, "/model/" + modelPath, strconv.Itoa(rangeMiB)}
	for _, off := range offs {
		args = append(args, strconv.Itoa(off))
	}
	r := e.lazypull(t, args...)
	if r.code != 0 {
		t.Fatalf("lazypull profile --volume: exit %d\n%s", r.code, r.stderr)
	}
	digest := strings.TrimSpace(r.stdout)
	if _, err := v1.NewHash(digest); err != nil {
		t.Fatalf("lazypull profile printed %q, not a digest\n%s", r.stdout, r.stderr)
	}
	for _, sum := range want {
		if !strings.Contains(r.stderr, sum) {
			t.Errorf("the runner's output lacks the sha256 %s of a range of the weights:\n%s", sum, r.stderr)
		}
	}
	if !strings.Contains(r.stderr, `stopped="workload exited"`) {
		t.Errorf("the recording did not stop at the runner's exit:\n%s", r.stderr)
	}

	doc, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	p, err := profile.Parse(doc)
	if err != nil {
		t.Fatalf("the profile written: %v", err)
	}
	checkVolumeProfile(t, p, subject, offs, rangeMiB)

	// Nothing of the runner's container is left: no container, no task, no snapshot of its
	// own (the runner image's unpacked layers stay, as after any pull).
	ctr := func(args ...string) string {
		return must(t, "ctr", append([]string{"--address", e.containerd, "--namespace", volumeNamespace}, args...)...)
	}
	if left := strings.TrimSpace(ctr("containers", "ls", "-q")); left != "" {
		t.Errorf("containers left in containerd: %s", left)
	}
	if left := strings.TrimSpace(ctr("tasks", "ls", "-q")); left != "" {
		t.Errorf("tasks left in containerd: %s", left)
	}
	if left := ctr("snapshots", "ls"); strings.Contains(left, "lazypull-profile-runner-") {
		t.Errorf("the runner's snapshot is left in containerd:\n%s", left)
	}

	// The mount finds the profile and prefetches the profiled ranges: reading them as the
	// runner did (one pread each) then fetches nothing.
	storeDir := t.TempDir()
	start := time.Now()
	m := e.mount(t, model, storeDir, "--prefetch-wait", "2m")
	s, pf := settledPrefetch(t, storeDir, start)
	if pf.Err != "" || pf.Profile != digest || pf.Files != 1 || pf.Bytes < int64(len(offs)*rangeMiB)<<20 {
		t.Fatalf("prefetch %+v; want the profile %s, its file and at least the %d ranges of %d MiB\n%s", pf, digest, len(offs), rangeMiB, m.log)
	}
	if !pf.Pack || pf.Requests != 1 {
		t.Errorf("the profiled %d bytes took %d requests (pack: %v); want the pack's one", pf.Bytes, pf.Requests, pf.Pack)
	}
	t.Logf("prefetch: %+v; fetch: %+v; store: %d chunks fetched", pf, *s.Fetch, s.Store.ChunksFetched)
	before, beforeReq := s.Store.ChunksFetched, s.Fetch.Requests
	if got := preadSums(t, filepath.Join(m.dir, modelPath), offs, rangeMiB); !slices.Equal(got, want) {
		t.Fatalf("the mount read other bytes than the model's:\n%v\nwant\n%v", got, want)
	}
	after := stats(t, storeDir, time.Now())
	if after.Store.ChunksFetched != before || after.Fetch.Requests != beforeReq {
		t.Errorf("reading the profiled ranges fetched %d more chunks in %d more requests; want none: they were prefetched",
			after.Store.ChunksFetched-before, after.Fetch.Requests-beforeReq)
	}
}

// checkVolumeProfile checks that p is the profile of subject (the model image, its one
// layer) and lists its weights file, whose ranges cover each of offs (MiB, rangeMiB long)
// and not much more.
func checkVolumeProfile(t *testing.T, p *profile.Profile, subject v1.Descriptor, offs []int, rangeMiB int) {
	t.Helper()
	if p.Subject != subject.Digest.String() || len(p.Layers) != 1 {
		t.Fatalf("profile of %s with %d layers; want the model %s, one layer", p.Subject, len(p.Layers), subject.Digest)
	}
	i := slices.IndexFunc(p.Files, func(f profile.File) bool { return strings.TrimPrefix(f.Path, "/") == modelPath })
	if i < 0 {
		t.Fatalf("the profile lacks %s: %+v", modelPath, p.Files)
	}
	f := p.Files[i]
	var listed int64
	for _, rg := range f.Ranges {
		listed += rg.Len
	}
	for _, off := range offs {
		lo, hi := int64(off)<<20, int64(off+rangeMiB)<<20
		covered := int64(0)
		for _, rg := range f.Ranges {
			covered += max(0, min(hi, rg.End())-max(lo, rg.Off))
		}
		if covered != hi-lo {
			t.Errorf("the profile covers %d of the %d bytes read at %d MiB: %v", covered, hi-lo, off, f.Ranges)
		}
	}
	read := int64(len(offs)*rangeMiB) << 20
	if listed > 2*read {
		t.Errorf("the profile lists %d bytes of %s; %d were read", listed, modelPath, read)
	}
	t.Logf("profile of %s: %d ranges, %d bytes", modelPath, len(f.Ranges), listed)
}

// preadSums returns the sha256 of each range (offsets in MiB, rangeMiB long) of the file,
// each read with one pread, as readRangesScript reads them.
func preadSums(t *testing.T, path string, offs []int, rangeMiB int) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, rangeMiB<<20)
	sums := make([]string, len(offs))
	for i, off := range offs {
		if _, err := f.ReadAt(buf, int64(off)<<20); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(buf)
		sums[i] = hex.EncodeToString(sum[:])
	}
	return sums
}
