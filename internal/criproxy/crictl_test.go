package criproxy

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestCrictlPull runs the real crictl against the proxy, as an operator points it there
// (--image-endpoint): the pull reaches the upstream as crictl sent it, its credentials are
// kept for the image's repository, and neither the proxy's log nor crictl's output holds
// the secret.
func TestCrictlPull(t *testing.T) {
	crictl := crictlPath(t)
	fx := newFixture(t, 0)
	const secret = "crictl-s3cr3t"
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, crictl, "--image-endpoint", "unix://"+fx.socket, "--timeout", "10s",
		"pull", "--creds", "alice:"+secret, "registry.example:5000/team/app:v1")
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir()) // no crictl.yaml of the machine's
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("crictl pull: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), pullResp.ImageRef) {
		t.Errorf("crictl says %q, not the upstream's image %s", out, pullResp.ImageRef)
	}

	got, _ := fx.up.last(t)
	req, ok := got.(*runtime.PullImageRequest)
	if !ok {
		t.Fatalf("upstream's last call was %T, want a pull", got)
	}
	want := &runtime.AuthConfig{Username: "alice", Password: secret}
	if req.GetImage().GetImage() != "registry.example:5000/team/app:v1" || !proto.Equal(req.GetAuth(), want) {
		t.Errorf("upstream received %v, want the image and %v", req, want)
	}
	if u, p, ok := fx.store.Credentials(t.Context(), "registry.example:5000", "team/app"); !ok || u != "alice" || p != secret {
		t.Errorf("Credentials = %q, %q, %v; want crictl's", u, p, ok)
	}
	if _, _, ok := fx.store.Credentials(t.Context(), "registry.example:5000", "team/other"); ok {
		t.Error("another repository has crictl's credentials")
	}
	if strings.Contains(fx.log.String(), secret) || strings.Contains(string(out), secret) {
		t.Errorf("the secret is in the output:\nlog:\n%s\ncrictl:\n%s", fx.log, out)
	}
	if fx.log.Count("image=registry.example:5000/team/app:v1 credentials=true kept=true") != 1 {
		t.Errorf("the log does not say the pull came with credentials:\n%s", fx.log)
	}
}

// crictlPath finds crictl on PATH or in bin/tools (make deps installs it there); the test
// skips without it, unless the end-to-end run (LAZYPULL_E2E=1) expects every tool.
func crictlPath(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("crictl"); err == nil {
		return p
	}
	p, err := filepath.Abs(filepath.Join("..", "..", "bin", "tools", "crictl"))
	if err == nil {
		if _, err = os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("LAZYPULL_E2E") == "1" {
		t.Fatalf("crictl not installed: run make deps (scripts/deps.sh): %v", err)
	}
	t.Skipf("SKIP %s: crictl not installed (make deps installs it)", t.Name())
	return ""
}
