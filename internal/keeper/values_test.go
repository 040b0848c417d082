package keeper

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"lazypull/internal/testutil"
	"lazypull/internal/unixsock"
)

// startVersion starts a keeper that speaks protocol version v, as Serve does.
func startVersion(t *testing.T, v int, idle time.Duration) string {
	t.Helper()
	return startServer(t, &Server{log: slog.New(slog.DiscardHandler), idle: idle, version: v})
}

// dial connects a client to the keeper at sock, closed when the test ends.
func dial(t *testing.T, sock string) *Client {
	t.Helper()
	c, err := Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// startServer serves s on a new socket, as Serve does, until the test ends.
func startServer(t *testing.T, s *Server) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "k.sock")
	l, err := unixsock.Listen("unixpacket", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, l, sock, s) }()
	t.Cleanup(func() { cancel(); <-done })
	return sock
}

// TestValuesAcrossClients: values put by one client outlive it and are listed to the next
// in the order they were put, apart from the descriptors; a delete drops one; nothing of
// a value reaches the keeper's log.
func TestValuesAcrossClients(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "k.sock")
	logs := &testutil.LogBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, sock, time.Hour, logs.Logger()) }()
	stopped := false
	defer func() {
		if !stopped {
			cancel()
			<-done
		}
	}()
	testutil.WaitFor(t, 5*time.Second, "the keeper socket", func() bool { _, err := os.Stat(sock); return err == nil })

	c := dial(t, sock)
	if v, err := c.Version(); err != nil || v != Version {
		t.Fatalf("Version = %d, %v; want %d", v, err, Version)
	}
	big := bytes.Repeat([]byte("s3cr3t"), MaxValueBytes/6)
	for _, v := range []Value{{"b", []byte("secret-b")}, {"a", big}, {"c", []byte("secret-c")}} {
		if err := c.PutValue(v.Key, v.Value); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.PutValue("b", []byte("secret-b2")); err != nil { // replaced: now the newest
		t.Fatal(err)
	}
	if err := c.DeleteValue("c"); err != nil {
		t.Fatal(err)
	}
	c.Close()

	c2 := dial(t, sock)
	vs, err := c2.ListValues()
	if err != nil || len(vs) != 2 || vs[0].Key != "a" || !bytes.Equal(vs[0].Value, big) || vs[1].Key != "b" || string(vs[1].Value) != "secret-b2" {
		t.Fatalf("ListValues = %d values %v", len(vs), err)
	}
	if es, err := c2.List(); err != nil || len(es) != 0 {
		t.Errorf("List = %+v, %v; values are no descriptors", es, err)
	}
	c2.Close()
	cancel()
	<-done
	stopped = true
	if l := logs.String(); strings.Contains(l, "secret") || strings.Contains(l, "s3cr3t") {
		t.Errorf("the keeper logged a value:\n%s", logs)
	}
}

// TestValuesBounded: past MaxValues the value put longest ago goes; a value over
// MaxValueBytes is refused, and the keeper goes on.
func TestValuesBounded(t *testing.T) {
	sock, _ := start(t, time.Hour)
	c := dial(t, sock)
	for i := range MaxValues + 2 {
		if err := c.PutValue(fmt.Sprint(i), []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.PutValue("huge", make([]byte, MaxValueBytes+1)); err == nil {
		t.Error("a value over MaxValueBytes was taken")
	}
	vs, err := c.ListValues()
	if err != nil || len(vs) != MaxValues || vs[0].Key != "2" || vs[len(vs)-1].Key != fmt.Sprint(MaxValues+1) {
		t.Fatalf("ListValues: %d values (first %q), %v; want %d, from \"2\"", len(vs), first(vs), err, MaxValues)
	}
}

func first(vs []Value) string {
	if len(vs) == 0 {
		return ""
	}
	return vs[0].Key
}

// TestSocketOwnerOnly: the socket values are handed over on is its owner's only, whatever
// the umask.
func TestSocketOwnerOnly(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	sock, _ := start(t, time.Hour)
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("keeper socket mode %v; want a socket of mode 0600", fi.Mode())
	}
}

// TestValuesKeepNoKeeper: a keeper holding values but no descriptor, and without a
// client, exits when idle (the values die with it).
func TestValuesKeepNoKeeper(t *testing.T) {
	sock, done := start(t, 50*time.Millisecond)
	c := dial(t, sock)
	if err := c.PutValue("k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := testutil.Recv(t, done, checkEvery, "the idle keeper to exit"); err != nil {
		t.Fatal(err)
	}
	done <- nil // for the cleanup
}

// TestOldKeeper: a keeper of protocol version 1 (the previous lazypull's, still running
// after an upgrade) answers Version with 1; values are ErrNoValues without a byte sent, and
// the connection goes on serving descriptors.
func TestOldKeeper(t *testing.T) {
	sock := startVersion(t, 1, time.Hour)
	c := dial(t, sock)
	if v, err := c.Version(); err != nil || v != 1 {
		t.Fatalf("Version = %d, %v; want 1", v, err)
	}
	if err := c.PutValue("k", make([]byte, MaxValueBytes)); !errors.Is(err, ErrNoValues) {
		t.Errorf("PutValue = %v; want ErrNoValues", err)
	}
	if _, err := c.ListValues(); !errors.Is(err, ErrNoValues) || !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("ListValues = %v; want ErrNoValues", err)
	}
	// The old keeper does not know the operations either, should a client send them.
	if err := c.call(message{Op: opPutValue, Key: "k", Meta: []byte("v")}, nil); err == nil {
		t.Error("a version 1 keeper took put-value")
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if err := c.Put("/mnt/a", nil, w); err != nil {
		t.Fatal(err)
	}
	es, err := c.List()
	if err != nil || len(es) != 1 {
		t.Fatalf("List after the value calls = %+v, %v", es, err)
	}
	es[0].File.Close()
}
