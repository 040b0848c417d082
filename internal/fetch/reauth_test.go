package fetch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"lazypull/internal/testutil"
)

// expiringTokens is a registry behind the bearer token flow whose token server hands out
// tokens that live ttl, for the one password it takes at the time (which the test
// changes: the credentials rotated). It counts token requests and 401s.
type expiringTokens struct {
	*fakeRegistry
	host string
	ttl  time.Duration

	tokenCalls atomic.Int64
	refused    atomic.Int64 // 401s of the registry (not of the token server)

	mu       sync.Mutex
	password string               // what the token server takes for "alice"
	tokens   map[string]time.Time // token -> until
	seq      int
	used     []string // the passwords token requests came with
}

func (tr *expiringTokens) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/token" {
		tr.serveToken(w, r)
		return
	}
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	tr.mu.Lock()
	until, ok := tr.tokens[tok]
	tr.mu.Unlock()
	if !ok || !time.Now().Before(until) {
		tr.refused.Add(1)
		bearerChallenge(w, tr.host, tr.repo)
		return
	}
	tr.fakeRegistry.ServeHTTP(w, r)
}

func (tr *expiringTokens) serveToken(w http.ResponseWriter, r *http.Request) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.tokenCalls.Add(1)
	user, pass, _ := r.BasicAuth()
	tr.used = append(tr.used, pass)
	if user != "alice" || pass != tr.password {
		http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`, http.StatusUnauthorized)
		return
	}
	tr.seq++
	tok := fmt.Sprintf("tok-%d", tr.seq)
	tr.tokens[tok] = time.Now().Add(tr.ttl)
	_ = json.NewEncoder(w).Encode(map[string]any{"token": tok, "expires_in": int(tr.ttl.Seconds())})
}

func (tr *expiringTokens) setPassword(p string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.password = p
	clear(tr.tokens) // the old password's tokens are revoked with it
}

// rotatingCredentials is what a CRI proxy's store is to the client: the credentials of the
// last pull, replaced when a pull comes with new ones.
type rotatingCredentials struct {
	mu       sync.Mutex
	password string
	asked    []string // host/repo of each look-up
}

func (c *rotatingCredentials) Credentials(_ context.Context, host, repo string) (string, string, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.asked = append(c.asked, host+"/"+repo)
	return "alice", c.password, true, nil
}

func (c *rotatingCredentials) set(p string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.password = p
}

// TestBearerTokensExpire: tokens that live a second are fetched again, with the
// credentials looked up again, when the registry refuses one: reads long after the first
// succeed, each 401 costs one token request (shared by the reads that ran into it
// together), credentials replaced at the source are the ones used, and wrong ones fail
// with one token request, an error naming the registry, and no secret in it or the log.
// In a synctest bubble, the registry in process: an hour passes in no time.
func TestBearerTokensExpire(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const host = "127.0.0.1:5000"
		tr := &expiringTokens{fakeRegistry: newFake("team/app"), host: host, ttl: time.Second,
			password: "first-s3cret", tokens: map[string]time.Time{}}
		blob := testutil.RandBytes(40, 100000)
		d := tr.addBlob(blob)
		creds := &rotatingCredentials{password: "first-s3cret"}
		reg, lb := newReg(t, host, "team/app", WithTransport(inProcess(tr)), WithCredentials(creds))
		b := reg.Blob(d, int64(len(blob)))
		read := func(what string, off int64) {
			t.Helper()
			p := make([]byte, 100)
			if _, err := b.ReadAt(p, off); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			if string(p) != string(blob[off:off+100]) {
				t.Fatalf("%s: wrong bytes", what)
			}
		}
		counts := func(what string, tokens, refused int64) {
			t.Helper()
			if tc, r := tr.tokenCalls.Load(), tr.refused.Load(); tc != tokens || r != refused {
				t.Fatalf("%s: %d token requests, %d 401s; want %d, %d", what, tc, r, tokens, refused)
			}
		}

		read("first read", 0)
		read("second read", 1000)
		counts("two reads within the token's life", 1, 1)

		// An hour of reads, one every 30 s: every one finds its token expired.
		for i := range 120 {
			time.Sleep(30 * time.Second)
			read(fmt.Sprintf("read %d after %v", i, time.Duration(i+1)*30*time.Second), int64(i*100))
		}
		counts("an hour of reads", 121, 121)

		// Reads that run into the expired token together share the new one.
		time.Sleep(time.Minute)
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Go(func() { read(fmt.Sprintf("read %d of 8 together", i), int64(i*1000)) })
		}
		wg.Wait()
		if tc := tr.tokenCalls.Load(); tc != 122 {
			t.Fatalf("8 reads at once after the token expired: %d token requests in all, want 122 (one more)", tc)
		}

		// The credentials rotate: the registry takes only the new password (and revokes
		// the old one's tokens), the source has it (a later pull came with it).
		tr.setPassword("second-s3cret")
		creds.set("second-s3cret")
		refused := tr.refused.Load()
		read("a read after the credentials rotated", 500)
		counts("the read after the rotation", 123, refused+1)
		if u := tr.used[len(tr.used)-1]; u != "second-s3cret" {
			t.Fatalf("the token request after the rotation came with %q", u)
		}

		// Wrong credentials: one token request, refused; the read fails naming the
		// registry, and says nothing of the secret.
		creds.set("wrong-s3cret")
		time.Sleep(2 * time.Second)
		_, err := b.ReadAt(make([]byte, 10), 0)
		var fe *Error
		if !errors.As(err, &fe) || fe.Temporary() || fe.StatusCode != http.StatusUnauthorized {
			t.Fatalf("read with wrong credentials: %v; want a final 401", err)
		}
		if !strings.Contains(err.Error(), host) || !strings.Contains(err.Error(), "authenticate") {
			t.Errorf("error %q does not name the registry %s and the authentication", err, host)
		}
		if tc := tr.tokenCalls.Load(); tc != 124 {
			t.Errorf("wrong credentials: %d token requests in all, want 124 (one more)", tc)
		}
		for _, secret := range []string{"first-s3cret", "second-s3cret", "wrong-s3cret", "tok-"} {
			if strings.Contains(err.Error(), secret) || strings.Contains(lb.String(), secret) {
				t.Errorf("%q in the error or the log:\n%v\n%s", secret, err, lb)
			}
		}
		// The source is asked for the image's registry and repository.
		if a := creds.asked[0]; a != host+"/team/app" {
			t.Errorf("credentials asked for %q, want %s/team/app", a, host)
		}
	})
}

// TestBasicCredentialsRotate: with basic auth, a request the registry refuses with the
// credentials it was sent with has them looked up again and is sent once more.
func TestBasicCredentialsRotate(t *testing.T) {
	f := newFake("r")
	blob := testutil.RandBytes(41, 1000)
	d := f.addBlob(blob)
	var mu sync.Mutex
	password := "one"
	var refused atomic.Int64
	h := basicAuth("registry", func(u, p string) bool {
		mu.Lock()
		defer mu.Unlock()
		return u == "alice" && p == password
	}, &refused, f)
	_, host := serve(t, h)
	creds := &rotatingCredentials{password: "one"}
	reg, _ := newReg(t, host, "r", WithCredentials(creds))
	b := reg.Blob(d, int64(len(blob)))
	if _, err := b.ReadAt(make([]byte, 10), 0); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	password = "two"
	mu.Unlock()
	creds.set("two")
	if _, err := b.ReadAt(make([]byte, 10), 0); err != nil {
		t.Fatalf("a read after the password changed: %v", err)
	}
	if n := refused.Load(); n != 2 {
		t.Errorf("%d 401s; want 2 (the first challenge, the old password's)", n)
	}
	// The registry moves on, the source has a wrong password.
	mu.Lock()
	password = "three"
	mu.Unlock()
	creds.set("wrong")
	if _, err := b.ReadAt(make([]byte, 10), 0); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("a read with a wrong password: %v; want a 401", err)
	}
	if n := refused.Load(); n != 4 {
		t.Errorf("%d 401s; want 4 (one more, sent once more, refused again)", n)
	}
}

// TestCredentialsForTheImageAtAMirror: a mirror that asks for credentials is given the
// Credentials of the image's own registry and repository (they were given for the image),
// looked up by those, not by the mirror's host; the keychain is asked for the mirror's.
func TestCredentialsForTheImageAtAMirror(t *testing.T) {
	f := newFake("lib/app")
	blob := testutil.RandBytes(42, 1000)
	d := f.addBlob(blob)
	h := basicAuth("mirror", func(u, p string) bool { return u == "kube" && p == "s3cret" }, nil, f)
	_, mirrorHost := serve(t, h)
	dir := t.TempDir()
	writeHosts(t, dir, "registry.invalid:5000", `
server = "http://registry.invalid:5000"
[host."http://`+mirrorHost+`"]
  capabilities = ["pull"]
`)
	var asked, keychainAsked []string
	cr := credsFunc(func(_ context.Context, host, repo string) (string, string, bool, error) {
		asked = append(asked, host+"/"+repo)
		if host == "registry.invalid:5000" && repo == "lib/app" {
			return "kube", "s3cret", true, nil
		}
		return "", "", false, nil
	})
	kc := keychainFunc(func(r authn.Resource) (authn.Authenticator, error) {
		keychainAsked = append(keychainAsked, r.String())
		return authn.Anonymous, nil
	})
	reg, err := openRef("registry.invalid:5000/lib/app:v1", WithHostsDir(dir), WithRetry(1, time.Millisecond), WithCredentials(cr), WithKeychain(kc))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Blob(d, int64(len(blob))).ReadAt(make([]byte, 10), 0); err != nil {
		t.Fatalf("read through the mirror with the image's credentials: %v", err)
	}
	if len(asked) != 1 || asked[0] != "registry.invalid:5000/lib/app" || len(keychainAsked) != 0 {
		t.Errorf("Credentials asked for %q, the keychain for %q; want the image's registry and repository once, the keychain not", asked, keychainAsked)
	}
}

type keychainFunc func(authn.Resource) (authn.Authenticator, error)

func (f keychainFunc) Resolve(r authn.Resource) (authn.Authenticator, error) { return f(r) }
