package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/internal/daemon"
	"lazypull/internal/profile"
)

// profiledImage converts the python test image to a reference of its own (a profile
// pushed for it must not change what other tests fetch) and returns it with its manifest.
func (e *env) profiledImage(t *testing.T, tag string) (string, v1.Descriptor) {
	t.Helper()
	ref := fmt.Sprintf("%s/e2e/profile-%d:%s", e.registry, os.Getpid(), tag)
	e.convert(t, "oci:"+filepath.Join(e.images, "python")+":python", ref)
	return ref, remoteHead(t, ref)
}

const profileLine = "hello-profile"

// TestProfileRoundTripAndPrefetch records python's start with `lazypull profile`, finds
// the profile again through the registry (which has no referrers API: the tag schema),
// and mounts the image in a fresh store: the profiled bytes arrive in a handful of
// requests before python runs, and running python then fetches nothing more.
func TestProfileRoundTripAndPrefetch(t *testing.T) {
	e := setup(t)
	ref, subject := e.profiledImage(t, "lazy")
	script := fmt.Sprintf("import json, email; print(%q)", profileLine)

	// chroot, whatever this machine runs: TestProfileContainerd records through containerd.
	r := e.lazypull(t, "profile", "--plain-http", "--runtime", "chroot", "--until", profileLine, ref, "--", "python3", "-c", script)
	if r.code != 0 {
		t.Fatalf("lazypull profile: exit %d\n%s", r.code, r.stderr)
	}
	digest := strings.TrimSpace(r.stdout)
	if _, err := v1.NewHash(digest); err != nil {
		t.Fatalf("lazypull profile printed %q, not a digest\n%s", r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, profileLine) {
		t.Errorf("the workload's output was not passed on:\n%s", r.stderr)
	}

	// The registry (docker-registry 2.8) has no referrers API: the profile is in the index
	// tagged with the subject's digest (the tag schema).
	repo, _ := name.NewRepository(strings.SplitN(ref, ":lazy", 2)[0], name.Insecure)
	idx, err := remote.Index(repo.Tag(subject.Digest.Algorithm + "-" + subject.Digest.Hex))
	if err != nil {
		t.Fatalf("referrers tag schema index: %v", err)
	}
	im, _ := idx.IndexManifest()
	if len(im.Manifests) != 1 || im.Manifests[0].Digest.String() != digest || im.Manifests[0].ArtifactType != profile.ArtifactType {
		t.Errorf("tag schema index lists %+v; want the profile %s", im.Manifests, digest)
	} else if len(im.Manifests[0].Data) == 0 {
		t.Errorf("tag schema index does not carry the profile's manifest (data): a mount needs a round trip more to read it")
	}

	show := e.lazypull(t, "profile", "show", "--plain-http", ref)
	if show.code != 0 || !strings.Contains(show.stdout, digest) || !strings.Contains(show.stdout, "/usr/bin/python3") {
		t.Fatalf("profile show: exit %d\n%s\n%s", show.code, show.stdout, show.stderr)
	}
	if !slices.ContainsFunc(strings.Split(show.stdout, "\n"), func(l string) bool {
		return strings.HasPrefix(l, "pack ") && strings.Contains(l, "sha256:")
	}) {
		t.Errorf("profile show names no pack:\n%s", show.stdout)
	}
	// What containerd reads in the rootfs at create is in the profile too.
	for _, f := range []string{"/etc/passwd", "/etc/group"} {
		if !strings.Contains(show.stdout, " "+f+"\n") {
			t.Errorf("profile show lacks %s, which the runtime reads at create:\n%s", f, show.stdout)
		}
	}
	t.Logf("profile show:\n%s", firstLines(show.stdout, 12))

	storeDir := t.TempDir()
	start := time.Now()
	m := e.mount(t, ref, storeDir, "--prefetch-wait", "2m")
	s := stats(t, storeDir, start)
	if len(s.Prefetch) != 1 {
		t.Fatalf("stats list %d prefetches:\n%s", len(s.Prefetch), m.log)
	}
	p := s.Prefetch[0]
	t.Logf("prefetch: %+v; fetch: %+v; store: %d chunks fetched", p, *s.Fetch, s.Store.ChunksFetched)
	if !p.Done || p.Err != "" || p.Profile != digest || p.Files == 0 || p.Stale != 0 {
		t.Fatalf("prefetch %+v; want the profile %s done without error\n%s", p, digest, m.log)
	}
	// The referrers API (404 here) and the tag, asked at once: the tag's index carries the
	// profile, document and all.
	if p.LookupRequests != 2 {
		t.Errorf("finding and reading the profile took %d requests; want 2", p.LookupRequests)
	}
	// The pack `lazypull profile` pushed: the layers' indexes, the tar header runs of the
	// profiled files (and of the symlinks a start follows), each checked against its run
	// digest, and the profiled chunks, in one request.
	if !p.Pack || p.Requests != 1 {
		t.Errorf("the profiled %d bytes of %d files took %d requests (pack: %v); want the pack's one", p.Bytes, p.Files, p.Requests, p.Pack)
	}
	before := s.Store.ChunksFetched
	beforeReq := s.Fetch.Requests

	out := must(t, "chroot", m.dir, "python3", "-c", script)
	if strings.TrimSpace(out) != profileLine {
		t.Fatalf("python3 printed %q", out)
	}
	after := stats(t, storeDir, time.Now())
	if after.Store.ChunksFetched != before || after.Fetch.Requests != beforeReq {
		t.Errorf("running the profiled workload fetched %d more chunks in %d more requests; want none",
			after.Store.ChunksFetched-before, after.Fetch.Requests-beforeReq)
	}
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	return strings.Join(lines[:min(n, len(lines))], "\n")
}

// TestProfileCorruptRefused: a profile artifact whose document is not a profile is
// refused with a clear message, and the mount works without it.
func TestProfileCorruptRefused(t *testing.T) {
	e := setup(t)
	ref, subject := e.profiledImage(t, "corrupt")
	repo, _ := name.NewRepository(strings.SplitN(ref, ":corrupt", 2)[0], name.Insecure)
	doc := []byte(`{"subject": "not a digest", "files": 7}`)
	for _, b := range []struct {
		data []byte
		mt   types.MediaType
	}{{[]byte("{}"), profile.ArtifactType}, {doc, profile.MediaType}} {
		if err := remote.WriteLayer(repo, static.NewLayer(b.data, b.mt)); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := profile.Manifest(v1.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size}, doc, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	h, _, _ := v1.SHA256(bytes.NewReader(raw))
	if err := remote.Put(repo.Digest(h.String()), rawManifest{raw, types.OCIManifestSchema1}); err != nil {
		t.Fatal(err)
	}

	storeDir := t.TempDir()
	start := time.Now()
	m := e.mount(t, ref, storeDir, "--prefetch-wait", "1m")
	out := must(t, "chroot", m.dir, "python3", "-c", "print(1)")
	if strings.TrimSpace(out) != "1" {
		t.Fatalf("python3 printed %q", out)
	}
	s := stats(t, storeDir, start)
	if len(s.Prefetch) != 1 || s.Prefetch[0].Err == "" {
		t.Fatalf("prefetch of a corrupt profile: %+v\n%s", s.Prefetch, m.log)
	}
	log := m.log.String()
	if !strings.Contains(log, "prefetch failed; the image is served without it") || !strings.Contains(log, h.String()) || !strings.Contains(log, "not a profile document") {
		t.Errorf("the log does not say which profile was refused and why:\n%s", log)
	}
	var _ daemon.PrefetchStats = s.Prefetch[0]
}

// TestProfileContainerd records python's start through containerd (--runtime containerd):
// the workload runs as a runc container whose root is the recording overlay, keeps running
// after its ready line, and is killed; the profile is pushed and found, names what python
// read and what containerd and runc read to create the container (the user and group
// lookups), and nothing of the container is left in containerd.
func TestProfileContainerd(t *testing.T) {
	e := setup(t)
	ref := e.profileRepoImage(t, "profile-ctd")
	// flush: python's stdout is a pipe here, block-buffered; sleep: the workload must be
	// killed, not just waited for.
	script := fmt.Sprintf("import json, email; print(%q, flush=True); import time; time.sleep(600)", profileLine)

	// The workload must be stopped at its ready line, not at --duration: the log's
	// stopped="ready line seen" (checked below) says which, as no clock could on a busy
	// machine.
	r := e.lazypull(t, "profile", "--plain-http", "--runtime", "containerd", "--address", e.containerd,
		"--until", profileLine, "--duration", "3m", ref, "--", "python3", "-c", script)
	if r.code != 0 {
		t.Fatalf("lazypull profile: exit %d\n%s", r.code, r.stderr)
	}
	digest := strings.TrimSpace(r.stdout)
	if _, err := v1.NewHash(digest); err != nil {
		t.Fatalf("lazypull profile printed %q, not a digest\n%s", r.stdout, r.stderr)
	}
	t.Logf("lazypull profile:\n%s", r.stderr)
	for _, want := range []string{profileLine, "the workload runs in a containerd container", "stopped=\"ready line seen\""} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("lazypull profile's stderr lacks %q:\n%s", want, r.stderr)
		}
	}

	show := e.lazypull(t, "profile", "show", "--plain-http", ref)
	if show.code != 0 || !strings.Contains(show.stdout, digest) {
		t.Fatalf("profile show: exit %d\n%s\n%s", show.code, show.stdout, show.stderr)
	}
	t.Logf("profile show:\n%s", firstLines(show.stdout, 16))
	// python, its json package (compiled), and what containerd (the supplementary groups)
	// and runc (the user, at its init in the container) read in the rootfs.
	for _, f := range []string{"/usr/bin/python3", "/usr/lib/python3.11/json/", "/etc/passwd\n", "/etc/group\n"} {
		if !strings.Contains(show.stdout, " "+f) {
			t.Errorf("profile show lacks %s:\n%s", f, show.stdout)
		}
	}

	ctr := func(args ...string) string {
		return must(t, "ctr", append([]string{"--address", e.containerd, "--namespace", "lazypull-profile"}, args...)...)
	}
	if left := strings.TrimSpace(ctr("containers", "ls", "-q")); left != "" {
		t.Errorf("containers left in containerd: %s", left)
	}
	if left := strings.TrimSpace(ctr("tasks", "ls", "-q")); left != "" {
		t.Errorf("tasks left in containerd: %s", left)
	}
	// No snapshot was made: the container's root is the recording overlay.
	if left := strings.TrimSpace(ctr("snapshots", "ls")); strings.Count(left, "\n") > 0 {
		t.Errorf("snapshots left in containerd:\n%s", left)
	}
}

// TestProfileRuntimeDefault: without --runtime, containerd runs the workload when it
// answers at --address; a containerd that is not there is an error that names the socket and
// how to record chrooted instead, and nothing runs chrooted (the old auto fell back to it).
func TestProfileRuntimeDefault(t *testing.T) {
	e := setup(t)
	ref := e.profileRepoImage(t, "profile-default")
	script := fmt.Sprintf("print(%q)", profileLine)
	missing := filepath.Join(t.TempDir(), "containerd.sock")
	for _, tc := range []struct {
		address string
		code    int
		want    []string
	}{
		{e.containerd, 0, []string{"the workload runs in a containerd container", "--runtime containerd"}},
		{missing, 1, []string{"containerd at " + missing, "--runtime chroot records without it"}},
	} {
		r := e.lazypull(t, "profile", "--plain-http", "--no-push", "--address", tc.address, "--until", profileLine, ref, "--", "python3", "-c", script)
		if r.code != tc.code {
			t.Errorf("lazypull profile --address %s: exit %d, want %d\n%s", tc.address, r.code, tc.code, r.stderr)
		}
		for _, want := range tc.want {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("lazypull profile --address %s: stderr lacks %q\n%s", tc.address, want, r.stderr)
			}
		}
		if strings.Contains(r.stderr, "chrooted") {
			t.Errorf("lazypull profile --address %s ran the workload chrooted:\n%s", tc.address, r.stderr)
		}
	}
}
