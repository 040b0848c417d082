package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"lazypull/internal/imagebuild"
	"lazypull/internal/testutil"
)

// criNamespace is the containerd namespace of everything CRI does.
const criNamespace = "k8s.io"

// withCRI turns on the CRI server of startSnapshotter's containerd, with the lazypull
// snapshotter, sandbox as its pause image, and plain http to the test registry.
func withCRI(registry, sandbox string) snapshotterOption {
	return func(*snapshotterEnv) []string {
		return []string{"CONTAINERD_CRI=1", "CONTAINERD_SANDBOX_IMAGE=" + sandbox, "CONTAINERD_PLAIN_HTTP=" + registry}
	}
}

// crictl runs crictl against the containerd of s (the crictl.yaml scripts/containerd.sh
// wrote for it) and returns its stdout, trimmed.
func (s *snapshotterEnv) crictl(t *testing.T, args ...string) string {
	t.Helper()
	return strings.TrimSpace(must(t, tool(t, "crictl"), append([]string{"--config", filepath.Join(s.containerd, "crictl.yaml")}, args...)...))
}

var pauseOnce sync.Map

// pauseImage builds the pod sandbox image from tools/pause (one static binary) and pushes it
// to the test registry, once per test binary run: CRI needs one and the tests can't pull
// Kubernetes' own.
func (e *env) pauseImage(t *testing.T) string {
	t.Helper()
	ref := fmt.Sprintf("%s/e2e/pause-%d:1", e.registry, os.Getpid())
	if _, loaded := pauseOnce.LoadOrStore(ref, true); loaded {
		return ref
	}
	e.push(t, pauseLayout(t, "pause", nil), "pause", ref)
	return ref
}

// pauseLayout builds an image of one layer whose entrypoint is /pause (tools/pause, one
// static binary), with what craft adds to its root (nil: nothing), into a new OCI layout
// under tag, and returns the layout's directory.
func pauseLayout(t *testing.T, tag string, craft func(root string)) string {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "rootfs")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(root, "pause"), "lazypull/tools/pause")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build tools/pause: %v\n%s", err, out)
	}
	if craft != nil {
		craft(root)
	}
	layout := filepath.Join(dir, "oci")
	if _, err := imagebuild.Build(layout, []string{root}, imagebuild.Options{Tag: tag, Entrypoint: []string{"/pause"}}); err != nil {
		t.Fatalf("image %s: %v", tag, err)
	}
	return layout
}

// writeJSON writes v as JSON to a new file in dir and returns its path.
func writeJSON(t *testing.T, dir, name string, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// waitExited waits until the CRI container id has exited and returns its exit code.
func (s *snapshotterEnv) waitExited(t *testing.T, id string, timeout time.Duration) int {
	t.Helper()
	var st struct {
		Status struct {
			State    string `json:"state"`
			ExitCode int    `json:"exitCode"`
		} `json:"status"`
	}
	testutil.Await(t, timeout, "container "+id+" to exit", func() (bool, string) {
		out := s.crictl(t, "inspect", "--output", "json", id)
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("crictl inspect %s: %v\n%s", id, err, out)
		}
		return st.Status.State == "CONTAINER_EXITED", out
	})
	return st.Status.ExitCode
}

// runPod runs a pod named name-PID with one container of config ctr (crictl's container
// JSON), waits until the container exits 0 within timeout, and returns the pod's and the
// container's IDs.
func (s *snapshotterEnv) runPod(t *testing.T, name string, ctr map[string]any, timeout time.Duration) (podID, id string) {
	t.Helper()
	podID, id, code, out := s.startPod(t, fmt.Sprintf("%s-%d", name, os.Getpid()), ctr, timeout)
	if code != 0 {
		t.Fatalf("container exited with %d; logs:\n%s\nsnapshotter:\n%s", code, out, s.log)
	}
	return podID, id
}

// startPod runs a pod named name on the host's network (no CNI here:
// scripts/containerd.sh) with one container of config ctr, waits until the container has
// exited, within timeout, and returns the pod's and the container's IDs, its exit code and
// its output; a container that does not start has code -1, and crictl's error as its
// output.
func (s *snapshotterEnv) startPod(t *testing.T, name string, ctr map[string]any, timeout time.Duration) (podID, id string, code int, out string) {
	t.Helper()
	pod := writeJSON(t, s.dir, "pod-"+name+".json", map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "default", "uid": name, "attempt": 0},
		"log_directory": filepath.Join(s.dir, "pods", name),
		"linux":         map[string]any{"security_context": map[string]any{"namespace_options": map[string]any{"network": 2}}},
	})
	if ctr["linux"] == nil {
		ctr["linux"] = map[string]any{}
	}
	cfg := writeJSON(t, s.dir, "container-"+name+".json", ctr)
	start := time.Now()
	podID = s.crictl(t, "runp", pod)
	t.Logf("crictl runp took %v", time.Since(start))
	start = time.Now()
	id = s.crictl(t, "create", podID, cfg, pod)
	if r := run(t, tool(t, "crictl"), "--config", filepath.Join(s.containerd, "crictl.yaml"), "start", id); r.code != 0 {
		return podID, id, -1, r.stderr
	}
	code = s.waitExited(t, id, timeout)
	t.Logf("crictl create + start to exit took %v", time.Since(start))
	return podID, id, code, s.crictl(t, "logs", id)
}

// runPythonPod runs a pod NAME with a container of ref (python printing pythonOutput),
// fails t unless it printed that, and returns the pod's ID.
func (s *snapshotterEnv) runPythonPod(t *testing.T, name, ref string) string {
	t.Helper()
	podID, id := s.runPod(t, name, map[string]any{
		"metadata": map[string]any{"name": "python"},
		"image":    map[string]any{"image": ref},
		"log_path": "python.log",
	}, 2*time.Minute)
	if out := s.crictl(t, "logs", id); out != pythonOutput {
		t.Fatalf("container printed %q, want %q", out, pythonOutput)
	}
	return podID
}

// TestCRIRunsLazyImage: Kubernetes' path. containerd's CRI plugin, configured with the
// lazypull snapshotter, pulls a lazypull image (crictl pull: every layer becomes a remote
// snapshot), runs a pod and a python container from it (crictl runp, create, start), and the
// container prints its output having fetched a small fraction of the image.
func TestCRIRunsLazyImage(t *testing.T) {
	e := setup(t)
	tool(t, "crictl")
	ref := e.lazyImage(t, "python")
	s := e.startSnapshotter(t, withCRI(e.registry, e.pauseImage(t)))
	s.wantContainerdChecked(t, true) // the config scripts/containerd.sh wrote for this version

	start := time.Now()
	s.crictl(t, "pull", ref)
	t.Logf("crictl pull took %v", time.Since(start))
	m := s.wantAllRemote(t, criNamespace, ref)
	podID := s.runPythonPod(t, "lazy", ref)

	wantFetchedLittle(t, "running python through CRI", s.store, time.Now(), m)

	// What kubelet does when the pod goes: its containers and sandbox stop and go, and their
	// snapshots with them (containerd.sh stop checks nothing is left mounted).
	s.crictl(t, "stopp", podID)
	s.crictl(t, "rmp", podID)
	if left := s.crictl(t, "pods", "--quiet"); left != "" {
		t.Errorf("pods left after rmp: %s", left)
	}
}
