package criproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"lazypull/internal/testutil"
)

// fakeKeeper holds values as the keeper process does; unsupported plays an older keeper.
type fakeKeeper struct {
	mu          sync.Mutex
	values      map[string][]byte
	unsupported bool
	puts        int
}

func (k *fakeKeeper) PutValue(key string, v []byte) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.unsupported {
		return fmt.Errorf("old keeper: %w", errors.ErrUnsupported)
	}
	k.values[key] = append([]byte(nil), v...)
	k.puts++
	return nil
}

func (k *fakeKeeper) DeleteValue(key string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.values, key)
	return nil
}

func (k *fakeKeeper) snapshot() map[string][]byte {
	k.mu.Lock()
	defer k.mu.Unlock()
	return maps.Clone(k.values)
}

// TestEncodeAuth: every form of credential, the largest too, comes back as it went.
func TestEncodeAuth(t *testing.T) {
	for _, a := range []authn.AuthConfig{
		{Username: "u", Password: "p\x00:\"\n"},
		{IdentityToken: "idt"},
		{RegistryToken: strings.Repeat("t", MaxCredentialBytes)},
		{},
	} {
		b := encodeAuth(a)
		if len(b) > MaxEncodedBytes {
			t.Errorf("encoded %d bytes, more than MaxEncodedBytes %d", len(b), MaxEncodedBytes)
		}
		got, err := decodeAuth(b)
		if err != nil || got != a {
			t.Errorf("decodeAuth(encodeAuth(%.20v)) = %.20v, %v", a, got, err)
		}
	}
	for _, b := range [][]byte{nil, {2}, {authVersion, 5, 'a'}, append(encodeAuth(authn.AuthConfig{}), 0)} {
		if _, err := decodeAuth(b); err == nil {
			t.Errorf("decodeAuth(%q) took it", b)
		}
	}
}

// TestMirrorRoundTrip: the credentials of pulls that succeeded reach the keeper (a pull
// still running hands over what its repository goes back to, a failed one nothing), one
// evicted from the Store leaves it, and a new Store restored from the keeper answers as
// the first did.
func TestMirrorRoundTrip(t *testing.T) {
	k := &fakeKeeper{values: map[string][]byte{"other/key": []byte("not ours")}}
	s := NewStore(2)
	m := NewMirror(s, k, logOf(t))
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { m.Run(ctx); close(ran) }()

	s.put("registry.example/a", authn.AuthConfig{Username: "ua", Password: "pa"})(true)
	running := s.put("registry.example/a", authn.AuthConfig{Username: "ua", Password: "wrong"})
	s.put("registry.example/b", authn.AuthConfig{IdentityToken: "idt-b"})(false)
	s.put("index.docker.io/library/debian", authn.AuthConfig{Username: "ud", Password: "pd"})(true)
	wantKeys := func(keys ...string) {
		t.Helper()
		want := map[string]bool{"other/key": true}
		for _, k := range keys {
			want[keeperPrefix+k] = true
		}
		testutil.WaitFor(t, 5*time.Second, fmt.Sprint("the keeper to hold ", keys), func() bool {
			got := k.snapshot()
			return maps.EqualFunc(got, want, func([]byte, bool) bool { return true })
		})
	}
	wantKeys("registry.example/a", "index.docker.io/library/debian")
	if a, _ := decodeAuth(k.snapshot()[keeperPrefix+"registry.example/a"]); a.Password != "pa" {
		t.Errorf("the keeper holds %q for a; want the credential of the pull that succeeded", a.Password)
	}
	running(false)                                                                      // a goes back to pa, now the most recent
	s.put("registry.example/c", authn.AuthConfig{Username: "uc", Password: "pc"})(true) // evicts debian
	wantKeys("registry.example/a", "registry.example/c")
	cancel()
	<-ran

	s2 := NewStore(0)
	m2 := NewMirror(s2, k, logOf(t))
	if n := m2.Restore(maps.All(k.snapshot())); n != 2 {
		t.Errorf("Restore = %d; want 2", n)
	}
	if u, p, ok := s2.Credentials(context.Background(), "registry.example", "a"); !ok || u != "ua" || p != "pa" {
		t.Errorf("restored Store: a = %q %q %v", u, p, ok)
	}
	if _, _, ok := s2.Credentials(context.Background(), "docker.io", "debian"); ok {
		t.Error("restored Store: debian, evicted before, is back")
	}
	if u, p, ok := s2.Credentials(context.Background(), "registry.example", "c"); !ok || u != "uc" || p != "pc" {
		t.Errorf("restored Store: c = %q %q %v", u, p, ok)
	}
	// Restored, it needs no hand-over again.
	puts := k.puts
	if err := m2.sync(); err != nil || k.puts != puts {
		t.Errorf("sync after Restore: %v, %d puts; want none", err, k.puts-puts)
	}
}

// TestMirrorOldKeeper: a keeper that keeps no values ends Run, and the Store works on.
func TestMirrorOldKeeper(t *testing.T) {
	logs := &testutil.LogBuffer{}
	s := NewStore(0)
	m := NewMirror(s, &fakeKeeper{unsupported: true}, logs.Logger())
	s.put("registry.example/a", authn.AuthConfig{Username: "u", Password: "s3cr3t"})(true)
	ran := make(chan struct{})
	go func() { m.Run(context.Background()); close(ran) }()
	testutil.Recv(t, ran, 5*time.Second, "Run to end")
	if logs.Count("the keeper keeps no credentials") != 1 || strings.Contains(logs.String(), "s3cr3t") {
		t.Errorf("log:\n%s", logs)
	}
	s.put("registry.example/b", authn.AuthConfig{Username: "u", Password: "p"})(true) // no kick blocks
	if _, ok := s.Auth("registry.example", "b"); !ok {
		t.Error("the Store stopped working")
	}
}

// TestRestoreRefusesBadKeys: a key that is no normalized repository is not restored.
func TestRestoreRefusesBadKeys(t *testing.T) {
	s := NewStore(0)
	for _, k := range []string{"", "nohost", "REGISTRY.example/a", "docker.io/debian"} {
		if err := s.Restore(Credential{Key: k}); err == nil {
			t.Errorf("Restore(%q) took it", k)
		}
	}
	if s.Len() != 0 {
		t.Errorf("Len = %d", s.Len())
	}
	if err := s.Restore(Credential{Key: "index.docker.io/library/debian", Auth: authn.AuthConfig{Username: "u"}}); err != nil {
		t.Fatal(err)
	}
	if u, _, ok := s.Credentials(context.Background(), "docker.io", "debian"); !ok || u != "u" {
		t.Errorf("restored Docker Hub key: %q %v", u, ok)
	}
}

func logOf(t *testing.T) *slog.Logger {
	log, _ := testutil.NewLog(t)
	return log
}
