package warm

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	"lazypull/internal/testutil"
)

// serve serves a gRPC server on a unix socket in a temporary directory, with the warm-up
// API when h is not nil.
func serve(t *testing.T, h Handler) string {
	t.Helper()
	ln, sock := testutil.ListenUnix(t)
	srv := grpc.NewServer()
	if h != nil {
		Register(srv, h)
	}
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return sock
}

// serveInto serves a handler that passes each request it gets on to the channel returned.
func serveInto(t *testing.T) (string, <-chan Request) {
	t.Helper()
	got := make(chan Request, 1)
	return serve(t, func(_ context.Context, r Request) error {
		got <- r
		return nil
	}), got
}

func send(t *testing.T, sock string, r Request) error {
	t.Helper()
	c, err := NewClient(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.Send(ctx, r)
}

// TestSendReceive: the request arrives whole (manifest bytes exact, whatever they are); a
// refusal comes back as an error that says why; no server, or a server without the API,
// is ErrUnavailable.
func TestSendReceive(t *testing.T) {
	var got Request
	sock := serve(t, func(_ context.Context, r Request) error {
		if r.Digest == "bad" {
			return errors.New("manifest does not match its digest")
		}
		got = r
		return nil
	})
	want := Request{Ref: "127.0.0.1:5000/app:v1", Digest: "sha256:" + strings.Repeat("a", 64), MediaType: "application/vnd.oci.image.manifest.v1+json",
		Manifest: []byte("{\"x\":\"\xff\x00\"}")}
	if err := send(t, sock, want); err != nil {
		t.Fatal(err)
	}
	if got.Ref != want.Ref || got.Digest != want.Digest || got.MediaType != want.MediaType || string(got.Manifest) != string(want.Manifest) {
		t.Errorf("received %+v, want %+v", got, want)
	}
	err := send(t, sock, Request{Digest: "bad"})
	if err == nil || errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "does not match its digest") {
		t.Errorf("refused request: %v", err)
	}

	if err := send(t, filepath.Join(t.TempDir(), "none.sock"), want); !errors.Is(err, ErrUnavailable) {
		t.Errorf("no server: %v, want ErrUnavailable", err)
	}
	if err := send(t, serve(t, nil), want); !errors.Is(err, ErrUnavailable) {
		t.Errorf("server without the API: %v, want ErrUnavailable", err)
	}
}

// TestHint: a request of a reference alone arrives as a hint; one with a manifest does not.
func TestHint(t *testing.T) {
	sock, got := serveInto(t)
	if err := send(t, sock, Request{Ref: "registry.test/app:1"}); err != nil {
		t.Fatal(err)
	}
	if r := testutil.Recv(t, got, 10*time.Second, "the request"); !r.IsHint() || r.Ref != "registry.test/app:1" {
		t.Errorf("got %+v; want a hint for registry.test/app:1", r)
	}
	if r := (Request{Ref: "registry.test/app:1", Digest: "sha256:00", Manifest: []byte("{}")}); r.IsHint() {
		t.Errorf("%+v taken for a hint", r)
	}
}

// TestProfileField: the pinned profile arrives with the request; a request without it (a
// pull before the field) arrives with none, and one whose field is not a string is
// refused.
func TestProfileField(t *testing.T) {
	sock, got := serveInto(t)
	base := Request{Ref: "registry.test/app:1", Digest: "sha256:" + strings.Repeat("a", 64), Manifest: []byte("{}")}
	pinned := base
	pinned.Profile = "sha256:" + strings.Repeat("b", 64)
	for _, want := range []Request{pinned, base} {
		if err := send(t, sock, want); err != nil {
			t.Fatal(err)
		}
		if r := testutil.Recv(t, got, 10*time.Second, "the request"); r.Profile != want.Profile || r.Digest != want.Digest {
			t.Errorf("received %+v; want %+v", r, want)
		}
	}
	in, _ := structpb.NewStruct(map[string]any{fieldRef: "r", fieldDigest: "d", fieldMediaType: "", fieldManifest: "", fieldProfile: 1.0})
	if _, err := decode(in); err == nil || !strings.Contains(err.Error(), fieldProfile) {
		t.Errorf("profile field of a number: %v; want it refused", err)
	}
}
