package testutil

import (
	"archive/tar"
	"bytes"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRandBytes(t *testing.T) {
	a, b, c := RandBytes(1, 1000), RandBytes(1, 1000), RandBytes(2, 1000)
	if !bytes.Equal(a, b) || bytes.Equal(a, c) || len(a) != 1000 {
		t.Error("RandBytes is not reproducible by seed")
	}
}

// TestLogBuffer: lines logged from many goroutines all arrive (run with -race).
func TestLogBuffer(t *testing.T) {
	log, lb := NewLog(t)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				log.Debug("line", "k", "v")
				_ = lb.String()
			}
		})
	}
	wg.Wait()
	if n := lb.Count("msg=line k=v"); n != 800 {
		t.Errorf("%d lines, want 800", n)
	}
}

func TestNewLogAt(t *testing.T) {
	log, lb := NewLogAt(t, slog.LevelWarn)
	log.Info("dropped")
	log.Warn("kept")
	if got := lb.String(); strings.Contains(got, "dropped") || lb.Count("level=WARN msg=kept") != 1 {
		t.Errorf("logged %q; want the warning only", got)
	}
}

func TestNeedRoot(t *testing.T) {
	ran := false
	t.Run("sub", func(t *testing.T) {
		NeedRoot(t, "a test")
		ran = true
	})
	if ran != (os.Geteuid() == 0) {
		t.Errorf("ran %v as uid %d", ran, os.Geteuid())
	}
}

func TestWait(t *testing.T) {
	ch := make(chan int, 1)
	go func() { ch <- 7 }()
	if v := Recv(t, ch, 10*time.Second, "the value"); v != 7 {
		t.Errorf("got %d", v)
	}
	n := 0
	WaitFor(t, 10*time.Second, "the fifth call", func() bool { n++; return n == 5 })
	n = 0
	Await(t, 10*time.Second, "the third call", func() (bool, string) { n++; return n == 3, fmt.Sprint(n) })
	if !Eventually(10*time.Second, func() bool { n++; return n == 6 }) {
		t.Error("Eventually: the sixth call did not count")
	}
	if Eventually(5*time.Millisecond, func() bool { return false }) {
		t.Error("Eventually held for a cond that never does")
	}
}

func TestTar(t *testing.T) {
	b := Tar(t, Dir("d/"), File("d/f", []byte("hello")), Symlink("d/s", "f"), Link("d/l", "d/f"))
	var names []string
	links := map[string]string{}
	for h, body := range TarEntries(t, b) {
		names = append(names, h.Name)
		if h.Linkname != "" {
			links[h.Name] = string(h.Typeflag) + h.Linkname
		}
		if h.Name == "d/f" && string(body) != "hello" {
			t.Errorf("d/f holds %q", body)
		}
	}
	if !slices.Equal(names, []string{"d/", "d/f", "d/s", "d/l"}) {
		t.Errorf("entries %q", names)
	}
	if want := map[string]string{"d/s": string(tar.TypeSymlink) + "f", "d/l": string(tar.TypeLink) + "d/f"}; !maps.Equal(links, want) {
		t.Errorf("links %q, want %q", links, want)
	}
}

func TestRegistryLogsRequests(t *testing.T) {
	r := NewRegistry(t)
	req, _ := http.NewRequest("GET", r.Server.URL+"/v2/a/blobs/sha256:"+string(bytes.Repeat([]byte("0"), 64)), nil)
	req.Header.Set("Range", "bytes=0-9")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp, err = http.Get(r.Server.URL + "/v2/"); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	want := []string{"GET /v2/a/blobs/sha256:" + string(bytes.Repeat([]byte("0"), 64)) + " Range: bytes=0-9", "GET /v2/"}
	if got := r.Requests(); !slices.Equal(got, want) {
		t.Errorf("request log %q, want %q", got, want)
	}
	if got := r.Take(); !slices.Equal(got, want) {
		t.Errorf("Take: %q, want %q", got, want)
	}
	if got := r.Requests(); len(got) != 0 {
		t.Errorf("after Take: %q", got)
	}
}

func TestListenUnix(t *testing.T) {
	ln, sock := ListenUnix(t)
	if len(sock) > 100 {
		t.Errorf("socket path of %d bytes, want one that fits sun_path: %s", len(sock), sock)
	}
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("dial %s: %v", sock, err)
	}
	c.Close()
}

func TestWriteTemp(t *testing.T) {
	p := WriteTemp(t, "a.toml", []byte("x = 1\n"))
	if b, err := os.ReadFile(p); err != nil || string(b) != "x = 1\n" || filepath.Base(p) != "a.toml" {
		t.Errorf("WriteTemp wrote %q to %s (%v)", b, p, err)
	}
}
