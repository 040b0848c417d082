package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/awslabs/soci-snapshotter/config"
)

func TestLoadConfigMissing(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.toml")
	c, err := loadConfig(missing, false)
	if err != nil {
		t.Fatalf("absent default config: %v", err)
	}
	if c.ContentStoreConfig.Type != config.SociContentStoreType {
		t.Errorf("content store %q, want the snapshotter's own (soci)", c.ContentStoreConfig.Type)
	}
	if !c.PullModes.SOCIv2.Enable || c.PullModes.SOCIv1.Enable {
		t.Errorf("pull modes %+v: want the library's defaults (v2 on, v1 off)", c.PullModes)
	}
	if _, err := loadConfig(missing, true); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("absent config given on the command line: err %v, want one naming %s", err, missing)
	}
}

func TestLoadConfig(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		check     func(*config.Config) string
		errWant   string // substring of the error; "" for none
	}{
		{name: "values over defaults", doc: "[pull_modes.soci_v1]\n  enable = true\n[background_fetch]\n  disable = true\n",
			check: func(c *config.Config) string {
				if !c.PullModes.SOCIv1.Enable || !c.PullModes.SOCIv2.Enable || !c.BackgroundFetchConfig.Disable {
					return "values not read, or defaults lost"
				}
				if c.ContentStoreConfig.Type != config.SociContentStoreType {
					return "content store not defaulted to soci"
				}
				return ""
			}},
		{name: "content store given", doc: "[content_store]\n  type = \"containerd\"\n",
			check: func(c *config.Config) string {
				if c.ContentStoreConfig.Type != config.ContainerdContentStoreType {
					return "the file's content store type was overridden"
				}
				return ""
			}},
		{name: "unknown key", doc: "[background_fetch]\n  disabel = true\n", errWant: "background_fetch.disabel"},
		{name: "syntax", doc: "[pull_modes\n", errWant: "config"},
		{name: "cri keychain", doc: "[cri_keychain]\n  enable_keychain = true\n", errWant: "cri_keychain"},
		{name: "metrics", doc: "metrics_address = \"127.0.0.1:9000\"\n", errWant: "metrics_address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "config.toml")
			if err := os.WriteFile(p, []byte(tc.doc), 0o644); err != nil {
				t.Fatal(err)
			}
			c, err := loadConfig(p, true)
			if tc.errWant != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errWant) || !strings.Contains(err.Error(), p) {
					t.Fatalf("err %v, want one naming %q and the file", err, tc.errWant)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if msg := tc.check(c); msg != "" {
				t.Error(msg)
			}
		})
	}
}

func TestSplitRef(t *testing.T) {
	for _, tc := range []struct{ ref, repo, tag string }{
		{"127.0.0.1:5000/test/python:python-soci", "127.0.0.1:5000/test/python", "python-soci"},
		{"reg/python:v1", "reg/python", "v1"},
		{"127.0.0.1:5000/test/python", "", ""},
		{"reg/python:", "", ""},
	} {
		repo, tag, ok := splitRef(tc.ref)
		if ok != (tc.tag != "") || repo != tc.repo || tag != tc.tag {
			t.Errorf("splitRef(%q) = %q, %q, %v; want %q, %q", tc.ref, repo, tag, ok, tc.repo, tc.tag)
		}
	}
}
