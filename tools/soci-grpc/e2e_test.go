package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestLazyPullE2E runs SOCI end to end on loopback: the test image (scripts/build-test-image.sh)
// pushed plainly as gzip to a docker-registry, its SOCI-enabled image made and pushed by
// `soci-grpc create`, `soci-grpc serve` as containerd's proxy plugin "soci", `soci-grpc rpull`
// through a proxy that counts the bytes the registry sends, then `ctr run --snapshotter soci`
// of python3 -c 'print(1)'. It checks that every layer was mounted from the registry and that
// the bytes fetched are well below the image's. Root, containerd, docker-registry, skopeo and
// debootstrap (or its cached layers) are needed; without them it skips, saying so.
func TestLazyPullE2E(t *testing.T) {
	e := newE2E(t)
	layout := filepath.Join(e.dir, "img")
	e.run("build-test-image", filepath.Join(e.scripts, "build-test-image.sh"), layout)
	lay := filepath.Join(layout, "python")
	reg := e.startRegistry()
	e.run("skopeo", "skopeo", "copy", "--quiet", "--dest-tls-verify=false", "oci:"+lay+":python", "docker://"+reg+"/test/python:python")
	out := e.run("create", e.bin, "create", "--layout", lay, "--tag", "python", "--plain-http",
		"--min-layer-size", "1000000", "--push", reg+"/test/python:python-soci")
	if !strings.Contains(out, "soci-index sha256:") {
		t.Fatalf("create printed no SOCI index digest:\n%s", out)
	}
	imageBytes, layers := layerBytes(t, lay)

	counted := e.countingProxy(reg)
	ctd := e.startNode()
	ref := counted.addr + "/test/python:python-soci"
	start := time.Now()
	e.run("rpull", e.bin, "rpull", "--address", ctd, "--plain-http", ref)
	pulled := time.Since(start)
	out = e.run("ctr run", filepath.Join(e.ctdDir, "ctr"), "--address", ctd, "run", "--rm", "--snapshotter", "soci", ref, "t1", "python3", "-c", "print(1)")
	total := time.Since(start)
	if strings.TrimSpace(out) != "1" {
		t.Fatalf("ctr run printed %q, want 1", out)
	}
	log := e.snapshotterLog()
	if n := strings.Count(log, "remote snapshot successfully prepared"); n != layers {
		t.Errorf("%d of the %d layers mounted from the registry (the others were pulled whole); log:\n%s", n, layers, log)
	}
	got := counted.bytes.Load()
	t.Logf("SOCI: rpull %v, rpull + run %v; %d bytes in %d requests from the registry, of %d bytes of layers (%.1f%%)",
		pulled.Round(time.Millisecond), total.Round(time.Millisecond), got, counted.requests.Load(), imageBytes, 100*float64(got)/float64(imageBytes))
	if got <= 0 || got > imageBytes/2 {
		t.Errorf("fetched %d bytes from the registry for an image of %d: want some, and at most half", got, imageBytes)
	}
}

type e2e struct {
	t                   *testing.T
	dir, scripts, bin   string
	snLog               string
	ctx                 context.Context
	registryDir, ctdDir string
}

// newE2E checks what the test needs, skipping loudly without it, and builds the runner.
func newE2E(t *testing.T) *e2e {
	if os.Getuid() != 0 {
		t.Skip("SKIPPED: TestLazyPullE2E needs root (FUSE, overlayfs, containerd)")
	}
	for _, p := range []string{"/usr/bin/containerd", "/usr/bin/docker-registry"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("SKIPPED: TestLazyPullE2E needs %s (scripts/deps.sh installs it)", p)
		}
	}
	if _, err := exec.LookPath("skopeo"); err != nil {
		t.Skip("SKIPPED: TestLazyPullE2E needs skopeo (scripts/deps.sh installs it)")
	}
	scripts, err := filepath.Abs("../../scripts")
	if err != nil {
		t.Fatal(err)
	}
	// Short: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "soci")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	e := &e2e{t: t, dir: dir, scripts: scripts, bin: filepath.Join(dir, "soci-grpc"), ctx: ctx}
	e.run("go build", "go", "build", "-o", e.bin, ".")
	return e
}

// run runs a command to its end and returns its stdout; it fails the test with its output if
// the command fails.
func (e *e2e) run(what, name string, args ...string) string {
	e.t.Helper()
	cmd := exec.CommandContext(e.ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		e.t.Fatalf("%s: %v\nstdout:\n%s\nstderr:\n%s", what, err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// startRegistry starts a docker-registry on a free loopback port and returns its address.
func (e *e2e) startRegistry() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	e.registryDir = filepath.Join(e.dir, "reg")
	e.run("registry start", filepath.Join(e.scripts, "registry.sh"), "start", e.registryDir, addr)
	e.t.Cleanup(func() {
		exec.Command(filepath.Join(e.scripts, "registry.sh"), "stop", e.registryDir).Run()
	})
	return addr
}

// startNode starts `soci-grpc serve` and a containerd (scripts/containerd.sh, the version of
// CONTAINERD_VERSION) with it as proxy plugin "soci", and returns containerd's socket. Cleanup
// stops containerd first (it unmounts the containers' overlays), then the snapshotter by its
// PID with SIGTERM (it unmounts its FUSE mounts), then unmounts whatever is left.
func (e *e2e) startNode() string {
	sock := filepath.Join(e.dir, "soci.sock")
	e.snLog = filepath.Join(e.dir, "soci.log")
	logf, err := os.Create(e.snLog)
	if err != nil {
		e.t.Fatal(err)
	}
	sn := exec.Command(e.bin, "serve", "--address", sock, "--root", filepath.Join(e.dir, "sroot"), "--log-level", "info")
	sn.Stdout, sn.Stderr = logf, logf
	if err := sn.Start(); err != nil {
		e.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { sn.Wait(); logf.Close(); close(done) }()
	e.ctdDir = filepath.Join(e.dir, "ctd")
	e.t.Cleanup(func() {
		exec.Command(filepath.Join(e.scripts, "containerd.sh"), "stop", e.ctdDir).Run()
		sn.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			sn.Process.Kill()
			<-done
		}
		unmountUnder(e.t, e.dir)
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case <-done:
			e.t.Fatalf("soci-grpc serve exited at start:\n%s", e.snapshotterLog())
		default:
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("no socket %s after 30 s:\n%s", sock, e.snapshotterLog())
		}
	}
	cmd := exec.CommandContext(e.ctx, filepath.Join(e.scripts, "containerd.sh"), "start", e.ctdDir)
	cmd.Env = append(os.Environ(), "CONTAINERD_PROXY_SNAPSHOTTER="+sock, "CONTAINERD_PROXY_SNAPSHOTTER_NAME=soci")
	if out, err := cmd.CombinedOutput(); err != nil {
		e.t.Fatalf("containerd start: %v\n%s", err, out)
	}
	return filepath.Join(e.ctdDir, "containerd.sock")
}

func (e *e2e) snapshotterLog() string {
	b, _ := os.ReadFile(e.snLog)
	return string(b)
}

// unmountUnder unmounts every mount under dir, deepest first.
func unmountUnder(t *testing.T, dir string) {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Error(err)
		return
	}
	lines := strings.Split(string(b), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		f := strings.Fields(lines[i])
		if len(f) > 1 && strings.HasPrefix(f[1], dir+"/") {
			if err := syscall.Unmount(f[1], syscall.MNT_DETACH); err != nil {
				t.Errorf("unmount %s: %v", f[1], err)
			}
		}
	}
}

type counter struct {
	addr            string
	bytes, requests atomic.Int64
}

// countingProxy serves reg through a loopback reverse proxy that counts the response body
// bytes and the requests, and returns it.
func (e *e2e) countingProxy(reg string) *counter {
	c := &counter{}
	p := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: reg})
	p.ModifyResponse = func(r *http.Response) error {
		c.requests.Add(1)
		r.Body = &countingBody{ReadCloser: r.Body, n: &c.bytes}
		return nil
	}
	srv := httptest.NewServer(p)
	e.t.Cleanup(srv.Close)
	c.addr = strings.TrimPrefix(srv.URL, "http://")
	return c
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// layerBytes returns the total size and the number of the layers of the image tagged python
// in the OCI layout dir.
func layerBytes(t *testing.T, dir string) (int64, int) {
	var index struct {
		Manifests []struct {
			Digest      string            `json:"digest"`
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
	}
	readJSON(t, filepath.Join(dir, "index.json"), &index)
	for _, m := range index.Manifests {
		if m.Annotations["org.opencontainers.image.ref.name"] != "python" {
			continue
		}
		var manifest struct {
			Layers []struct {
				Size int64 `json:"size"`
			} `json:"layers"`
		}
		readJSON(t, filepath.Join(dir, "blobs", strings.Replace(m.Digest, ":", "/", 1)), &manifest)
		var sum int64
		for _, l := range manifest.Layers {
			sum += l.Size
		}
		return sum, len(manifest.Layers)
	}
	t.Fatalf("no image tagged python in %s", dir)
	return 0, 0
}

func readJSON(t *testing.T, path string, v any) {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(fmt.Errorf("%s: %w", path, err))
	}
}
