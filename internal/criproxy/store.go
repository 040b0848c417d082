package criproxy

import (
	"container/list"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// DefaultMaxEntries is how many repositories' credentials a Store keeps unless told
// otherwise: far more than the images a node runs, few enough to bound its memory.
const DefaultMaxEntries = 1024

// MaxCredentialBytes bounds one credential (user name and secret, or token): tokens of
// cloud registries take a few KiB. A larger one is forwarded, not kept, so that a Store's
// memory is bounded by its entries.
const MaxCredentialBytes = 64 << 10

// tokenUser is the user name that says the secret is an identity token, in Docker's
// credential-helper convention (which go-containerregistry's authn follows).
const tokenUser = "<token>"

// Store keeps the registry credentials CRI pulls were given, in memory only, each for the
// registry host and repository of the image it was given with. Its methods are safe for
// concurrent use.
//
// A pull's credential is in the Store from the moment the pull starts (the snapshotter
// mounts layers lazily while containerd still pulls), and stays there if the pull
// succeeds; if it fails, the repository's credential goes back to that of the last pull
// that succeeded (kubelet tries an image's pull secrets one after the other until one
// works). A pull without credentials leaves the repository's alone: the layers already
// mounted still read with them. When the Store is full, the credential stored longest
// ago goes; a credential over MaxCredentialBytes is not kept.
type Store struct {
	max int

	mu       sync.Mutex
	entries  map[string]*entry // by key(registry, repository)
	order    *list.List        // of *entry, the most recently stored at the back
	onChange func()            // nil: none
}

type entry struct {
	key  string
	auth authn.AuthConfig
	elem *list.Element // in Store.order; nil once evicted or replaced
	// done is set when the pull that stored the entry succeeded.
	done bool
	// fallback is what the key goes back to if the pull fails: the entry of the last pull of
	// the key that succeeded before it, nil for none.
	fallback *entry
}

// NewStore returns an empty Store that keeps at most max repositories' credentials;
// max <= 0 means DefaultMaxEntries.
func NewStore(max int) *Store {
	if max <= 0 {
		max = DefaultMaxEntries
	}
	return &Store{max: max, entries: map[string]*entry{}, order: list.New()}
}

// Auth returns the credential of the most recent pull of host/repo: exactly one of
// Username and Password, IdentityToken or RegistryToken is set (Auth never is). host is a
// registry host as in an image reference (Docker Hub by any of its names: docker.io,
// index.docker.io, registry-1.docker.io), repo a repository path ("library/debian", or
// "debian" on Docker Hub). A credential answers for its own registry and repository only.
func (s *Store) Auth(host, repo string) (authn.AuthConfig, bool) {
	r, err := repository(host + "/" + repo)
	if err != nil {
		return authn.AuthConfig{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[key(r)]
	if !ok {
		return authn.AuthConfig{}, false
	}
	return e.auth, true
}

// Credentials returns the credential of the most recent pull of host/repo as a user and
// a secret: a user name and its password, or an identity token with the user "<token>"
// (Docker's credential-helper convention). A pull given only a registry token has no such
// form: Credentials answers false for it, Auth has it.
func (s *Store) Credentials(_ context.Context, host, repo string) (user, secret string, ok bool) {
	a, ok := s.Auth(host, repo)
	switch {
	case !ok:
		return "", "", false
	case a.IdentityToken != "":
		return tokenUser, a.IdentityToken, true
	case a.Username != "":
		return a.Username, a.Password, true
	}
	return "", "", false
}

// OnChange has fn called after each change of the Store, with the Store's lock held: fn
// must neither block nor call the Store. Call it before the Store is used.
func (s *Store) OnChange(fn func()) { s.onChange = fn }

func (s *Store) changed() {
	if s.onChange != nil {
		s.onChange()
	}
}

// Credential is a repository's credential: Key is "registry/repository", normalized.
type Credential struct {
	Key  string
	Auth authn.AuthConfig
}

// Kept returns the credentials of pulls that succeeded, one a repository, the one stored
// longest ago first: a repository whose pull is still running has the credential it goes
// back to should the pull fail (none, if no pull of it succeeded before).
func (s *Store) Kept() []Credential {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Credential, 0, len(s.entries))
	for el := s.order.Front(); el != nil; el = el.Next() {
		e := el.Value.(*entry)
		switch {
		case e.done:
			out = append(out, Credential{e.key, e.auth})
		case e.fallback != nil:
			out = append(out, Credential{e.key, e.fallback.auth})
		}
	}
	return out
}

// Restore stores c as the credential of a pull of its repository that succeeded, unless
// the repository has one already; a key that is no normalized repository is an error.
func (s *Store) Restore(c Credential) error {
	r, err := repository(c.Key)
	if err != nil || key(r) != c.Key {
		return fmt.Errorf("%q is no repository key", c.Key)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.entries[c.Key]; ok {
		return nil
	}
	s.set(&entry{key: c.Key, auth: c.Auth, done: true})
	s.changed()
	return nil
}

// Len returns how many repositories have a credential.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.entries)
}

// put stores auth for the key as the pull starts and returns the function that ends the
// pull: done(true) keeps it, done(false) puts back what the key had.
func (s *Store) put(k string, auth authn.AuthConfig) (done func(ok bool)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := &entry{key: k, auth: auth}
	if prev := s.entries[k]; prev != nil {
		e.fallback = prev.fallback
		if prev.done {
			e.fallback = prev
		}
	}
	s.set(e)
	s.changed()
	return func(ok bool) { s.end(e, ok) }
}

func (s *Store) end(e *entry, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.changed()
	cur := s.entries[e.key]
	if ok {
		e.done = true
		if cur != nil && cur != e && !cur.done {
			// A later pull of the key is still running: should it fail, this one's
			// credential is the one that worked last.
			cur.fallback = e
		}
		return
	}
	if cur != e {
		return // a later pull replaced it
	}
	if e.fallback != nil {
		s.set(e.fallback)
	} else {
		s.remove(e)
	}
	e.fallback = nil
}

// set makes e the key's entry, the most recently stored, and evicts the oldest entries
// beyond the bound.
func (s *Store) set(e *entry) {
	if cur := s.entries[e.key]; cur != nil {
		s.remove(cur)
	}
	s.entries[e.key] = e
	e.elem = s.order.PushBack(e)
	for s.order.Len() > s.max {
		s.remove(s.order.Front().Value.(*entry))
	}
}

func (s *Store) remove(e *entry) {
	if e.elem != nil {
		s.order.Remove(e.elem)
		e.elem = nil
	}
	if s.entries[e.key] == e {
		delete(s.entries, e.key)
	}
}

// errNoCredential says a pull came without credentials.
var errNoCredential = errors.New("no credentials")

// credential returns the credential a pull of image was given and the key it answers
// for. A credential whose server address names another registry than the image's is not
// the image's (containerd does not send it there either).
func credential(image string, a *runtime.AuthConfig) (string, authn.AuthConfig, error) {
	ref, err := name.ParseReference(image)
	if err != nil {
		return "", authn.AuthConfig{}, fmt.Errorf("image reference: %w", err)
	}
	r, err := repository(ref.Context().Name())
	if err != nil {
		return "", authn.AuthConfig{}, fmt.Errorf("image reference: %w", err)
	}
	auth, err := parseAuth(a)
	if err != nil {
		return "", authn.AuthConfig{}, err
	}
	if n := len(auth.Username) + len(auth.Password) + len(auth.IdentityToken) + len(auth.RegistryToken); n > MaxCredentialBytes {
		return "", authn.AuthConfig{}, fmt.Errorf("credentials of %d bytes, more than %d", n, MaxCredentialBytes)
	}
	if addr := a.GetServerAddress(); addr != "" {
		host, err := serverHost(addr)
		if err != nil {
			return "", authn.AuthConfig{}, err
		}
		if host != r.RegistryStr() {
			return "", authn.AuthConfig{}, fmt.Errorf("the credentials are for %s, not for the image's registry %s", host, r.RegistryStr())
		}
	}
	return key(r), auth, nil
}

// parseAuth reads a CRI AuthConfig in containerd's order: a user name (and its password)
// first, then an identity token, then auth (base64 of user:password), then a registry
// token.
func parseAuth(a *runtime.AuthConfig) (authn.AuthConfig, error) {
	switch {
	case a.GetUsername() != "":
		return authn.AuthConfig{Username: a.GetUsername(), Password: a.GetPassword()}, nil
	case a.GetIdentityToken() != "":
		return authn.AuthConfig{IdentityToken: a.GetIdentityToken()}, nil
	case a.GetAuth() != "":
		b, err := base64.StdEncoding.DecodeString(a.GetAuth())
		if err != nil {
			return authn.AuthConfig{}, errors.New("auth is not base64") // never the value
		}
		user, pass, ok := strings.Cut(string(b), ":")
		if !ok || user == "" {
			return authn.AuthConfig{}, errors.New("auth is not user:password")
		}
		return authn.AuthConfig{Username: user, Password: strings.Trim(pass, "\x00")}, nil
	case a.GetRegistryToken() != "":
		return authn.AuthConfig{RegistryToken: a.GetRegistryToken()}, nil
	}
	return authn.AuthConfig{}, errNoCredential
}

// serverHost returns the registry an AuthConfig's server address names, Docker Hub's
// by its canonical name: "https://index.docker.io/v1/" and "registry.example:5000" alike.
func serverHost(addr string) (string, error) {
	if !strings.Contains(addr, "://") {
		addr = "https://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("server address %q is no registry", addr)
	}
	r, err := registry(u.Host)
	if err != nil {
		return "", err
	}
	return r.RegistryStr(), nil
}

// registry normalizes a registry host: lower case, Docker Hub by its canonical name.
func registry(host string) (name.Registry, error) {
	host = strings.ToLower(host)
	if host == "registry-1.docker.io" {
		host = name.DefaultRegistry
	}
	return name.NewRegistry(host)
}

// repository parses host/repo, host normalized as registry does, and Docker Hub's
// official images under library/.
func repository(s string) (name.Repository, error) {
	host, repo, ok := strings.Cut(s, "/")
	if !ok || host == "" {
		return name.Repository{}, fmt.Errorf("%q is no host/repository", s)
	}
	r, err := registry(host)
	if err != nil {
		return name.Repository{}, err
	}
	return name.NewRepository(r.RegistryStr() + "/" + repo)
}

// key is the Store's key of a repository.
func key(r name.Repository) string {
	return strings.ToLower(r.RegistryStr()) + "/" + r.RepositoryStr()
}
