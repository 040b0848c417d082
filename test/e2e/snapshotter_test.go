package e2e

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/internal/daemon"
	"lazypull/internal/snapshot"
	"lazypull/internal/testutil"
)

// snapshotterEnv is a `lazypull snapshotter` and a containerd of its own that has it as
// proxy plugin "lazypull", both under one temporary directory.
type snapshotterEnv struct {
	proc
	dir, sock, store, containerd, config, bin string
	env                                       []string // added to the snapshotter's environment (credentials)
}

// start starts the snapshotter process and waits for its socket.
func (s *snapshotterEnv) start(t *testing.T) {
	t.Helper()
	os.Remove(s.sock)
	cmd := exec.Command(s.bin, "snapshotter", "--config", s.config, "--address", s.sock)
	if len(s.env) > 0 {
		cmd.Env = append(os.Environ(), s.env...)
	}
	s.proc.start(t, "lazypull snapshotter (its socket)", cmd, func() bool { return exists(s.sock) })
}

// pythonPulled starts a snapshotter and its containerd (startSnapshotter) and pulls the lazy
// python test image into namespace ns with `lazypull pull`; it returns both.
func (e *env) pythonPulled(t *testing.T, ns string) (*snapshotterEnv, string) {
	t.Helper()
	ref := e.lazyImage(t, "python")
	s := e.startSnapshotter(t)
	s.pull(t, e.bin, ns, ref)
	return s, ref
}

// snapshotterOption adds to the environment of scripts/containerd.sh, which configures the
// containerd that startSnapshotter starts.
type snapshotterOption func(s *snapshotterEnv) (containerdEnv []string)

// startSnapshotter starts the snapshotter from LAZYPULL_BIN (settings from a config file,
// e's environment: credentials) and a containerd (scripts/containerd.sh) using it; the
// test's cleanup stops both by PID.
func (e *env) startSnapshotter(t *testing.T, opts ...snapshotterOption) *snapshotterEnv {
	t.Helper()
	return e.startSnapshotterWith(t, "", opts...)
}

// startSnapshotterWith is startSnapshotter with more lines for its config file, in which
// $SNAPSHOTTER_DIR stands for the temporary directory everything of it is under (its
// containerd's socket is $SNAPSHOTTER_DIR/ctd/containerd.sock).
func (e *env) startSnapshotterWith(t *testing.T, config string, opts ...snapshotterOption) *snapshotterEnv {
	t.Helper()
	dir, err := os.MkdirTemp("", "lzsn-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	s := &snapshotterEnv{dir: dir, sock: filepath.Join(dir, "sn.sock"), store: filepath.Join(dir, "store"),
		containerd: filepath.Join(dir, "ctd"), proc: proc{log: &testutil.LogBuffer{}, done: make(chan error, 1)}}
	s.config = filepath.Join(dir, "config.toml")
	// speculate_min_rtt: noSpeculationRTT, unless config sets it.
	// containerd_config: the snapshotter checks the config of its containerd (once it
	// answers), not the host's. keeper_idle: the keeper exits by itself half a second
	// after the last mount goes (stop waits for it), not 10 s.
	if !strings.Contains(config, "speculate_min_rtt") {
		config = fmt.Sprintf("speculate_min_rtt = %q\n", noSpeculationRTT) + config
	}
	if err := os.WriteFile(s.config, fmt.Appendf(nil, "root = %q\nstore = %q\nplain_http = true\ncontainerd_config = %q\nkeeper_idle = \"500ms\"\n%s",
		filepath.Join(dir, "root"), s.store, filepath.Join(s.containerd, "config.toml"), strings.ReplaceAll(config, "$SNAPSHOTTER_DIR", dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	s.bin, s.env = e.bin, e.cmdEnv
	t.Cleanup(func() { s.stop(t) })
	s.start(t)
	cmd := exec.Command("../../scripts/containerd.sh", "start", s.containerd)
	cmd.Env = append(os.Environ(), "CONTAINERD_PROXY_SNAPSHOTTER="+s.sock)
	for _, opt := range opts {
		cmd.Env = append(cmd.Env, opt(s)...)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("containerd.sh start: %v\n%s", err, out)
	}
	return s
}

// stop stops containerd (its tasks first), then the snapshotter with SIGTERM, which leaves
// only its lazy layer mounts (for the keeper), then unmounts those; the keeper must then
// exit by itself.
func (s *snapshotterEnv) stop(t *testing.T) {
	if out, err := exec.Command("../../scripts/containerd.sh", "stop", s.containerd).CombinedOutput(); err != nil {
		t.Errorf("containerd.sh stop: %v\n%s", err, out)
	}
	select {
	case <-s.done:
	default:
		if stopped, err := s.terminate(30 * time.Second); !stopped {
			<-s.done
			t.Errorf("lazypull snapshotter did not stop on SIGTERM:\n%s", s.log)
		} else if err != nil {
			t.Errorf("lazypull snapshotter ended with %v:\n%s", err, s.log)
		}
	}
	left := mountsUnder(s.dir)
	for i := len(left) - 1; i >= 0; i-- {
		if !isLazyMount(left[i]) {
			t.Errorf("still mounted after the snapshotter stopped, and not a lazy layer: %s", left[i])
		}
		exec.Command("umount", "-l", left[i]).Run()
	}
	keeperSock := filepath.Join(s.dir, "root", "keeper.sock")
	if pid := keeperPID(keeperSock); pid > 0 {
		start := time.Now()
		if !testutil.Eventually(30*time.Second, func() bool { return keeperPID(keeperSock) != pid }) {
			t.Errorf("the keeper (pid %d) did not exit with nothing left to keep", pid)
			syscall.Kill(pid, syscall.SIGTERM)
		}
		t.Logf("the keeper exited %v after the mounts went (its idle time)", time.Since(start).Round(100*time.Millisecond))
	}
	if t.Failed() {
		t.Logf("snapshotter log:\n%s", s.log)
	}
	os.RemoveAll(s.dir)
}

// isLazyMount reports whether dir is a lazypull FUSE mount.
func isLazyMount(dir string) bool {
	ms := mountsAt(dir)
	return len(ms) > 0 && ms[0].fstype == "fuse.lazypull"
}

// keeperPID returns the PID of the `lazypull keeper` serving sock, or 0.
func keeperPID(sock string) int {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) >= 4 && args[1] == "keeper" && args[3] == sock {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			return pid
		}
	}
	return 0
}

// waitReady waits until containerd reaches the (re)started snapshotter: after a restart, its
// gRPC connection to the plugin is in reconnect back-off for a while, and calls fail with
// "unavailable" meanwhile (as any proxy snapshotter's do).
func (s *snapshotterEnv) waitReady(t *testing.T, ns string) {
	t.Helper()
	testutil.Await(t, 2*time.Minute, "containerd to reach the snapshotter", func() (bool, string) {
		r := run(t, "ctr", "--address", filepath.Join(s.containerd, "containerd.sock"), "--namespace", ns, "snapshots", "--snapshotter", "lazypull", "ls")
		return r.code == 0, fmt.Sprintf("exit %d\n%s", r.code, r.stderr)
	})
}

// mountsUnder returns the mount points below dir, a mount over another after it.
func mountsUnder(dir string) []string {
	var out []string
	for _, m := range mountTable() {
		if strings.HasPrefix(m.point, dir+"/") {
			out = append(out, m.point)
		}
	}
	return out
}

func (s *snapshotterEnv) ctr(t *testing.T, ns string, args ...string) string {
	t.Helper()
	return must(t, "ctr", append([]string{"--address", filepath.Join(s.containerd, "containerd.sock"), "--namespace", ns}, args...)...)
}

// pullBoth pulls orig the ordinary way (unpacked with overlayfs) and lazy with `lazypull
// pull` into namespace ns, and fails unless every snapshot of the lazy one is remote.
func (s *snapshotterEnv) pullBoth(t *testing.T, bin, ns, orig, lazy string) {
	t.Helper()
	s.ctr(t, ns, "image", "pull", "--plain-http", "--snapshotter", "overlayfs", orig)
	s.pull(t, bin, ns, lazy)
	if remote, all := s.remoteSnapshots(t, ns); remote == 0 || remote != all {
		t.Fatalf("%d remote snapshots of %d after lazypull pull, want all remote:\n%s", remote, all, s.log)
	}
}

// remoteSnapshots counts the committed snapshots of namespace ns that are remote ones.
func (s *snapshotterEnv) remoteSnapshots(t *testing.T, ns string) (remote, all int) {
	t.Helper()
	for i, line := range strings.Split(strings.TrimSpace(s.ctr(t, ns, "snapshots", "--snapshotter", "lazypull", "ls")), "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) == 0 || f[len(f)-1] != "Committed" {
			continue
		}
		all++
		if strings.Contains(s.ctr(t, ns, "snapshots", "--snapshotter", "lazypull", "info", f[0]), snapshot.RemoteLabel) {
			remote++
		}
	}
	return remote, all
}

// wantAllRemote fails t unless every layer of ref is a remote snapshot in namespace ns,
// and nothing else is there; it returns ref's manifest.
func (s *snapshotterEnv) wantAllRemote(t *testing.T, ns, ref string) *v1.Manifest {
	t.Helper()
	m := remoteManifest(t, ref)
	if remote, all := s.remoteSnapshots(t, ns); remote != len(m.Layers) || all != len(m.Layers) {
		t.Fatalf("%d remote snapshots of %d, want all %d layers remote:\n%s", remote, all, len(m.Layers), s.log)
	}
	return m
}

// runPython runs ref's command (python printing pythonOutput) with `ctr run --rm` in
// namespace ns, as container NAME-PID, and fails t unless it printed that.
func (s *snapshotterEnv) runPython(t *testing.T, ns, ref, name string) {
	t.Helper()
	out := s.ctr(t, ns, "run", "--rm", "--snapshotter", "lazypull", ref, fmt.Sprintf("%s-%d", name, os.Getpid()))
	if strings.TrimSpace(out) != pythonOutput {
		t.Fatalf("container printed %q, want %q", out, pythonOutput)
	}
}

// TestSnapshotterRunsLazyImage: `lazypull pull` of a converted image makes every layer a
// remote snapshot, `ctr run --snapshotter lazypull` runs python from it, and that fetched a
// small fraction of the image.
func TestSnapshotterRunsLazyImage(t *testing.T) {
	e := setup(t)
	ref := e.lazyImage(t, "python")
	s := e.startSnapshotter(t)
	const ns = "lazypull-e2e"

	start := time.Now()
	s.pull(t, e.bin, ns, ref)
	t.Logf("lazypull pull took %v", time.Since(start))
	m := s.wantAllRemote(t, ns, ref)
	// At once, not at the stats file's next tick.
	want := fmt.Sprintf(": lazy, %d of %d layers; registry: ", len(m.Layers), len(m.Layers))
	if st := e.lazypull(t, "stats", "--store", s.store); st.code != 0 || !strings.Contains(st.stdout, want) {
		t.Errorf("lazypull stats right after the pull: exit %d, want the image listed with %q:\n%s%s", st.code, want, st.stdout, st.stderr)
	}

	s.runPython(t, ns, ref, "lazy")
	wantFetchedLittle(t, "running python", s.store, time.Now(), m)
	// The profile look-up found none (the registry's 404s): that is no fetch error.
	ran := time.Now()
	var st daemon.Stats
	if !testutil.Eventually(10*time.Second, func() bool {
		var err error
		st, err = daemon.ReadStats(s.store)
		return err == nil && st.Written.After(ran)
	}) {
		t.Fatalf("no stats written after the run")
	}
	if st.Fetch == nil || st.Fetch.Errors != 0 {
		t.Errorf("stats count fetch errors: %+v", st.Fetch)
	}
}

// TestSnapshotterRunsPlainImage: an image that is not a lazypull image, pulled by plain
// ctr, takes the ordinary path through the lazypull snapshotter (downloaded, unpacked) and
// runs.
func TestSnapshotterRunsPlainImage(t *testing.T) {
	e := setup(t)
	orig := fmt.Sprintf("%s/e2e/snplain-%d:orig", e.registry, os.Getpid())
	e.push(t, filepath.Join(e.images, "python"), "python", orig)
	s := e.startSnapshotter(t)
	const ns = "lazypull-e2e-plain"

	s.ctr(t, ns, "image", "pull", "--plain-http", "--snapshotter", "lazypull", orig)
	if remote, all := s.remoteSnapshots(t, ns); remote != 0 || all == 0 {
		t.Fatalf("%d remote snapshots of %d, want none remote", remote, all)
	}
	out := s.ctr(t, ns, "run", "--rm", "--snapshotter", "lazypull", orig, fmt.Sprintf("plain-%d", os.Getpid()))
	if strings.TrimSpace(out) != pythonOutput {
		t.Fatalf("container printed %q, want %q", out, pythonOutput)
	}
	if st, err := daemon.ReadStats(s.store); err == nil && st.Fetch != nil && st.Fetch.Bytes != 0 {
		t.Errorf("the snapshotter fetched %d bytes for an image that is not lazy", st.Fetch.Bytes)
	}
}

// countingProxy stands between containerd, the snapshotter and the registry, and records
// each request as "METHOD /path".
type countingProxy struct {
	addr string
	mu   sync.Mutex
	reqs []string
}

func newCountingProxy(t *testing.T, registry string) *countingProxy {
	t.Helper()
	target, _ := url.Parse("http://" + registry)
	p := &countingProxy{}
	rp := httputil.NewSingleHostReverseProxy(target)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.reqs = append(p.reqs, r.Method+" "+r.URL.Path)
		p.mu.Unlock()
		rp.ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return p
}

// count counts the requests recorded that match.
func (p *countingProxy) count(match func(method, path string) bool) (n int, all []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.reqs {
		method, path, _ := strings.Cut(r, " ")
		if match(method, path) {
			n++
		}
	}
	return n, append([]string(nil), p.reqs...)
}

// TestSnapshotterManifestOnce: `lazypull pull` + `ctr run` of the lazy python image ask
// the registry for the image manifest exactly once, with a GET and no HEAD: the pull's
// own request, whose answer containerd and the snapshotter both take from the pull (the
// snapshotter through its warm request, logged as such).
func TestSnapshotterManifestOnce(t *testing.T) {
	e := setup(t)
	lazy := e.lazyImage(t, "python")
	digest, err := remoteImage(t, lazy).Digest()
	if err != nil {
		t.Fatal(err)
	}
	p := newCountingProxy(t, e.registry)
	ref := strings.Replace(lazy, e.registry, p.addr, 1)
	repo, tag, _ := strings.Cut(strings.TrimPrefix(ref, p.addr+"/"), ":")
	s := e.startSnapshotter(t)
	const ns = "lazypull-e2e-manifest-once"
	s.pull(t, e.bin, ns, ref)
	out := s.ctr(t, ns, "run", "--rm", "--snapshotter", "lazypull", ref, fmt.Sprintf("once-%d", os.Getpid()))
	if strings.TrimSpace(out) != pythonOutput {
		t.Fatalf("container printed %q, want %q", out, pythonOutput)
	}
	manifest := func(method, path string) bool {
		return path == "/v2/"+repo+"/manifests/"+tag || path == "/v2/"+repo+"/manifests/"+digest.String()
	}
	n, all := p.count(manifest)
	heads, _ := p.count(func(method, path string) bool {
		return method == http.MethodHead && strings.Contains(path, "/manifests/")
	})
	if n != 1 || heads != 0 {
		t.Errorf("%d requests for the image manifest (%d HEAD); want one GET. Requests:\n%s", n, heads, strings.Join(all, "\n"))
	}
	if !strings.Contains(s.log.String(), "warm=true") {
		t.Errorf("the snapshotter did not open the image from the pull's warm request:\n%s", s.log)
	}
	t.Logf("registry requests:\n%s", strings.Join(all, "\n"))
}
