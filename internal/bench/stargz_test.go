package bench

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"lazypull/internal/testutil"
)

func TestStargzModes(t *testing.T) {
	p := unreachableProxy(t)
	for _, tc := range []struct {
		m          Mode
		stargz     bool
		tag, first string
	}{
		{ModePlain, false, "orig", ""},
		{ModeLazypull, false, "lazy", ""},
		{ModeEstargz, true, "esgz", "convert"},
		{ModeEstargzOpt, true, "esgz-opt", "optimize"},
	} {
		if isStargz(tc.m) != tc.stargz {
			t.Errorf("isStargz(%s) = %v", tc.m, !tc.stargz)
		}
		if got := ref(p, Image{Name: "python"}, tc.m); !strings.HasSuffix(got, "/bench/python:"+tc.tag) {
			t.Errorf("ref in mode %s: %s, want tag %s", tc.m, got, tc.tag)
		}
		if tc.stargz && stargzConvertArgs(tc.m)[0] != tc.first {
			t.Errorf("mode %s converts with %v", tc.m, stargzConvertArgs(tc.m))
		}
	}
	cfg := Config{Images: []string{"python"}, Links: []Link{{Name: "l"}}, Modes: []Mode{ModeEstargz, ModeEstargzOpt}, N: 1}
	if err := cfg.Validate(); err != nil {
		t.Errorf("stargz modes refused: %v", err)
	}
	cfg.Modes = []Mode{"stargz"}
	if err := cfg.Validate(); err == nil {
		t.Error("unknown mode accepted")
	}
}

// The bench's config must be one the daemon accepts: keys of the library's config (the
// daemon refuses unknown ones), and the defaults it claims to state.
func TestStargzConfig(t *testing.T) {
	var c struct {
		PrefetchTimeoutSec int64 `toml:"prefetch_timeout_sec"`
		NoPrefetch         bool  `toml:"noprefetch"`
		NoBackgroundFetch  bool  `toml:"no_background_fetch"`
	}
	md, err := toml.Decode(string(stargzConfig()), &c)
	if err != nil {
		t.Fatal(err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		t.Errorf("keys this test does not know: %v", und)
	}
	if c.PrefetchTimeoutSec != 10 || c.NoPrefetch || c.NoBackgroundFetch {
		t.Errorf("not the library's defaults: %+v", c)
	}
}

func TestStargzCacheKey(t *testing.T) {
	a := stargzCacheKey("sha256:aa", "ctr-remote A", stargzConvertArgs(ModeEstargz))
	if a != stargzCacheKey("sha256:aa", "ctr-remote A", stargzConvertArgs(ModeEstargz)) {
		t.Error("key not stable")
	}
	for _, b := range []string{
		stargzCacheKey("sha256:ab", "ctr-remote A", stargzConvertArgs(ModeEstargz)),
		stargzCacheKey("sha256:aa", "ctr-remote B", stargzConvertArgs(ModeEstargz)),
		stargzCacheKey("sha256:aa", "ctr-remote A", stargzConvertArgs(ModeEstargzOpt)),
	} {
		if a == b {
			t.Errorf("different conversions share key %s", a)
		}
	}
}

func TestFindStargz(t *testing.T) {
	repo := t.TempDir()
	scripts := filepath.Join(repo, "scripts")
	t.Setenv("PATH", t.TempDir())
	if got := FindStargz(scripts); got != "" {
		t.Errorf("found %q in an empty repository with an empty PATH", got)
	}
	if note := StargzNote(""); !strings.Contains(note, "SKIPPED") || !strings.Contains(note, stargzBinary) {
		t.Errorf("note without the binary: %q", note)
	}
	bin := filepath.Join(repo, "bin", "tools", stargzBinary)
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got := FindStargz(scripts); got != bin {
		t.Errorf("FindStargz = %q, want %q", got, bin)
	}
	// ctr-remote is not on this PATH: still skipped, naming it, not the daemon.
	if note := StargzNote(bin); !strings.Contains(note, "SKIPPED") || !strings.Contains(note, "ctr-remote") || strings.Contains(note, stargzBinary+" (") {
		t.Errorf("note without ctr-remote: %q", note)
	}
	cfg := Config{Modes: []Mode{ModePlain, ModeEstargz}, Stargz: bin}
	note, err := stargzSkip(&cfg)
	if err != nil || note == "" || len(cfg.Modes) != 1 || cfg.Modes[0] != ModePlain {
		t.Errorf("stargzSkip: modes %v, note %q, err %v", cfg.Modes, note, err)
	}
	cfg.Modes = []Mode{ModeEstargzOpt}
	if _, err := stargzSkip(&cfg); err == nil {
		t.Error("only stargz modes, none runnable: no error")
	}
}

func TestStargzRatios(t *testing.T) {
	runs := []Run{
		{Image: "py", Mode: ModePlain, Link: "l", Start: Start{Total: 10, Requests: 4}},
		{Image: "py", Mode: ModeLazypull, Link: "l", Start: Start{Total: 2, Requests: 10}},
		{Image: "py", Mode: ModeEstargz, Link: "l", Start: Start{Total: 5, Requests: 60}},
		{Image: "py", Mode: ModeEstargzOpt, Link: "l", Start: Start{Total: 4, Requests: 40}},
		{Image: "gcc", Mode: ModePlain, Link: "l", Start: Start{Total: 10, Requests: 4}},
		{Image: "gcc", Mode: ModeEstargz, Link: "l", Start: Start{Total: 8, Requests: 80}},
	}
	modes := []Mode{ModePlain, ModeLazypull, ModeEstargz, ModeEstargzOpt}
	sums := Summarize(runs, []string{"py", "gcc"}, []Link{{Name: "l"}}, modes, nil)
	get := func(im string, m Mode) Summary {
		for _, s := range sums {
			if s.Image == im && s.Mode == m {
				return s
			}
		}
		t.Fatalf("no summary of %s %s", im, m)
		return Summary{}
	}
	if s := get("py", ModeLazypull); !approx(s.VsStargz, 2) || !approx(s.RequestsVsStargz, 0.25) {
		t.Errorf("lazypull against optimized eStargz: %vx faster, %vx the requests; want 2, 0.25", s.VsStargz, s.RequestsVsStargz)
	}
	if s := get("py", ModeEstargzOpt); !approx(s.VsStargz, 1) {
		t.Errorf("optimized eStargz against itself: %v", s.VsStargz)
	}
	// No optimized run for gcc: eStargz is the reference.
	if s := get("gcc", ModePlain); !approx(s.VsStargz, 0.8) || !approx(s.RequestsVsStargz, 0.05) {
		t.Errorf("gcc plain against eStargz: %v, %v", s.VsStargz, s.RequestsVsStargz)
	}
	res := &Result{Complete: true, N: 1, Links: []Link{{Name: "l", Rate: 100e6}}, Modes: modes, Summaries: sums}
	var b bytes.Buffer
	WriteTables(&b, res)
	if !strings.Contains(b.String(), "x faster than stargz") || !strings.Contains(b.String(), "| 2.00x ") {
		t.Errorf("table without the stargz columns:\n%s", b.String())
	}
	res.Modes, res.Summaries = modes[:2], sums[:2]
	b.Reset()
	WriteTables(&b, res)
	if strings.Contains(b.String(), "stargz") {
		t.Errorf("stargz columns without a stargz mode:\n%s", b.String())
	}
}

// TestStartProxyNode: a stargz node runs containerd-stargz-grpc as containerd's proxy
// plugin "stargz" (containerd lists it, its log is the node's snapshotter log), and stop
// leaves nothing behind; a plugin that exits at start fails the start with its name and
// leaves no directory.
func TestStartProxyNode(t *testing.T) {
	testutil.NeedRoot(t, "containerd")
	scripts, err := filepath.Abs("../../scripts")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Scripts: scripts, WorkDir: testutil.ShortDir(t), Stargz: FindStargz(scripts)}
	ctx := context.Background()

	bad := proxyPlugin{name: "bad", stem: "bad", bin: "/bin/false", binary: "false", config: []byte("\n"),
		args: func(sock, root, config string) []string { return nil }}
	if n, err := startProxyNode(ctx, cfg, bad); err == nil || !strings.Contains(err.Error(), "false: exited at start") {
		t.Errorf("a plugin that exits: node %v, err %v", n, err)
	}
	if left := testutil.DirNames(t, cfg.WorkDir); len(left) != 0 {
		t.Errorf("a failed start left %v", left)
	}

	if cfg.Stargz == "" {
		t.Skip("SKIP: no " + stargzBinary)
	}
	n, err := startStargzNode(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	out, err := command(ctx, nil, filepath.Join(n.ctd, "ctr"), n.ctr("plugins", "ls")...)
	if err != nil {
		n.stop()
		t.Fatal(err)
	}
	if !regexp.MustCompile(`io\.containerd\.snapshotter\.v1\s+stargz\s+-\s+ok`).MatchString(out) {
		t.Errorf("containerd has no proxy plugin stargz:\n%s", out)
	}
	if err := n.stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(n.dir); !os.IsNotExist(err) {
		t.Errorf("the node's directory after stop: %v", err)
	}
}
