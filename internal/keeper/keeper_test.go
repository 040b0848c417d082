package keeper

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"lazypull/internal/testutil"
)

func start(t *testing.T, idle time.Duration) (string, chan error) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "k.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, sock, idle, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	t.Cleanup(func() { cancel(); <-done })
	// Serve signals nothing when it listens: the socket's file is polled.
	testutil.WaitFor(t, 5*time.Second, "the keeper socket", func() bool { _, err := os.Stat(sock); return err == nil })
	return sock, done
}

// TestKeepsAcrossClients: a descriptor put by one client outlives it and is listed to the
// next, still the same open file; a delete drops it.
func TestKeepsAcrossClients(t *testing.T) {
	sock, _ := start(t, time.Hour)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c := dial(t, sock)
	if err := c.Put("/mnt/a", []byte("meta"), w); err != nil {
		t.Fatal(err)
	}
	w.Close()
	c.Close() // the first "process" is gone; only the keeper holds the write end

	c2 := dial(t, sock)
	es, err := c2.List()
	if err != nil || len(es) != 1 || es[0].Key != "/mnt/a" || string(es[0].Meta) != "meta" {
		t.Fatalf("List = %+v, %v", es, err)
	}
	if _, err := es[0].File.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	es[0].File.Close()
	b := make([]byte, 1)
	if _, err := io.ReadFull(r, b); err != nil || b[0] != 'x' {
		t.Fatalf("read through the kept descriptor: %q %v", b, err)
	}
	if err := c2.Delete("/mnt/a"); err != nil {
		t.Fatal(err)
	}
	// With the keeper's copy closed too, the pipe has no writer left.
	if _, err := r.Read(b); err != io.EOF {
		t.Errorf("after delete, read = %v; want EOF (the keeper still holds the write end)", err)
	}
	if es, err := c2.List(); err != nil || len(es) != 0 {
		t.Errorf("List after delete = %+v, %v", es, err)
	}
}

// TestExitsWhenIdle: with nothing to keep and no client, the keeper exits on its own.
func TestExitsWhenIdle(t *testing.T) {
	_, done := start(t, time.Millisecond)
	if err := testutil.Recv(t, done, 3*checkEvery, "the idle keeper to exit"); err != nil {
		t.Fatal(err)
	}
	done <- nil // for the cleanup
}

// TestShortIdleExitsSoon: a keeper idle for 100ms looks often enough to exit well before
// checkEvery (the snapshotter's tests stop theirs that way).
func TestShortIdleExitsSoon(t *testing.T) {
	start0 := time.Now()
	_, done := start(t, 100*time.Millisecond)
	if err := testutil.Recv(t, done, checkEvery/2, "the idle keeper to exit"); err != nil {
		t.Fatal(err)
	}
	t.Logf("exited after %v", time.Since(start0))
	done <- nil // for the cleanup
}

// TestBadRequests: a put without a descriptor and an unknown operation are answered with
// an error, and the keeper goes on.
func TestBadRequests(t *testing.T) {
	sock, _ := start(t, time.Hour)
	c := dial(t, sock)
	if err := c.Put("k", nil, nil); err == nil {
		t.Error("put without a descriptor succeeded")
	}
	if err := c.call(message{Op: "explode"}, nil); err == nil {
		t.Error("unknown operation succeeded")
	}
	if _, err := c.List(); err != nil {
		t.Errorf("the keeper stopped answering: %v", err)
	}
}

// TestCleanDisconnectNotWarned: a client that closes its connection between requests is
// the normal end of a client, not a bad request: nothing is logged at warning level.
func TestCleanDisconnectNotWarned(t *testing.T) {
	var log testutil.LogBuffer
	s := &Server{log: slog.New(slog.NewTextHandler(&log, nil)), idle: time.Hour, version: Version}
	sock := startServer(t, s)
	c := dial(t, sock)
	if _, err := c.Version(); err != nil {
		t.Fatal(err)
	}
	c.Close()
	// The connection's goroutine logs before it counts the client gone.
	testutil.WaitFor(t, 5*time.Second, "the keeper to see the client gone", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.clients == 0
	})
	if n := log.Count("level=WARN"); n != 0 {
		t.Errorf("a clean disconnect logged %d warnings:\n%s", n, log.String())
	}
}
