package e2e

import (
	"path/filepath"
	"strings"
	"testing"

	"lazypull/internal/criproxy"
	"lazypull/internal/testutil"
)

// TestCRIProxyForwardsToContainerd puts the CRI proxy between crictl and a real containerd
// (as kubelet's --image-service-endpoint points at it): pull, list, inspect, image fs info
// and remove all work through it, the pull still mounts every layer lazily, the pull's
// credentials are kept for the image's repository, and the proxy logs no secret.
func TestCRIProxyForwardsToContainerd(t *testing.T) {
	e := setup(t)
	tool(t, "crictl")
	ref := e.lazyImage(t, "python")
	s := e.startSnapshotter(t, withCRI(e.registry, e.pauseImage(t)))

	log, logs := testutil.NewLog(t)
	store := criproxy.NewStore(0)
	p, err := criproxy.New(filepath.Join(s.containerd, "containerd.sock"), store, log)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(s.dir, "cri.sock")
	l, err := criproxy.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- p.Serve(l) }()
	t.Cleanup(func() {
		p.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	const secret = "e2e-s3cr3t"
	crictl := func(args ...string) string {
		return s.crictl(t, append([]string{"--image-endpoint", "unix://" + sock}, args...)...)
	}

	crictl("pull", "--creds", "alice:"+secret, ref)
	m, err := remoteImage(t, ref).Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if remote, all := s.remoteSnapshots(t, criNamespace); remote != len(m.Layers) || all != len(m.Layers) {
		t.Fatalf("after crictl pull through the proxy: %d remote snapshots of %d, want all %d layers remote:\n%s", remote, all, len(m.Layers), s.log)
	}
	host, repo, _ := strings.Cut(strings.TrimSuffix(ref, ":lazy"), "/")
	if u, pw, ok := store.Credentials(t.Context(), host, repo); !ok || u != "alice" || pw != secret {
		t.Errorf("Credentials(%s, %s) = %q, %q, %v; want crictl's", host, repo, u, pw, ok)
	}
	if out := crictl("images"); !strings.Contains(out, strings.TrimSuffix(ref, ":lazy")) {
		t.Errorf("crictl images through the proxy does not list %s:\n%s", ref, out)
	}
	if out := crictl("inspecti", ref); !strings.Contains(out, m.Config.Digest.String()) {
		t.Errorf("crictl inspecti through the proxy does not name the config %s:\n%s", m.Config.Digest, out)
	}
	if out := crictl("imagefsinfo"); !strings.Contains(out, "usedBytes") {
		t.Errorf("crictl imagefsinfo through the proxy:\n%s", out)
	}
	crictl("rmi", ref)
	if out := crictl("images", "--quiet"); strings.Contains(out, m.Config.Digest.String()) {
		t.Errorf("the image is still there after crictl rmi through the proxy:\n%s", out)
	}
	if strings.Contains(logs.String(), secret) || strings.Contains(s.log.String(), secret) {
		t.Errorf("a log holds the secret:\nproxy:\n%s\nsnapshotter:\n%s", logs, s.log)
	}
	if logs.Count("credentials=true kept=true") != 1 {
		t.Errorf("the proxy's log does not say the pull kept its credentials:\n%s", logs)
	}
}
