package service

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"lazypull/internal/criproxy"
	"lazypull/internal/keeper"
	"lazypull/internal/testutil"
)

// TestCRICredentialsKeptByTheKeeper: the credentials a snapshotter's CRI proxy keeps are
// handed to a real keeper over its socket, the owner's only, and the next snapshotter
// (a new Store, a new client) gets them back before it serves; the largest credential the
// Store takes fits, the keeper's bounds hold the Store's, and nothing of a secret is logged.
func TestCRICredentialsKeptByTheKeeper(t *testing.T) {
	if criproxy.DefaultMaxEntries > keeper.MaxValues || criproxy.MaxEncodedBytes > keeper.MaxValueBytes {
		t.Fatalf("the keeper holds %d values of %d bytes, less than the Store's %d credentials of %d",
			keeper.MaxValues, keeper.MaxValueBytes, criproxy.DefaultMaxEntries, criproxy.MaxEncodedBytes)
	}
	dir := testutil.ShortDir(t)
	sock := filepath.Join(dir, "keeper.sock")
	log, logs := testutil.NewLog(t)
	kctx, stopKeeper := context.WithCancel(context.Background())
	kdone := make(chan error, 1)
	go func() { kdone <- keeper.Serve(kctx, sock, time.Hour, log) }()
	defer func() { stopKeeper(); <-kdone }()
	testutil.WaitFor(t, 5*time.Second, "the keeper socket", func() bool { _, err := os.Stat(sock); return err == nil })
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("keeper socket: %v, %v; want mode 0600", fi.Mode(), err)
	}

	big := strings.Repeat("s3cr3t", criproxy.MaxCredentialBytes/6)
	want := []criproxy.Credential{
		{Key: "registry.example:5000/team/app", Auth: authn.AuthConfig{Username: "u", Password: big}},
		{Key: "index.docker.io/library/debian", Auth: authn.AuthConfig{IdentityToken: "s3cr3t-idt"}},
	}
	snapshotter := func(restored int) *criproxy.Store {
		t.Helper()
		kc, err := keeper.Dial(sock)
		if err != nil {
			t.Fatal(err)
		}
		creds := criproxy.NewStore(0)
		n := &node{}
		cfg := CRIProxy{CRIProxyAddress: filepath.Join(dir, "cri.sock"), CRIProxyUpstream: filepath.Join(dir, "containerd.sock")}
		if err := serveCRICredentials(n, cfg, creds, kc, log); err != nil {
			t.Fatal(err)
		}
		if creds.Len() != restored {
			t.Errorf("%d credentials restored from the keeper; want %d", creds.Len(), restored)
		}
		for _, c := range want { // as pulls through the proxy would
			if err := creds.Restore(c); err != nil {
				t.Fatal(err)
			}
		}
		for _, stop := range slices.Backward(n.stops) {
			stop()
		}
		kc.Close()
		return creds
	}
	snapshotter(0)
	creds := snapshotter(len(want)) // restarted
	if got := creds.Kept(); !slices.Equal(got, want) {
		t.Errorf("after the restart the Store keeps %d credentials; want %d, as they were", len(got), len(want))
	}
	if user, secret, ok, _ := (criCredentials{creds}).Credentials(context.Background(), "registry.example:5000", "team/app"); !ok || user != "u" || secret != big {
		t.Errorf("after the restart: %q, %d bytes, %v", user, len(secret), ok)
	}
	if strings.Contains(logs.String(), "s3cr3t") {
		t.Errorf("a secret was logged:\n%s", logs)
	}
}
