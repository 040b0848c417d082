package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadConfigMissing(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.toml")
	c, err := loadConfig(missing, false)
	if err != nil {
		t.Fatalf("absent default config: %v", err)
	}
	if !c.DirectoryCacheConfig.Direct || c.FuseConfig.MergeBufferSize != defaultMergeBufferSize || c.FuseConfig.MergeWorkerCount != defaultMergeWorkerCount {
		t.Errorf("defaults not applied: %+v", c)
	}
	if _, err := loadConfig(missing, true); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("absent config given on the command line: err %v, want one naming %s", err, missing)
	}
}

func TestLoadConfig(t *testing.T) {
	p := filepath.Join(t.TempDir(), "config.toml")
	doc := `
noprometheus = false
no_background_fetch = true
prefetch_timeout_sec = 20

[blob]
  chunk_size = 100000

[directory_cache]
  direct = false

[[resolver.host."127.0.0.1:5000".mirrors]]
  host = "127.0.0.1:6000"
  insecure = true
`
	// no_prometheus is the library's name; noprometheus is not a key: reject the typo.
	if err := os.WriteFile(p, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadConfig(p, true); err == nil || !strings.Contains(err.Error(), "noprometheus") || !strings.Contains(err.Error(), p) {
		t.Fatalf("unknown key: err %v, want one naming the key and the file", err)
	}
	doc = strings.Replace(doc, "noprometheus", "no_prometheus", 1)
	if err := os.WriteFile(p, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := loadConfig(p, true)
	if err != nil {
		t.Fatal(err)
	}
	if !c.NoBackgroundFetch || c.PrefetchTimeoutSec != 20 || c.BlobConfig.ChunkSize != 100000 {
		t.Errorf("values not read: %+v", c.Config)
	}
	if c.DirectoryCacheConfig.Direct {
		t.Error("directory_cache.direct = false did not override the default")
	}
	if c.FuseConfig.MergeWorkerCount != defaultMergeWorkerCount {
		t.Errorf("a default the file does not set changed: merge_worker_count %d", c.FuseConfig.MergeWorkerCount)
	}
	m := c.ResolverConfig.Host["127.0.0.1:5000"].Mirrors
	if len(m) != 1 || m[0].Host != "127.0.0.1:6000" || !m[0].Insecure {
		t.Errorf("mirrors: %+v", m)
	}
}

func TestParseConfigRejects(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{"prefetch_size = -1", "prefetch_size"},
		{"[fuse]\nmerge_worker_count = -2", "fuse.merge_worker_count"},
		{"[cri_keychain]\nenable_keychain = true", "cri_keychain"},
		{"[kubeconfig_keychain]\nenable_keychain = true", "kubeconfig_keychain"},
		{"[[resolver.host.\"r\".mirrors]]\ninsecure = true", "host is empty"},
		{"prefetch_size = \"big\"", "prefetch_size"},
		{"[blob]\nchunk_sise = 1", "blob.chunk_sise"},
		{"prefetch_size = ", "line 1"},
	} {
		err := parseConfig(tc.doc, defaultConfig())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err %v, want one containing %q", tc.doc, err, tc.want)
		}
	}
}

func TestParseFlags(t *testing.T) {
	f, err := parseFlags([]string{"--address", "/tmp/s.sock", "--root", "/tmp/r"})
	if err != nil || f.address != "/tmp/s.sock" || f.root != "/tmp/r" || f.configGiven || f.config != defaultConfigPath {
		t.Errorf("got %+v, %v", f, err)
	}
	if f, err = parseFlags([]string{"--config", "/x.toml"}); err != nil || !f.configGiven {
		t.Errorf("--config: got %+v, %v", f, err)
	}
	if _, err := parseFlags([]string{"extra"}); err == nil {
		t.Error("a stray argument was accepted")
	}
	if _, err := parseFlags([]string{"--root", ""}); err == nil {
		t.Error("an empty --root was accepted")
	}
}
