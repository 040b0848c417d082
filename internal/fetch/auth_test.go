package fetch

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"lazypull/internal/testutil"

	"github.com/google/go-containerregistry/pkg/authn"
)

// staticKeychain has credentials for one host.
type staticKeychain struct{ host, user, pass string }

func (k staticKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if r.RegistryStr() != k.host {
		return authn.Anonymous, nil
	}
	return authn.FromConfig(authn.AuthConfig{Username: k.user, Password: k.pass}), nil
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// tokenRegistry wraps a fake registry behind the bearer token flow: a request without the
// token gets 401 with a Bearer challenge whose realm is /token on the same server, which
// hands out the token for alice's credentials and the pull scope of the repository.
type tokenRegistry struct {
	*fakeRegistry
	host        string
	token       string
	tokenCalls  atomic.Int64
	challenged  atomic.Int64
	mu          sync.Mutex
	tokenScopes []string
}

func (tr *tokenRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/token" {
		tr.tokenCalls.Add(1)
		tr.mu.Lock()
		tr.tokenScopes = append(tr.tokenScopes, r.URL.Query()["scope"]...)
		tr.mu.Unlock()
		if r.Header.Get("Authorization") != "Basic "+b64("alice:pa55word") || r.URL.Query().Get("service") != "test-registry" {
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`, http.StatusUnauthorized)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"token": tr.token, "expires_in": 300})
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+tr.token {
		tr.challenged.Add(1)
		bearerChallenge(w, tr.host, tr.repo)
		return
	}
	tr.fakeRegistry.ServeHTTP(w, r)
}

func TestBearerTokenFlow(t *testing.T) {
	tr := &tokenRegistry{fakeRegistry: newFake("team/app"), token: "tok-123"}
	blob := testutil.RandBytes(30, 100000)
	d := tr.addBlob(blob)
	_, host := serve(t, tr)
	tr.host = host
	reg, lb := newReg(t, host, "team/app", WithKeychain(staticKeychain{host: host, user: "alice", pass: "pa55word"}))

	b := reg.Blob(d, int64(len(blob)))
	p := make([]byte, 100)
	if _, err := b.ReadAt(p, 5000); err != nil {
		t.Fatal(err)
	}
	if string(p) != string(blob[5000:5100]) {
		t.Fatal("wrong bytes")
	}
	// 401, token, the request again; then the token is reused.
	if _, err := b.ReadAt(p, 6000); err != nil {
		t.Fatal(err)
	}
	if c, tc, g := tr.challenged.Load(), tr.tokenCalls.Load(), tr.blobGets.Load(); c != 1 || tc != 1 || g != 2 {
		t.Fatalf("%d challenges, %d token requests, %d authorized blob requests; want 1, 1, 2", c, tc, g)
	}
	if !reflect.DeepEqual(tr.tokenScopes, []string{"repository:team/app:pull"}) {
		t.Fatalf("token scopes %q", tr.tokenScopes)
	}
	if s := reg.Stats(); s.Requests != 2 {
		t.Fatalf("stats %+v: the 401 and its answer are one request", s)
	}
	if strings.Contains(lb.String(), "tok-123") || strings.Contains(lb.String(), "pa55word") {
		t.Fatal("secret in the log")
	}
}

func TestBasicAuth(t *testing.T) {
	f := newFake("r")
	blob := testutil.RandBytes(31, 1000)
	d := f.addBlob(blob)
	var challenged atomic.Int64
	h := basicAuth("registry", func(u, p string) bool { return u == "alice" && p == "pa55word" }, &challenged, f)
	_, host := serve(t, h)
	reg, _ := newReg(t, host, "r", WithKeychain(staticKeychain{host: host, user: "alice", pass: "pa55word"}))
	b := reg.Blob(d, int64(len(blob)))
	for range 3 {
		if _, err := b.ReadAt(make([]byte, 10), 0); err != nil {
			t.Fatal(err)
		}
	}
	if challenged.Load() != 1 {
		t.Fatalf("%d challenges", challenged.Load())
	}
}

func TestAuthRefused(t *testing.T) {
	tr := &tokenRegistry{fakeRegistry: newFake("r"), token: "tok"}
	_, host := serve(t, tr)
	tr.host = host
	reg, lb := newReg(t, host, "r", WithKeychain(staticKeychain{host: host, user: "alice", pass: "wrong-pa55"}))
	_, err := reg.Blob(sha([]byte("x")), 100).ReadAt(make([]byte, 10), 0)
	var fe *Error
	if !errors.As(err, &fe) || fe.Temporary() || fe.StatusCode != http.StatusUnauthorized {
		t.Fatalf("error %v", err)
	}
	if !strings.Contains(err.Error(), "authenticate") || !strings.Contains(err.Error(), "401") {
		t.Fatalf("error %q does not say authentication failed", err)
	}
	if strings.Contains(err.Error(), "wrong-pa55") || strings.Contains(lb.String(), "wrong-pa55") {
		t.Fatal("password leaked")
	}
	if tr.tokenCalls.Load() != 1 {
		t.Fatalf("%d token requests; a refusal is not retried", tr.tokenCalls.Load())
	}
	// Anonymous: the registry still says 401 after the token dance.
	reg, _ = newReg(t, host, "r", WithKeychain(authn.NewMultiKeychain()))
	if _, err := reg.Blob(sha([]byte("x")), 100).ReadAt(make([]byte, 10), 0); err == nil {
		t.Fatal("anonymous read of a private registry worked")
	}
}

func TestParseChallenge(t *testing.T) {
	cases := []struct {
		in     []string
		scheme string
		params map[string]string
	}{
		{[]string{`Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"`},
			"Bearer", map[string]string{"realm": "https://auth.example/token", "service": "registry.example", "scope": "repository:a/b:pull"}},
		{[]string{`Basic realm="x"`}, "Basic", map[string]string{"realm": "x"}},
		// Bearer is preferred to Basic, in one header or across several.
		{[]string{`Basic realm="x", Bearer realm="https://t/", service=s`}, "Bearer", map[string]string{"realm": "https://t/", "service": "s"}},
		{[]string{`Basic realm="x"`, `bearer REALM="https://t/"`}, "bearer", map[string]string{"realm": "https://t/"}},
		{[]string{`Bearer realm="a\"b\\c"`}, "Bearer", map[string]string{"realm": `a"b\c`}},
		{[]string{`Negotiate`, `Basic`}, "Basic", map[string]string{}},
	}
	for _, c := range cases {
		ch, ok := parseChallenge(c.in)
		if !ok || ch.Scheme != c.scheme || !reflect.DeepEqual(ch.Parameters, c.params) {
			t.Errorf("%q: %+v %v, want %s %v", c.in, ch, ok, c.scheme, c.params)
		}
	}
	for _, bad := range [][]string{nil, {""}, {"Negotiate abc"}, {`Bearer service="x"`}, {`Bearer realm="unterminated`}} {
		if ch, ok := parseChallenge(bad); ok {
			t.Errorf("%q: got %+v", bad, ch)
		}
	}
}
