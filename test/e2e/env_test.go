// Package e2e runs lazypull's binary against a real registry (Debian's docker-registry) and a
// real containerd, both started by scripts/test.sh on loopback and private sockets.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

type env struct {
	registry   string // host:port on loopback
	containerd string // socket
	images     string // OCI layouts built by scripts/build-test-image.sh
	bin        string // lazypull
	// cmdEnv is added to the environment of every command the helpers start with this env
	// (convert, lazypull, the snapshotter, mounts): DOCKER_CONFIG for a registry behind
	// auth. See withRegistry.
	cmdEnv []string
}

// withRegistry returns a copy of e whose images live in registry and whose commands run
// with extra in their environment.
func (e *env) withRegistry(registry string, extra ...string) *env {
	c := *e
	c.registry = registry
	c.cmdEnv = append(append([]string(nil), e.cmdEnv...), extra...)
	return &c
}

// command is exec.Command with e's environment.
func (e *env) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	if len(e.cmdEnv) > 0 {
		cmd.Env = append(os.Environ(), e.cmdEnv...)
	}
	return cmd
}

// lazypull runs the lazypull binary with e's environment.
func (e *env) lazypull(t *testing.T, args ...string) result {
	t.Helper()
	return runEnv(t, e.cmdEnv, e.bin, args...)
}

// setup returns the environment scripts/test.sh prepared. Outside it (plain `go test`) the
// tests skip, saying so; under it (LAZYPULL_E2E=1) anything missing is a failure.
func setup(t *testing.T) *env {
	t.Helper()
	required := os.Getenv("LAZYPULL_E2E") == "1"
	e := &env{
		registry:   os.Getenv("LAZYPULL_TEST_REGISTRY"),
		containerd: os.Getenv("LAZYPULL_TEST_CONTAINERD"),
		images:     os.Getenv("LAZYPULL_TEST_IMAGES"),
		bin:        os.Getenv("LAZYPULL_BIN"),
	}
	var missing []string
	for name, v := range map[string]string{"LAZYPULL_TEST_REGISTRY": e.registry, "LAZYPULL_TEST_CONTAINERD": e.containerd, "LAZYPULL_TEST_IMAGES": e.images, "LAZYPULL_BIN": e.bin} {
		if v == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		if required {
			t.Fatalf("LAZYPULL_E2E=1 but %v unset: run through scripts/test.sh", missing)
		}
		t.Skipf("SKIP END-TO-END TEST %s: no registry/containerd (%v unset); `make test` runs it", t.Name(), missing)
	}
	for _, tool := range []string{"ctr", "skopeo", "zstd"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed: run make deps", tool)
		}
	}
	if err := checkContainerd(e.containerd); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(e.images, "python", "index.json")); err != nil {
		t.Fatalf("test image missing: %v (scripts/build-test-image.sh builds it)", err)
	}
	return e
}

// containerdVersion is the containerd the tests run against: CONTAINERD_VERSION, which
// scripts/test.sh sets for each of its passes ("1.6", then "2" for the tests that run
// containers) and scripts/containerd.sh reads for the containerds the tests start; Debian's
// 1.6 when unset.
func containerdVersion() string {
	if v := os.Getenv("CONTAINERD_VERSION"); v != "" {
		return v
	}
	return "1.6"
}

// checkContainerd checks, once per test binary, that the ctr on PATH and the containerd at
// sock are of containerdVersion's major version: a test meant for containerd 2 that ran
// against 1.6 (or with 1.6's ctr) would pass without testing what it says.
func checkContainerd(sock string) error {
	containerdChecked.once.Do(func() { containerdChecked.err = checkContainerdVersion(sock) })
	return containerdChecked.err
}

var containerdChecked struct {
	once sync.Once
	err  error
}

func checkContainerdVersion(sock string) error {
	want := strings.SplitN(containerdVersion(), ".", 2)[0] + "."
	out, err := exec.Command("ctr", "--version").Output()
	if err != nil {
		return fmt.Errorf("ctr --version: %v", err)
	}
	// "ctr github.com/containerd/containerd/v2 2.4.2+unknown"
	if f := strings.Fields(string(out)); len(f) < 3 || !strings.HasPrefix(strings.TrimPrefix(f[2], "v"), want) {
		return fmt.Errorf("CONTAINERD_VERSION=%s but the ctr on PATH is %q: scripts/test.sh puts that version's ctr first on PATH", containerdVersion(), strings.TrimSpace(string(out)))
	}
	out, err = exec.Command("ctr", "--address", sock, "version").Output()
	if err != nil {
		return fmt.Errorf("ctr --address %s version: %v", sock, err)
	}
	_, server, _ := strings.Cut(string(out), "Server:")
	var v string
	for _, line := range strings.Split(server, "\n") {
		if k, val, ok := strings.Cut(strings.TrimSpace(line), ":"); ok && k == "Version" {
			v = strings.TrimSpace(val)
		}
	}
	if !strings.HasPrefix(strings.TrimPrefix(v, "v"), want) {
		return fmt.Errorf("CONTAINERD_VERSION=%s but the containerd at %s is %q", containerdVersion(), sock, v)
	}
	return nil
}

type result struct {
	stdout, stderr string
	code           int
}

// run runs a command and returns its output; it fails the test only if it cannot start.
func run(t *testing.T, name string, args ...string) result {
	t.Helper()
	return runEnv(t, nil, name, args...)
}

// runEnv is run with extra in the command's environment.
func runEnv(t *testing.T, extra []string, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if len(extra) > 0 {
		cmd.Env = append(os.Environ(), extra...)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
		}
		r.code = ee.ExitCode()
	}
	return r
}

// must runs a command that has to succeed and returns its stdout.
func must(t *testing.T, name string, args ...string) string {
	t.Helper()
	return mustEnv(t, nil, name, args...)
}

// mustEnv is must with extra in the command's environment.
func mustEnv(t *testing.T, extra []string, name string, args ...string) string {
	t.Helper()
	r := runEnv(t, extra, name, args...)
	if r.code != 0 {
		t.Fatalf("%s %s: exit %d\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

func (e *env) ctr(t *testing.T, args ...string) string {
	t.Helper()
	return must(t, "ctr", append([]string{"--address", e.containerd, "--namespace", "lazypull-e2e"}, args...)...)
}

// push copies an OCI layout image into the registry unchanged.
func (e *env) push(t *testing.T, layout, tag, ref string) {
	t.Helper()
	must(t, "skopeo", "copy", "--quiet", "--dest-tls-verify=false", fmt.Sprintf("oci:%s:%s", layout, tag), "docker://"+ref)
}

// tool returns the path of a command that scripts/deps.sh installs, from PATH or from the
// Go tools it puts in bin/tools. Missing, it fails the test under scripts/test.sh
// (LAZYPULL_E2E=1) and skips it otherwise.
func tool(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if p, err := filepath.Abs(filepath.Join("..", "..", "bin", "tools", name)); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("LAZYPULL_E2E") == "1" {
		t.Fatalf("%s not installed: run make deps (scripts/deps.sh)", name)
	}
	t.Skipf("SKIP %s: %s not installed (make deps installs it)", t.Name(), name)
	return ""
}
