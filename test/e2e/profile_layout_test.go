package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/internal/daemon"
	"lazypull/internal/profile"
)

// profileRepoImage converts the python test image into a repository of its own (named
// after what): profiles pushed there refer to the same manifest digest as other tests'
// conversions, and must not be found by them.
func (e *env) profileRepoImage(t *testing.T, what string) string {
	t.Helper()
	ref := fmt.Sprintf("%s/e2e/%s-%d:lazy", e.registry, what, os.Getpid())
	e.convert(t, "oci:"+filepath.Join(e.images, "python")+":python", ref)
	return ref
}

// recordProfile runs `lazypull profile` of ref with script under python3, and returns
// the profile's digest (pushed beside ref) and its document (--output).
func (e *env) recordProfile(t *testing.T, ref, script string, flags ...string) (string, []byte) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "profile.json")
	args := append([]string{"profile", "--plain-http", "--runtime", "chroot", "--until", profileLine, "--output", out}, flags...)
	r := e.lazypull(t, append(args, ref, "--", "python3", "-c", script)...)
	if r.code != 0 {
		t.Fatalf("lazypull profile: exit %d\n%s", r.code, r.stderr)
	}
	digest := strings.TrimSpace(r.stdout)
	if _, err := v1.NewHash(digest); err != nil {
		t.Fatalf("lazypull profile printed %q, not a digest\n%s", r.stdout, r.stderr)
	}
	doc, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return digest, doc
}

// settledPrefetch waits for stats written after since whose prefetch is done, and
// returns them.
func settledPrefetch(t *testing.T, storeDir string, since time.Time) (daemon.Stats, daemon.PrefetchStats) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		s := stats(t, storeDir, since)
		if len(s.Prefetch) == 1 && s.Prefetch[0].Done {
			return s, s.Prefetch[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no finished prefetch in the stats after 2 minutes: %+v", s.Prefetch)
		}
		since = s.Written
	}
}

// TestProfileSnapshotterPrefetch is TestProfileRoundTripAndPrefetch through containerd:
// the snapshotter (prefetch_wait in its config) fetches the profiled bytes in a handful of
// requests while `lazypull pull` prepares the layers, and neither creating the container
// nor running the profiled workload in it fetches anything more.
func TestProfileSnapshotterPrefetch(t *testing.T) {
	e := setup(t)
	ref := e.profileRepoImage(t, "profile-sn")
	script := fmt.Sprintf("import json, email; print(%q)", profileLine)
	digest, _ := e.recordProfile(t, ref, script)

	s := e.startSnapshotterWith(t, "prefetch_wait = \"2m\"\n")
	const ns = "lazypull-e2e-profile"
	start := time.Now()
	must(t, e.bin, "pull", "--address", filepath.Join(s.containerd, "containerd.sock"), "--namespace", ns, "--plain-http", ref)
	st, p := settledPrefetch(t, s.store, start)
	t.Logf("prefetch: %+v; fetch: %+v; store: %d chunks fetched", p, *st.Fetch, st.Store.ChunksFetched)
	if p.Err != "" || p.Profile != digest || p.Files == 0 || p.Stale != 0 {
		t.Fatalf("prefetch %+v; want the profile %s done without error\n%s", p, digest, s.log)
	}
	// The pack: the layers' indexes, the tar header runs of the profiled files (and of the
	// symlinks a start follows), each checked against its run digest, and the profiled
	// chunks, in one request.
	if !p.Pack || p.Requests != 1 {
		t.Errorf("the profiled %d bytes of %d files took %d requests (pack: %v); want the pack's one", p.Bytes, p.Files, p.Requests, p.Pack)
	}
	if !strings.Contains(s.log.String(), "prefetched the profile") {
		t.Errorf("the snapshotter's log does not report the prefetch:\n%s", s.log)
	}

	// Create, then start, each checked: containerd reads the image's /etc/passwd and
	// /etc/group to create the container, which lazypull profile records too.
	id := fmt.Sprintf("profile-%d", os.Getpid())
	s.ctr(t, ns, "container", "create", "--snapshotter", "lazypull", ref, id, "--", "python3", "-c", script)
	t.Cleanup(func() {
		run(t, "ctr", "--address", filepath.Join(s.containerd, "containerd.sock"), "--namespace", ns, "container", "rm", id)
	})
	created := stats(t, s.store, time.Now())
	if n, r := created.Store.ChunksFetched-st.Store.ChunksFetched, created.Fetch.Requests-st.Fetch.Requests; n != 0 || r != 0 {
		t.Errorf("container create fetched %d chunks in %d requests after the prefetch; want none", n, r)
	}
	out := s.ctr(t, ns, "task", "start", id)
	if strings.TrimSpace(out) != profileLine {
		t.Fatalf("container printed %q, want %q", out, profileLine)
	}
	after := stats(t, s.store, time.Now())
	if after.Store.ChunksFetched != created.Store.ChunksFetched || after.Fetch.Requests != created.Fetch.Requests {
		t.Errorf("running the profiled workload in the container fetched %d more chunks in %d more requests; want none",
			after.Store.ChunksFetched-created.Store.ChunksFetched, after.Fetch.Requests-created.Fetch.Requests)
	}
}

// heavyScript imports much of python's standard library: a start that reads a few hundred
// files spread over the layer, more than one multi-range request takes.
var heavyScript = fmt.Sprintf("import json, email.mime.text, http.client, xml.dom.minidom, asyncio, decimal, argparse, logging.handlers, "+
	"unittest, sqlite3, csv, zipfile, tarfile, difflib, pydoc, urllib.request, concurrent.futures; print(%q)", profileLine)

// TestProfileLayoutFewerRequests converts the python image again with `convert --profile`
// (the digest of a profile recorded on the plain conversion, in the same repository):
// the prefetch of the laid-out image takes fewer requests than that of the plain one for
// the same files, the workload then fetches nothing more, and plain containerd unpacks
// the laid-out image to the same tree as the original.
func TestProfileLayoutFewerRequests(t *testing.T) {
	e := setup(t)
	plain := e.profileRepoImage(t, "profile-layout")
	// Without a pack: what is compared is how the layers' own bytes are laid out.
	digest, doc := e.recordProfile(t, plain, heavyScript, "--no-pack")
	repo := strings.SplitN(plain, ":lazy", 2)[0]
	orig := repo + ":orig"
	e.push(t, filepath.Join(e.images, "python"), "python", orig)
	laid := repo + ":laid"
	r := e.lazypull(t, "convert", "--json", "--profile", digest, orig, laid)
	if r.code != 0 {
		t.Fatalf("convert --profile: exit %d\n%s", r.code, r.stderr)
	}
	if !strings.Contains(r.stdout, `"profiled_files"`) {
		t.Errorf("convert --profile summary: %s", r.stdout)
	}

	// The same profile, for the laid-out image: its files are found by path.
	p, err := profile.Parse(doc)
	if err != nil {
		t.Fatal(err)
	}
	ld := remoteHead(t, laid)
	p.Subject = ld.Digest.String()
	doc2, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := profile.Push(nil, parseRef(t, laid).Context(), ld, doc2, nil); err != nil {
		t.Fatal(err)
	}

	prefetch := func(ref string) (*mounted, daemon.Stats, daemon.PrefetchStats) {
		storeDir := t.TempDir()
		start := time.Now()
		m := e.mount(t, ref, storeDir, "--prefetch-wait", "2m")
		st, ps := settledPrefetch(t, storeDir, start)
		if ps.Err != "" || ps.Files == 0 || ps.Stale != 0 {
			t.Fatalf("prefetch of %s: %+v\n%s", ref, ps, m.log)
		}
		return m, st, ps
	}
	_, _, before := prefetch(plain)
	m, st, after := prefetch(laid)
	t.Logf("prefetch of %d files, %d bytes: %d requests as converted, %d laid out by the profile", after.Files, after.Bytes, before.Requests, after.Requests)
	if after.Files != before.Files || after.Bytes != before.Bytes {
		t.Errorf("the profile found %d files (%d bytes) in the laid-out image, %d (%d bytes) in the plain one", after.Files, after.Bytes, before.Files, before.Bytes)
	}
	if after.Requests >= before.Requests {
		t.Errorf("the laid-out image's prefetch took %d requests, the plain one's %d: want fewer", after.Requests, before.Requests)
	}
	out := must(t, "chroot", m.dir, "python3", "-c", heavyScript)
	if strings.TrimSpace(out) != profileLine {
		t.Fatalf("python3 printed %q", out)
	}
	again := stats(t, m.store, time.Now())
	if again.Store.ChunksFetched != st.Store.ChunksFetched {
		t.Errorf("the workload fetched %d chunks after the laid-out prefetch; want none", again.Store.ChunksFetched-st.Store.ChunksFetched)
	}

	// An unaware runtime: plain containerd pulls and unpacks the laid-out layers.
	want := walk(t, e.reference(t))
	e.ctr(t, "image", "pull", "--plain-http", laid)
	dir := t.TempDir()
	e.ctr(t, "image", "mount", laid, dir)
	t.Cleanup(func() { e.ctr(t, "image", "unmount", "--rm", dir) })
	paths, links := compareTrees(t, "laid-out image unpacked by containerd", want, walk(t, dir))
	t.Logf("%d paths compared, %d hard links", paths, links)
}

// TestBackgroundFetchMount: with --background-fetch the mount fetches the whole image after
// the (absent) profile; once it says it is done, reading every file of the mount fetches
// nothing.
func TestBackgroundFetchMount(t *testing.T) {
	e := setup(t)
	ref := e.lazyImage(t, "python")
	storeDir := t.TempDir()
	start := time.Now()
	m := e.mount(t, ref, storeDir, "--background-fetch", "--background-fetch-rate", fmt.Sprint(200<<20))
	var s daemon.Stats
	deadline := time.Now().Add(5 * time.Minute)
	for {
		s = stats(t, storeDir, start)
		if len(s.BackgroundFetch) == 1 && s.BackgroundFetch[0].Done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("background fetch not done after 5 minutes: %+v\n%s", s.BackgroundFetch, m.log)
		}
		start = s.Written
	}
	f := s.BackgroundFetch[0]
	t.Logf("background fetch: %+v; store: %d chunks fetched", f, s.Store.ChunksFetched)
	if f.Err != "" || f.Bytes == 0 || f.Chunks != s.Store.ChunksFetched {
		t.Fatalf("background fetch %+v; store fetched %d chunks\n%s", f, s.Store.ChunksFetched, m.log)
	}
	log := m.log.String()
	if !strings.Contains(log, "background fetch started") || !strings.Contains(log, "background fetch done") {
		t.Errorf("the log lacks the fill's start and end lines:\n%s", log)
	}
	// Complete, each layer's tar (header frames and stored chunks) has its diff ID.
	if n := strings.Count(log, "matches its diff ID"); n != 2 {
		t.Errorf("%d layers said to match their diff IDs; want the image's 2:\n%s", n, log)
	}
	tree := walk(t, m.dir) // reads every file
	after := stats(t, storeDir, time.Now())
	t.Logf("read %d paths after the fill", len(tree))
	if after.Store.ChunksFetched != s.Store.ChunksFetched || after.Fetch.Requests != s.Fetch.Requests {
		t.Errorf("reading every file after the fill fetched %d chunks in %d requests; want none",
			after.Store.ChunksFetched-s.Store.ChunksFetched, after.Fetch.Requests-s.Fetch.Requests)
	}
}
