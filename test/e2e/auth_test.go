package e2e

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/crypto/bcrypt"
)

// authRegistry is a docker-registry of its own behind htpasswd basic auth, on loopback,
// everything under a temporary directory.
type authRegistry struct {
	addr, dir      string
	user, password string
}

// startAuthRegistry starts it with scripts/registry.sh (REGISTRY_HTPASSWD); the test's
// cleanup stops it by the PID the script recorded.
func startAuthRegistry(t *testing.T) *authRegistry {
	t.Helper()
	r := &authRegistry{dir: t.TempDir(), user: "lazy", password: randomSecret(t)}
	hash, err := bcrypt.GenerateFromPassword([]byte(r.password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(r.dir, "htpasswd")
	if err := os.WriteFile(htpasswd, fmt.Appendf(nil, "%s:%s\n", r.user, hash), 0o600); err != nil {
		t.Fatal(err)
	}
	// A free port: the script refuses one in use, so a lost race fails loudly.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	ln.Close()
	state := filepath.Join(r.dir, "registry")
	cmd := exec.Command("../../scripts/registry.sh", "start", state, r.addr)
	cmd.Env = append(os.Environ(), "REGISTRY_HTPASSWD="+htpasswd)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("registry.sh start (htpasswd): %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("../../scripts/registry.sh", "stop", state).CombinedOutput(); err != nil {
			t.Errorf("registry.sh stop: %v\n%s", err, out)
		}
	})
	return r
}

func randomSecret(t *testing.T) string {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "pw-" + hex.EncodeToString(b)
}

// dockerConfig writes a Docker config directory whose config.json holds user:password for
// the registry, and returns the environment entry that points at it.
func (r *authRegistry) dockerConfig(t *testing.T, user, password string) string {
	t.Helper()
	dir := t.TempDir()
	auths := map[string]any{}
	if user != "" {
		auths[r.addr] = map[string]string{"auth": basicAuth(user, password)}
	}
	b, err := json.Marshal(map[string]any{"auths": auths})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return "DOCKER_CONFIG=" + dir
}

func basicAuth(user, password string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
}

// secretLeaks lists where the password, or the header value made of it, shows in out.
// With basic auth there is no bearer token; an Authorization header or a "Bearer <token>"
// would be a dumped header.
func (r *authRegistry) secretLeaks(name, out string) []string {
	var leaks []string
	for _, s := range []string{r.password, basicAuth(r.user, r.password)} {
		if strings.Contains(out, s) {
			leaks = append(leaks, fmt.Sprintf("%s shows a secret (%.6s...)", name, s))
		}
	}
	if m := regexp.MustCompile(`(?i)authorization"?[:=]\s*"?\[?(basic|bearer)\s|bearer\s+[A-Za-z0-9._~+/-]{20,}`).FindString(out); m != "" {
		leaks = append(leaks, fmt.Sprintf("%s shows an authorization header value (%.12s...)", name, m))
	}
	return leaks
}

// TestAuthRegistry: with the registry behind htpasswd basic auth and credentials in a
// Docker config (DOCKER_CONFIG), convert pushes, `lazypull pull` + `ctr run --snapshotter
// lazypull` run python with every layer mounted lazily, and `lazypull mount` serves the
// image. Wrong or missing credentials fail quickly and clearly, naming the registry and
// the 401; a snapshotter with wrong credentials falls back to downloading, warning once.
// No output of any of it shows the password or the header made of it.
func TestAuthRegistry(t *testing.T) {
	e := setup(t)
	reg := startAuthRegistry(t)
	good := e.withRegistry(reg.addr, reg.dockerConfig(t, reg.user, reg.password))
	wrong := e.withRegistry(reg.addr, reg.dockerConfig(t, reg.user, "not-"+reg.password))
	none := e.withRegistry(reg.addr, reg.dockerConfig(t, "", ""))
	var outputs []struct{ name, out string }
	record := func(name string, r result) result {
		outputs = append(outputs, struct{ name, out string }{name, r.stdout + r.stderr})
		return r
	}
	t.Cleanup(func() {
		for _, o := range outputs {
			for _, l := range reg.secretLeaks(o.name, o.out) {
				t.Error(l)
			}
		}
	})

	// The registry does ask: anonymous requests get 401.
	resp, err := http.Get("http://" + reg.addr + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET /v2/ without credentials: %s, want 401", resp.Status)
	}

	// Wrong credentials: convert cannot push.
	layout := "oci:" + filepath.Join(e.images, "python") + ":python"
	r := record("convert (wrong credentials)", wrong.lazypull(t, "convert", layout, fmt.Sprintf("%s/e2e/denied-%d:lazy", reg.addr, os.Getpid())))
	checkAuthFailure(t, "convert with wrong credentials", r, reg.addr)

	ref := good.lazyImage(t, "python")
	m := remoteManifest(t, ref, remote.WithAuth(&authn.Basic{Username: reg.user, Password: reg.password}))
	sn := good.startSnapshotter(t)
	ctdSock := filepath.Join(sn.containerd, "containerd.sock")

	t.Run("pull and run", func(t *testing.T) {
		const ns = "lazypull-e2e-auth"
		r := record("pull", good.lazypull(t, "pull", "--address", ctdSock, "--namespace", ns, "--plain-http", ref))
		if r.code != 0 {
			t.Fatalf("lazypull pull with credentials: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
		}
		if remote, all := sn.remoteSnapshots(t, ns); remote != len(m.Layers) || all != len(m.Layers) {
			t.Fatalf("%d remote snapshots of %d, want all %d layers remote:\n%s", remote, all, len(m.Layers), sn.log)
		}
		out := sn.ctr(t, ns, "run", "--rm", "--snapshotter", "lazypull", ref, fmt.Sprintf("auth-%d", os.Getpid()))
		if strings.TrimSpace(out) != pythonOutput {
			t.Fatalf("container printed %q, want %q", out, pythonOutput)
		}
		if st := stats(t, sn.store, time.Now()); st.Fetch.Bytes == 0 {
			t.Errorf("the snapshotter fetched nothing from the authenticated registry")
		}
		if w := warnings(sn.log.String()); len(w) > 0 {
			t.Errorf("warnings with the right credentials:\n%s", strings.Join(w, "\n"))
		}
	})

	t.Run("pull with wrong or no credentials", func(t *testing.T) {
		for _, c := range []struct {
			name string
			e    *env
		}{{"wrong", wrong}, {"none", none}} {
			start := time.Now()
			r := record("pull ("+c.name+" credentials)", c.e.lazypull(t, "pull", "--address", ctdSock, "--namespace", "lazypull-e2e-auth-"+c.name, "--plain-http", ref))
			checkAuthFailure(t, "pull with "+c.name+" credentials", r, reg.addr)
			if d := time.Since(start); d > time.Minute {
				t.Errorf("pull with %s credentials took %v to fail", c.name, d)
			}
		}
	})

	t.Run("mount", func(t *testing.T) {
		mnt := good.mount(t, ref, t.TempDir(), "--debug")
		if out := must(t, "chroot", mnt.dir, "python3", "-c", "print(1)"); strings.TrimSpace(out) != "1" {
			t.Errorf("python3 on the mount printed %q", out)
		}
		mnt.stop(t)
		record("mount --debug", result{stderr: mnt.log.String()})

		start := time.Now()
		r := record("mount (wrong credentials)", wrong.lazypull(t, "mount", "--plain-http", "--store", t.TempDir(), ref, t.TempDir()))
		checkAuthFailure(t, "mount with wrong credentials", r, reg.addr)
		if d := time.Since(start); d > time.Minute {
			t.Errorf("mount with wrong credentials took %v to fail", d)
		}
	})

	// The snapshotter has the wrong credentials, the pull the right ones: the layers cannot
	// be mounted, so containerd downloads and unpacks them, and the container runs.
	t.Run("snapshotter with wrong credentials", func(t *testing.T) {
		s := wrong.startSnapshotter(t)
		const ns = "lazypull-e2e-auth-fallback"
		r := record("pull (snapshotter with wrong credentials)", good.lazypull(t, "pull", "--address", filepath.Join(s.containerd, "containerd.sock"), "--namespace", ns, "--plain-http", ref))
		if r.code != 0 {
			t.Fatalf("pull: exit %d:\n%s%s\nsnapshotter:\n%s", r.code, r.stdout, r.stderr, s.log)
		}
		if remote, all := s.remoteSnapshots(t, ns); remote != 0 || all != len(m.Layers) {
			t.Errorf("%d remote snapshots of %d, want %d ordinary ones", remote, all, len(m.Layers))
		}
		out := s.ctr(t, ns, "run", "--rm", "--snapshotter", "lazypull", ref, fmt.Sprintf("auth-fallback-%d", os.Getpid()))
		if strings.TrimSpace(out) != pythonOutput {
			t.Fatalf("container printed %q, want %q", out, pythonOutput)
		}
		// One warning per layer, each saying why (reason=auth, the registry, its 401).
		w := warnings(s.log.String())
		if len(w) != len(m.Layers) {
			t.Fatalf("%d warnings, want one per layer (%d):\n%s", len(w), len(m.Layers), strings.Join(w, "\n"))
		}
		for _, line := range w {
			if !strings.Contains(line, reg.addr) || !mentions401(line) || !strings.Contains(line, "reason=auth") {
				t.Errorf("the warning does not name the registry %s, its 401 and reason=auth:\n%s", reg.addr, line)
			}
		}
		t.Logf("warning: %s", w[0])
		record("snapshotter (wrong credentials)", result{stderr: s.log.String()})
		record("containerd (snapshotter with wrong credentials)", result{stderr: readFile(filepath.Join(s.containerd, "containerd.log"))})
	})
	record("snapshotter", result{stderr: sn.log.String()})
	record("containerd", result{stderr: readFile(filepath.Join(sn.containerd, "containerd.log"))})
}

// checkAuthFailure: the command failed with one line that names the registry and says 401
// or unauthorized, and did not crash.
func checkAuthFailure(t *testing.T, what string, r result, registry string) {
	t.Helper()
	out := r.stdout + r.stderr
	if r.code == 0 {
		t.Errorf("%s: exit 0; want a refusal\n%s", what, out)
		return
	}
	if strings.Contains(out, "panic:") || strings.Contains(out, "goroutine ") {
		t.Errorf("%s crashed:\n%s", what, out)
	}
	if !strings.Contains(r.stderr, registry) || !mentions401(r.stderr) {
		t.Errorf("%s: the error does not name the registry %s and its 401:\n%s", what, registry, r.stderr)
	}
	t.Logf("%s: %s", what, lastLine([]byte(r.stderr)))
}

func mentions401(s string) bool {
	l := strings.ToLower(s)
	return strings.Contains(l, "401") || strings.Contains(l, "unauthorized")
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}
