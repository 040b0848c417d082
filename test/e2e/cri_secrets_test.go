package e2e

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestCRIProxyPullSecrets: Kubernetes' pull secrets. The image is in a registry behind
// htpasswd basic auth, the snapshotter has no Docker config and serves its CRI proxy
// (cri_proxy_address), containerd's CRI is on, and crictl pulls through the proxy with
// --creds, as kubelet pulls with a pod's imagePullSecrets: every layer is mounted lazily
// with the credentials of the pull (no fallback warning, bytes fetched by the snapshotter),
// the pod runs having fetched a small part of the image, a pull with wrong credentials
// fails naming the registry, the credentials survive a restart of the snapshotter (in the
// keeper's memory), and the secret is in no log and no file of the snapshotter's (nor of
// its keeper's).
func TestCRIProxyPullSecrets(t *testing.T) {
	e := setup(t)
	tool(t, "crictl")
	reg := startAuthRegistry(t)
	ref := e.withRegistry(reg.addr, reg.dockerConfig(t, reg.user, reg.password)).lazyImage(t, "python")
	m := remoteManifest(t, ref, remote.WithAuth(&authn.Basic{Username: reg.user, Password: reg.password}))
	var imageBytes int64
	for _, l := range m.Layers {
		imageBytes += l.Size
	}

	// No credentials of its own: a Docker config without any.
	none := e.withRegistry(reg.addr, reg.dockerConfig(t, "", ""))
	s := none.startSnapshotterWith(t, "cri_proxy_address = \"$SNAPSHOTTER_DIR/cri.sock\"\ncri_proxy_upstream = \"$SNAPSHOTTER_DIR/ctd/containerd.sock\"\n",
		func(*snapshotterEnv) []string {
			return []string{"CONTAINERD_CRI=1", "CONTAINERD_SANDBOX_IMAGE=" + e.pauseImage(t), "CONTAINERD_PLAIN_HTTP=" + e.registry + " " + reg.addr}
		})
	proxy := "unix://" + filepath.Join(s.dir, "cri.sock")
	crictl := func(args ...string) result {
		return run(t, tool(t, "crictl"), append([]string{"--config", filepath.Join(s.containerd, "crictl.yaml"), "--image-endpoint", proxy}, args...)...)
	}
	var outputs []string // of every command, for the secret
	t.Cleanup(func() {
		outputs = append(outputs, s.log.String())
		for i, out := range outputs {
			for _, l := range reg.secretLeaks(fmt.Sprintf("output %d", i), out) {
				t.Error(l)
			}
		}
	})

	// Wrong credentials: the pull fails, naming the registry.
	r := crictl("pull", "--creds", reg.user+":not-"+reg.password, ref)
	outputs = append(outputs, r.stdout+r.stderr)
	if r.code == 0 || !strings.Contains(r.stderr, reg.addr) || !mentions401(r.stderr) {
		t.Errorf("crictl pull with wrong credentials: exit %d; want a failure naming %s and its 401:\n%s%s", r.code, reg.addr, r.stdout, r.stderr)
	}
	t.Logf("crictl pull with wrong credentials: %s", lastLine([]byte(r.stderr)))

	start := time.Now()
	r = crictl("pull", "--creds", reg.user+":"+reg.password, ref)
	outputs = append(outputs, r.stdout+r.stderr)
	if r.code != 0 {
		t.Fatalf("crictl pull --creds through the proxy: exit %d:\n%s%s\nsnapshotter:\n%s", r.code, r.stdout, r.stderr, s.log)
	}
	t.Logf("crictl pull --creds took %v", time.Since(start))
	if remote, all := s.remoteSnapshots(t, criNamespace); remote != len(m.Layers) || all != len(m.Layers) {
		t.Fatalf("after crictl pull --creds: %d remote snapshots of %d, want all %d layers remote:\n%s", remote, all, len(m.Layers), s.log)
	}

	podID, code, out := s.runImagePod(t, ref, fmt.Sprintf("secret-%d", os.Getpid()), nil)
	if code != 0 || out != pythonOutput {
		t.Fatalf("the container exited %d having printed %q; want 0 and %q\nsnapshotter:\n%s", code, out, pythonOutput, s.log)
	}
	st := stats(t, s.store, time.Now())
	t.Logf("CRI pull with --creds + pod run to exit: fetched %d bytes in %d requests of a %d-byte image (%.1f%%)",
		st.Fetch.Bytes, st.Fetch.Requests, imageBytes, 100*float64(st.Fetch.Bytes)/float64(imageBytes))
	if st.Fetch.Bytes == 0 || st.Fetch.Bytes*100 >= imageBytes*15 {
		t.Errorf("fetched %d bytes of a %d-byte image before the container was done; want some, under 15%%", st.Fetch.Bytes, imageBytes)
	}
	if w := warnings(s.log.String()); len(w) > 0 {
		t.Errorf("warnings with the pull's credentials (a layer fell back?):\n%s", strings.Join(w, "\n"))
	}
	if !strings.Contains(s.log.String(), "credentials=true kept=true") {
		t.Errorf("the snapshotter's log does not say the proxy kept the pull's credentials:\n%s", s.log)
	}
	s.removePod(t, podID)

	// The snapshotter restarts: the credentials it had in memory were handed to the keeper
	// (in its memory too), and the new snapshotter takes them back before it serves, so a
	// container that reads what no container read before succeeds without another pull
	// (kubelet pulls an image it has only under imagePullPolicy Always).
	if stopped, err := s.terminate(30 * time.Second); !stopped || err != nil {
		t.Fatalf("the snapshotter did not stop on SIGTERM (%v):\n%s", err, s.log)
	}
	restartAt := len(s.log.String())
	s.start(t)
	s.waitReady(t, criNamespace)
	if !strings.Contains(s.log.String()[restartAt:], "CRI credentials restored from the keeper") {
		t.Errorf("the restarted snapshotter does not say it took the credentials back from the keeper:\n%s", s.log.String()[restartAt:])
	}
	readMore := []string{"sh", "-c", "cat /usr/lib/python3*/email/*.py /usr/lib/python3*/xml/dom/*.py >/dev/null && echo read"}
	fetched := stats(t, s.store, time.Now()).Fetch.Bytes
	podID, code, out = s.runImagePod(t, ref, fmt.Sprintf("secret-restarted-%d", os.Getpid()), readMore)
	if code != 0 || out != "read" {
		t.Errorf("after a restart, without another pull: the container exited %d having printed %q; want 0 and \"read\"\n%s", code, out, s.log)
	}
	after := stats(t, s.store, time.Now()).Fetch.Bytes
	t.Logf("after a restart, without another pull: exit %d, %s; fetched %d bytes more", code, lastLine([]byte(out)), after-fetched)
	if code == 0 && after <= fetched {
		t.Errorf("the container read unread files having fetched nothing more (%d bytes before, %d after): they were not lazy", fetched, after)
	}
	s.removePod(t, podID)

	// No file of the snapshotter's (its store, its root, its config) holds the secret.
	for _, dir := range []string{s.store, filepath.Join(s.dir, "root")} {
		for _, f := range filesHolding(t, dir, reg.password, basicAuth(reg.user, reg.password)) {
			t.Errorf("%s holds the secret", f)
		}
	}
}

// runImagePod runs a pod named name with one container of image ref, its command cmd
// (nil: the image's), waits until the container has exited, and returns the pod's ID, the
// container's exit code and its output; a container that does not start has code -1, and
// crictl's error as its output.
func (s *snapshotterEnv) runImagePod(t *testing.T, ref, name string, cmd []string) (podID string, code int, out string) {
	t.Helper()
	spec := map[string]any{
		"metadata": map[string]any{"name": "c"},
		"image":    map[string]any{"image": ref},
		"log_path": "c.log",
	}
	if cmd != nil {
		spec["command"] = cmd
	}
	podID, _, code, out = s.startPod(t, name, spec, 2*time.Minute)
	return podID, code, out
}

// removePod stops and removes a pod, as kubelet does when it goes.
func (s *snapshotterEnv) removePod(t *testing.T, podID string) {
	t.Helper()
	s.crictl(t, "stopp", podID)
	s.crictl(t, "rmp", podID)
}

// filesHolding lists the regular files under dir that contain any of secrets, not
// descending into other file systems (the lazy layers' FUSE mounts: reading them would
// fetch the image).
func filesHolding(t *testing.T, dir string, secrets ...string) []string {
	t.Helper()
	var root syscall.Stat_t
	if err := syscall.Stat(dir, &root); err != nil {
		t.Fatal(err)
	}
	var found []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // gone meanwhile, or not ours to read
		}
		var st syscall.Stat_t
		if syscall.Lstat(p, &st) != nil || st.Dev != root.Dev {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				found = append(found, p)
				break
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}
