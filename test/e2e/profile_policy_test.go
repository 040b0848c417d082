package e2e

import (
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/internal/daemon"
	"lazypull/internal/profile"
)

// pinFixture converts python to a repository of its own, records its profile (pinned),
// then pushes a newer copy of it (newer: what the referrers choose) and a profile of
// another image of the same repository (foreign), and returns the reference and the
// three digests.
func (e *env) pinFixture(t *testing.T, what string) (ref, pinned, newer, foreign string) {
	t.Helper()
	ref = e.profileRepoImage(t, what)
	pinned, doc := e.recordProfile(t, ref, fmt.Sprintf("import json, email; print(%q)", profileLine))
	r, subject := parseRef(t, ref), remoteHead(t, ref)
	p, err := profile.Parse(doc)
	if err != nil {
		t.Fatal(err)
	}
	push := func(subject v1.Descriptor, p *profile.Profile) string {
		b, err := p.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		d, err := profile.Push(nil, r.Context(), subject, b, nil)
		if err != nil {
			t.Fatal(err)
		}
		return d.Digest.String()
	}
	p.Created = p.Created.Add(time.Hour)
	newer = push(subject, p)

	other, _ := random.Image(1024, 1)
	if err := remote.Write(r.Context().Tag("other"), other); err != nil {
		t.Fatal(err)
	}
	od, _ := other.Digest()
	raw, _ := other.RawManifest()
	p.Subject = od.String()
	foreign = push(v1.Descriptor{MediaType: types.DockerManifestSchema2, Digest: od, Size: int64(len(raw))}, p)
	return ref, pinned, newer, foreign
}

// metricsOf scrapes the Prometheus metrics a process serves (its log names the address).
func metricsOf(t *testing.T, log string) string {
	t.Helper()
	m := regexp.MustCompile(`msg="serving metrics" addr=(\S+)`).FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("no metrics address in the log:\n%s", log)
	}
	resp, err := http.Get("http://" + m[1] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// checkChosen checks the log's one "profile chosen" line for digest, under policy.
func checkChosen(t *testing.T, log, digest, policy, source string) {
	t.Helper()
	var lines []string
	for l := range strings.Lines(log) {
		if strings.Contains(l, `msg="profile chosen"`) {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "profile="+digest) || !strings.Contains(lines[0], "policy="+policy) ||
		!strings.Contains(lines[0], "source="+source) {
		t.Errorf("\"profile chosen\" lines %q; want one naming %s, policy %s, source %s", lines, digest, policy, source)
	}
}

// TestProfilePinnedMount: `lazypull mount --profile` uses the pinned profile though a
// newer one refers to the image (which the default policy takes), and says so in its log,
// `lazypull stats` and its metrics; a pinned profile of another image is refused with a
// clear error and the image served without one; under policy pinned without a pin, and
// under off, the profile is not looked up.
func TestProfilePinnedMount(t *testing.T) {
	e := setup(t)
	ref, pinned, newer, foreign := e.pinFixture(t, "profile-pin-mount")

	store := t.TempDir()
	start := time.Now()
	m := e.mount(t, ref, store, "--prefetch-wait", "2m", "--profile-policy", "pinned", "--profile", pinned, "--metrics-addr", "127.0.0.1:0")
	_, p := settledPrefetch(t, store, start)
	if p.Profile != pinned || p.Source != daemon.SourcePin || p.Policy != daemon.PolicyPinned || p.Err != "" || p.Files == 0 {
		t.Fatalf("pinned: prefetch %+v; want the pinned profile %s\n%s", p, pinned, m.log)
	}
	checkChosen(t, m.log.String(), pinned, "pinned", "pin")
	t.Logf("pinned: %d look-up requests, %d prefetch requests (pack %v), %d files", p.LookupRequests, p.Requests, p.Pack, p.Files)
	st := e.lazypull(t, "stats", "--store", store)
	if want := fmt.Sprintf("profile of %s: %s (policy pinned, pin;", ref, pinned); st.code != 0 || !strings.Contains(st.stdout, want) {
		t.Errorf("lazypull stats: exit %d\n%s\nwant a line with %q", st.code, st.stdout, want)
	}
	metrics := metricsOf(t, m.log.String())
	for _, want := range []string{
		fmt.Sprintf(`lazypull_profile_images{profile=%q,source="pin"} 1`, pinned),
		`lazypull_profile_lookups_total{outcome="pinned",policy="pinned"} 1`,
	} {
		if !strings.Contains(metrics, want+"\n") {
			t.Errorf("metrics lack %s:\n%s", want, grepLines(metrics, "lazypull_profile"))
		}
	}
	m.stop(t)

	// The default policy: the newer referrer.
	store = t.TempDir()
	start = time.Now()
	m = e.mount(t, ref, store, "--prefetch-wait", "2m")
	if _, p = settledPrefetch(t, store, start); p.Profile != newer || p.Source != daemon.SourceReferrers || p.Candidates != 2 {
		t.Errorf("default policy: prefetch %+v; want the newer referrer %s of 2", p, newer)
	}
	t.Logf("referrers: %d look-up requests, %d prefetch requests (pack %v), %d files", p.LookupRequests, p.Requests, p.Pack, p.Files)
	m.stop(t)

	store = t.TempDir()
	start = time.Now()
	m = e.mount(t, ref, store, "--prefetch-wait", "2m", "--profile", foreign)
	_, p = settledPrefetch(t, store, start)
	if p.Profile != "" || !strings.Contains(p.Err, "does not refer to this image") || !strings.Contains(p.Err, foreign) {
		t.Errorf("pinned profile of another image: prefetch %+v; want it refused", p)
	}
	if !strings.Contains(m.log.String(), "does not refer to this image") {
		t.Errorf("the refusal is not in the log:\n%s", m.log)
	}
	if out := must(t, "cat", filepath.Join(m.dir, "etc/passwd")); !strings.Contains(out, "root:") {
		t.Errorf("the image is not served after the refusal: %q", out)
	}
	m.stop(t)

	for _, policy := range []string{"pinned", "off"} {
		store = t.TempDir()
		start = time.Now()
		m = e.mount(t, ref, store, "--prefetch-wait", "2m", "--profile-policy", policy)
		if _, p = settledPrefetch(t, store, start); p.Profile != "" || p.LookupRequests != 0 || p.Err != "" {
			t.Errorf("policy %s without a pin: prefetch %+v; want no profile, no look-up request", policy, p)
		}
		m.stop(t)
	}
}

// TestProfilePinnedSnapshotter: `lazypull pull --profile` through containerd, to the
// snapshotter under profile_policy = "pinned": the pinned profile is used though a newer
// one refers to the image, and the snapshotter's log, stats and metrics say which.
func TestProfilePinnedSnapshotter(t *testing.T) {
	e := setup(t)
	ref, pinned, _, _ := e.pinFixture(t, "profile-pin-sn")
	s := e.startSnapshotterWith(t, "prefetch_wait = \"2m\"\nprofile_policy = \"pinned\"\nmetrics_addr = \"127.0.0.1:0\"\n")
	const ns = "lazypull-e2e-pin"
	start := time.Now()
	must(t, e.bin, "pull", "--address", filepath.Join(s.containerd, "containerd.sock"), "--namespace", ns, "--plain-http", "--profile", pinned, ref)
	_, p := settledPrefetch(t, s.store, start)
	if p.Profile != pinned || p.Source != daemon.SourcePin || p.Policy != daemon.PolicyPinned || p.Err != "" || p.Files == 0 {
		t.Fatalf("prefetch %+v; want the pinned profile %s\n%s", p, pinned, s.log)
	}
	checkChosen(t, s.log.String(), pinned, "pinned", "pin")
	metrics := metricsOf(t, s.log.String())
	if want := fmt.Sprintf(`lazypull_profile_images{profile=%q,source="pin"} 1`, pinned); !strings.Contains(metrics, want+"\n") {
		t.Errorf("metrics lack %s:\n%s", want, grepLines(metrics, "lazypull_profile"))
	}
	st := e.lazypull(t, "stats", "--store", s.store)
	if !strings.Contains(st.stdout, pinned+" (policy pinned, pin;") {
		t.Errorf("lazypull stats: exit %d\n%s\nwant the pinned profile %s", st.code, st.stdout, pinned)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for l := range strings.Lines(s) {
		if strings.Contains(l, sub) {
			out = append(out, strings.TrimRight(l, "\n"))
		}
	}
	return strings.Join(out, "\n")
}
