package criproxy

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestCredentialForms reads each form of CRI AuthConfig as containerd does, and keys it by
// the image's registry and repository.
func TestCredentialForms(t *testing.T) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	cases := []struct {
		name  string
		image string
		auth  *runtime.AuthConfig
		key   string
		want  authn.AuthConfig
		err   string // in the error; "" for none
	}{
		{"user and password", "registry.example:5000/team/app:v1",
			&runtime.AuthConfig{Username: "u", Password: "p"},
			"registry.example:5000/team/app", authn.AuthConfig{Username: "u", Password: "p"}, ""},
		{"auth, padded with NULs", "registry.example/app@sha256:" + strings.Repeat("a", 64),
			&runtime.AuthConfig{Auth: b64("u:p:q\x00\x00")},
			"registry.example/app", authn.AuthConfig{Username: "u", Password: "p:q"}, ""},
		{"identity token", "registry.example/app",
			&runtime.AuthConfig{IdentityToken: "idt"},
			"registry.example/app", authn.AuthConfig{IdentityToken: "idt"}, ""},
		{"registry token", "registry.example/app",
			&runtime.AuthConfig{RegistryToken: "rt"},
			"registry.example/app", authn.AuthConfig{RegistryToken: "rt"}, ""},
		{"the user name wins, as in containerd", "registry.example/app",
			&runtime.AuthConfig{Username: "u", Password: "p", IdentityToken: "idt", Auth: b64("x:y")},
			"registry.example/app", authn.AuthConfig{Username: "u", Password: "p"}, ""},
		{"docker hub short name", "debian:12",
			&runtime.AuthConfig{Username: "u", Password: "p", ServerAddress: "https://index.docker.io/v1/"},
			"index.docker.io/library/debian", authn.AuthConfig{Username: "u", Password: "p"}, ""},
		{"docker hub by another name", "registry-1.docker.io/team/app",
			&runtime.AuthConfig{Username: "u", Password: "p", ServerAddress: "docker.io"},
			"index.docker.io/team/app", authn.AuthConfig{Username: "u", Password: "p"}, ""},
		{"server address of the image's registry", "REGISTRY.example:5000/app",
			&runtime.AuthConfig{Username: "u", Password: "p", ServerAddress: "registry.example:5000"},
			"registry.example:5000/app", authn.AuthConfig{Username: "u", Password: "p"}, ""},
		{"server address of another registry", "registry.example/app",
			&runtime.AuthConfig{Username: "u", Password: "s3cr3t", ServerAddress: "https://other.example"},
			"", authn.AuthConfig{}, "for other.example, not for the image's registry registry.example"},
		{"no credentials", "registry.example/app", nil, "", authn.AuthConfig{}, errNoCredential.Error()},
		{"empty credentials", "registry.example/app", &runtime.AuthConfig{ServerAddress: "registry.example"},
			"", authn.AuthConfig{}, errNoCredential.Error()},
		{"auth not base64", "registry.example/app", &runtime.AuthConfig{Auth: "s3cr3t!"},
			"", authn.AuthConfig{}, "auth is not base64"},
		{"auth without a colon", "registry.example/app", &runtime.AuthConfig{Auth: b64("s3cr3t")},
			"", authn.AuthConfig{}, "auth is not user:password"},
		{"too large", "registry.example/app", &runtime.AuthConfig{RegistryToken: strings.Repeat("t", MaxCredentialBytes+1)},
			"", authn.AuthConfig{}, "credentials of 65537 bytes, more than 65536"},
		{"image reference not one", "Registry.example/APP:v1", &runtime.AuthConfig{Username: "u", Password: "s3cr3t"},
			"", authn.AuthConfig{}, "image reference"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			k, auth, err := credential(c.image, c.auth)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("credential: %v, want an error with %q", err, c.err)
				}
				if strings.Contains(err.Error(), "s3cr3t") {
					t.Errorf("the error %q holds the secret", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if k != c.key || auth != c.want {
				t.Errorf("credential = %q, %+v; want %q, %+v", k, auth, c.key, c.want)
			}
		})
	}
}

// TestLookupNormalizes finds a Docker Hub credential by every name of the registry and of
// the repository, and no other repository's.
func TestLookupNormalizes(t *testing.T) {
	s := NewStore(0)
	s.put("index.docker.io/library/debian", authn.AuthConfig{Username: "u", Password: "p"})(true)
	for _, q := range [][2]string{
		{"docker.io", "library/debian"}, {"docker.io", "debian"}, {"index.docker.io", "debian"},
		{"registry-1.docker.io", "library/debian"}, {"Docker.IO", "library/debian"},
	} {
		if u, p, ok := s.Credentials(t.Context(), q[0], q[1]); !ok || u != "u" || p != "p" {
			t.Errorf("Credentials(%q, %q) = %q, %q, %v; want u, p", q[0], q[1], u, p, ok)
		}
	}
	for _, q := range [][2]string{
		{"docker.io", "library/debian2"}, {"docker.io", "other/debian"}, {"quay.io", "library/debian"},
		{"docker.io", ""}, {"", "debian"}, {"docker.io", "UPPER"},
	} {
		if _, _, ok := s.Credentials(t.Context(), q[0], q[1]); ok {
			t.Errorf("Credentials(%q, %q) answered; it is not the credential's repository", q[0], q[1])
		}
	}
}

// TestCredentialsForms returns an identity token with the user "<token>", and nothing for
// a registry token, which Auth has.
func TestCredentialsForms(t *testing.T) {
	s := NewStore(0)
	s.put("registry.example/id", authn.AuthConfig{IdentityToken: "idt"})(true)
	s.put("registry.example/rt", authn.AuthConfig{RegistryToken: "rt"})(true)
	if u, p, ok := s.Credentials(t.Context(), "registry.example", "id"); !ok || u != "<token>" || p != "idt" {
		t.Errorf("identity token: Credentials = %q, %q, %v; want <token>, idt", u, p, ok)
	}
	if _, _, ok := s.Credentials(t.Context(), "registry.example", "rt"); ok {
		t.Error("registry token: Credentials answered")
	}
	if a, ok := s.Auth("registry.example", "rt"); !ok || a.RegistryToken != "rt" {
		t.Errorf("registry token: Auth = %+v, %v", a, ok)
	}
}

// TestStoreBounded keeps the most recently stored credentials and evicts the oldest.
func TestStoreBounded(t *testing.T) {
	s := NewStore(3)
	for i := range 5 {
		s.put(fmt.Sprintf("registry.example/app%d", i), authn.AuthConfig{Username: fmt.Sprint(i), Password: "p"})(true)
	}
	// Storing again makes app2 the most recent: app3 is then the oldest.
	s.put("registry.example/app2", authn.AuthConfig{Username: "2b", Password: "p"})(true)
	s.put("registry.example/app5", authn.AuthConfig{Username: "5", Password: "p"})(true)
	if s.Len() != 3 || s.order.Len() != 3 {
		t.Fatalf("Len = %d (order %d), want 3", s.Len(), s.order.Len())
	}
	for i, want := range []string{"", "", "2b", "", "4", "5"} {
		u, _, ok := s.Credentials(t.Context(), "registry.example", fmt.Sprintf("app%d", i))
		if ok != (want != "") || u != want {
			t.Errorf("app%d: %q, %v; want %q", i, u, ok, want)
		}
	}
}

// TestStoreFailedPull puts back the credential of the last pull that succeeded when a pull
// fails, and keeps a later pull's.
func TestStoreFailedPull(t *testing.T) {
	const k = "registry.example/app"
	user := func(s *Store) string {
		u, _, _ := s.Credentials(t.Context(), "registry.example", "app")
		return u
	}
	s := NewStore(0)
	a := authn.AuthConfig{Username: "a", Password: "p"}
	b := authn.AuthConfig{Username: "b", Password: "p"}
	c := authn.AuthConfig{Username: "c", Password: "p"}

	s.put(k, a)(false) // a first pull that fails leaves nothing
	if s.Len() != 0 {
		t.Fatalf("Len = %d after a failed first pull", s.Len())
	}
	s.put(k, a)(true)
	doneB := s.put(k, b)
	if user(s) != "b" {
		t.Fatalf("during b's pull: %q, want b", user(s))
	}
	doneB(false)
	if user(s) != "a" {
		t.Fatalf("after b failed: %q, want a", user(s))
	}

	// b and c pull at once: b fails, then c fails: a, the last that worked, is back.
	doneB, doneC := s.put(k, b), s.put(k, c)
	doneB(false)
	if user(s) != "c" {
		t.Fatalf("b failed during c's pull: %q, want c", user(s))
	}
	doneC(false)
	if user(s) != "a" {
		t.Fatalf("b and c failed: %q, want a", user(s))
	}

	// b and c pull at once: b succeeds, c fails: b is back.
	doneB, doneC = s.put(k, b), s.put(k, c)
	doneB(true)
	doneC(false)
	if user(s) != "b" {
		t.Fatalf("b worked, c failed: %q, want b", user(s))
	}
	// c then b: both succeed, in the other order: the last stored stays.
	doneC, doneB = s.put(k, c), s.put(k, b)
	doneB(true)
	doneC(true)
	if user(s) != "b" {
		t.Fatalf("c then b worked: %q, want b", user(s))
	}
}
