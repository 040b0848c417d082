package fetch

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"lazypull/internal/testutil"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func TestParseHosts(t *testing.T) {
	def := hostConfig{url: mustURL("https://reg.example/v2"), caps: capPull | capResolve}
	file := `
server = "https://upstream.example:8443"
skip_verify = true

[host."http://mirror-b:5000"]
  capabilities = ["pull", "resolve"]

[host."https://mirror-a/cache"]
  capabilities = ["pull"]
  skip_verify = true
  ca = "/etc/ca.pem"

[host."https://mirror-c/api/root"]
  override_path = true

[host."https://push-only"]
  capabilities = ["push"]

[host."https://mirror-d/v2"]
  capabilities = ["resolve", "push"]
`
	hosts, ignored, err := parseHosts([]byte(file), def)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, h := range hosts {
		got = append(got, h.url.String()+" "+capString(h.caps)+" "+boolString(h.skipVerify, "insecure")+boolString(h.mirror, " mirror"))
	}
	want := []string{
		"http://mirror-b:5000/v2 pull,resolve  mirror", // file order, not sorted
		"https://mirror-a/cache/v2 pull insecure mirror",
		"https://mirror-c/api/root pull,resolve  mirror",
		"https://mirror-d/v2 resolve  mirror",
		"https://upstream.example:8443/v2 pull,resolve insecure",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("hosts\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !reflect.DeepEqual(ignored, []string{`host."https://mirror-a/cache".ca`}) {
		t.Fatalf("ignored %q", ignored)
	}

	// No server: the default one; server capabilities may be narrowed.
	hosts, _, err = parseHosts([]byte("capabilities = [\"resolve\"]\n[host.\"http://m\"]\n"), def)
	if err != nil || len(hosts) != 2 || hosts[1].url.String() != "https://reg.example/v2" || hosts[1].caps != capResolve {
		t.Fatalf("default server: %+v %v", hosts, err)
	}

	for _, bad := range []string{
		`server = "ftp://x"`,
		`server = "https://"`,
		`server = "https://user:pw@x"`,
		`[host."x:5000"]`,
		`[host."https://m"]` + "\ncapabilities = [\"pull\", \"fly\"]",
		`capabilities = ["push"]`,
		`server = [1`,
	} {
		if _, _, err := parseHosts([]byte(bad), def); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func capString(c capability) string {
	var s []string
	if c&capPull != 0 {
		s = append(s, "pull")
	}
	if c&capResolve != 0 {
		s = append(s, "resolve")
	}
	return strings.Join(s, ",")
}

func boolString(b bool, s string) string {
	if b {
		return s
	}
	return ""
}

func mustURL(s string) *url.URL {
	u, err := endpointURL(s, true)
	if err != nil {
		panic(err)
	}
	return u
}

func writeHosts(t *testing.T, dir, host, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, host), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, host, "hosts.toml"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Mirrors are tried in order, then the server: a dead mirror and one without the blob are
// passed over for the next.
func TestMirrors(t *testing.T) {
	blob := testutil.RandBytes(50, 100000)
	raw := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` + strings.Repeat("a", 64) + `","size":2},"layers":[]}`)

	dead, deadHost := serve(t, newFake("lib/app"))
	dead.Close()
	empty := newFake("lib/app") // has nothing: 404
	_, emptyHost := serve(t, empty)
	mirror := newFake("lib/app")
	d := mirror.addBlob(blob)
	mirror.addManifest("v1", "application/vnd.oci.image.manifest.v1+json", raw)
	_, mirrorHost := serve(t, mirror)
	upstream := newFake("lib/app")
	upstream.addBlob(blob)
	upstream.addManifest("v1", "application/vnd.oci.image.manifest.v1+json", raw)
	_, upstreamHost := serve(t, upstream)

	dir := t.TempDir()
	// The reference names a registry that does not exist: only the file makes it work.
	writeHosts(t, dir, "registry.invalid:5000", `
server = "http://`+upstreamHost+`"
[host."http://`+deadHost+`"]
  capabilities = ["pull"]
[host."http://`+emptyHost+`"]
  capabilities = ["pull"]
[host."http://`+mirrorHost+`"]
  capabilities = ["pull"]
`)
	log, lb := testutil.NewLog(t)
	reg, err := openRef("registry.invalid:5000/lib/app:v1", WithHostsDir(dir), WithRetry(2, time.Millisecond), WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	ranges := []Range{{0, 1000}, {50000, 1000}}
	collectChecked(t, reg.Blob(d, int64(len(blob))), blob, ranges, ranges)
	if empty.blobGets.Load() != 1 || mirror.blobGets.Load() != 1 || upstream.blobGets.Load() != 0 {
		t.Fatalf("blob requests: empty mirror %d, mirror %d, server %d", empty.blobGets.Load(), mirror.blobGets.Load(), upstream.blobGets.Load())
	}
	if !strings.Contains(lb.String(), "trying the next") {
		t.Fatal("failover not logged")
	}
	// Tags resolve only where resolve is allowed: the server. Digests come from mirrors.
	img, err := reg.Resolve(t.Context(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if upstream.manGets.Load() != 1 || mirror.manGets.Load() != 0 {
		t.Fatalf("tag: %d manifest requests to the server, %d to the mirror", upstream.manGets.Load(), mirror.manGets.Load())
	}
	if _, err := reg.Resolve(t.Context(), img.Descriptor.Digest.String(), nil); err != nil {
		t.Fatal(err)
	}
	if mirror.manGets.Load() != 1 {
		t.Fatalf("digest: %d manifest requests to the mirror", mirror.manGets.Load())
	}
	// A blob no endpoint has: the server's 404, not temporary.
	_, err = reg.Blob(sha([]byte("none")), 10).ReadAt(make([]byte, 5), 0)
	var fe *Error
	if !errors.As(err, &fe) || fe.StatusCode != 404 || fe.Registry != upstreamHost {
		t.Fatalf("missing blob: %v", err)
	}
}

func TestHostsDirLookup(t *testing.T) {
	blob, d, _, dir := hostsServer(t, "app", 51, "_default")
	reg, err := openRef("elsewhere.invalid/app", WithHostsDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Blob(d, int64(len(blob))).ReadAt(make([]byte, 10), 0); err != nil {
		t.Fatalf("_default: %v", err)
	}
	// A host with a directory of its own does not use _default.
	writeHosts(t, dir, "elsewhere.invalid", `server = "http://127.0.0.1:1"`)
	reg, err = openRef("elsewhere.invalid/app", WithHostsDir(dir), WithRetry(1, 0))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Blob(d, int64(len(blob))).ReadAt(make([]byte, 10), 0); err == nil {
		t.Fatal("own hosts.toml not used")
	}
	if _, err := openRef("x.invalid/app", WithHostsDir(filepath.Join(dir, "missing"))); err == nil {
		t.Fatal("missing hosts dir: no error")
	}
	writeHosts(t, dir, "bad.invalid", `server = "ftp://x"`)
	if _, err := openRef("bad.invalid/app", WithHostsDir(dir)); err == nil || !strings.Contains(err.Error(), "hosts.toml") {
		t.Fatalf("bad hosts.toml: %v", err)
	}
	// skip_verify needs a transport it can configure.
	writeHosts(t, dir, "tls.invalid", "skip_verify = true\n")
	if _, err := openRef("tls.invalid/app", WithHostsDir(dir), WithTransport(http.DefaultTransport)); err != nil {
		t.Fatalf("skip_verify with an *http.Transport: %v", err)
	}
	if _, err := openRef("tls.invalid/app", WithHostsDir(dir), WithTransport(roundTripFunc(nil))); err == nil {
		t.Fatal("skip_verify with a custom transport: no error")
	}
}

// TestHostsDirPort: the directory of a registry host:port is found under containerd's name
// for it, host_port_, as containerd finds it, before host:port itself.
func TestHostsDirPort(t *testing.T) {
	blob, d, _, dir := hostsServer(t, "app", 52, "reg.invalid_5000_")
	writeHosts(t, dir, "reg.invalid:5000", `server = "http://127.0.0.1:1"`)
	reg, err := openRef("reg.invalid:5000/app", WithHostsDir(dir), WithRetry(1, 0))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Blob(d, int64(len(blob))).ReadAt(make([]byte, 10), 0); err != nil {
		t.Fatalf("reg.invalid_5000_: %v", err)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestOptions(t *testing.T) {
	bad := map[string]Option{
		"zero concurrency": WithMaxConcurrency(0),
		"zero attempts":    WithRetry(0, time.Second),
		"negative backoff": WithRetry(3, -1),
		"nil keychain":     WithKeychain(nil),
		"nil logger":       WithLogger(nil),
		"nil transport":    WithTransport(nil),
		"empty hosts dir":  WithHostsDir(""),
		"negative gap":     WithCoalescing(-1, 10),
		"zero request":     WithCoalescing(0, 0),
		"nil metrics":      WithMetrics(nil),
	}
	for name, opt := range bad {
		if _, err := openRef("example.invalid/r", opt); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := openRef("not a reference!"); err == nil {
		t.Error("bad reference: no error")
	}
	r, err := openRef("example.invalid:5000/a/b:tag", WithMaxConcurrency(1), WithPlainHTTP())
	if err != nil {
		t.Fatal(err)
	}
	if r.Host() != "example.invalid:5000" || r.Repository() != "a/b" || cap(r.sem) != 1 || r.endpoints[0].base != "http://example.invalid:5000/v2" {
		t.Fatalf("registry %+v", r)
	}
}

// skip_verify in hosts.toml reaches a registry whose certificate nobody signed; without it
// the TLS error is final, not retried.
func TestSkipVerify(t *testing.T) {
	f := newFake("app")
	blob := testutil.RandBytes(52, 1000)
	d := f.addBlob(blob)
	srv := httptest.NewTLSServer(f)
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "https://")
	dir := t.TempDir()
	writeHosts(t, dir, host, "skip_verify = true\n")
	reg, err := openRef(host+"/app", WithHostsDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Blob(d, int64(len(blob))).ReadAt(make([]byte, 10), 0); err != nil {
		t.Fatalf("skip_verify: %v", err)
	}
	reg, err = openRef(host+"/app", WithRetry(3, time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	finalError(t, reg, d, int64(len(blob)), "certificate") // an unverified certificate is not retried
}

// The default registry's directory goes by containerd's short name for it.
func TestHostsDirDefaultRegistry(t *testing.T) {
	blob, d, host, dir := hostsServer(t, "library/app", 53, strings.TrimPrefix(name.DefaultRegistry, "index."))
	// Nothing may leave the machine, whatever goes wrong.
	loopback := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.URL.Host != host {
			return nil, fmt.Errorf("test: refusing request to %s", r.URL.Host)
		}
		return http.DefaultTransport.RoundTrip(r)
	})
	reg, err := openRef("app", WithHostsDir(dir), WithTransport(loopback), WithRetry(1, 0))
	if err != nil {
		t.Fatal(err)
	}
	if reg.Host() != name.DefaultRegistry || reg.Repository() != "library/app" {
		t.Fatalf("registry %s, repository %s", reg.Host(), reg.Repository())
	}
	if _, err := reg.Blob(d, int64(len(blob))).ReadAt(make([]byte, 10), 0); err != nil {
		t.Fatal(err)
	}
}

// hostsServer serves a random blob of 1000 bytes (seed) from a fake registry of repo, and
// writes a hosts directory whose DIR/name/hosts.toml names that registry as the server. It
// returns the blob, its digest, the registry's host:port and the directory.
func hostsServer(t *testing.T, repo string, seed uint64, name string) (blob []byte, d v1.Hash, host, dir string) {
	t.Helper()
	f := newFake(repo)
	blob = testutil.RandBytes(seed, 1000)
	d = f.addBlob(blob)
	_, host = serve(t, f)
	dir = t.TempDir()
	writeHosts(t, dir, name, `server = "http://`+host+`"`)
	return blob, d, host, dir
}
