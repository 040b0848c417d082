package service

import (
	"errors"
	"lazypull/internal/testutil"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	return testutil.WriteTemp(t, "config.toml", []byte(text))
}

func TestConfigMissingFile(t *testing.T) {
	f := DefaultConfig()
	missing := filepath.Join(t.TempDir(), "none.toml")
	if err := LoadConfig(missing, false, &f, nil); err != nil {
		t.Errorf("a missing file at the default path: %v", err)
	}
	if f.Address != DefaultAddress {
		t.Errorf("address %q changed", f.Address)
	}
	err := LoadConfig(missing, true, &f, nil)
	if err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("a missing file named with --config: %v, want an error naming it", err)
	}
}

func TestConfigErrorsNameFileLineKey(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       []string // each a regexp the error must match, in order
	}{
		{"unknown key", "root = \"/r\"\n\nstor = \"/s\"\n",
			[]string{`^config FILE:3: key "stor": unknown key \(did you mean "store"\?\)$`}},
		{"dashes", "store-max-bytes = 5\n",
			[]string{`^config FILE:1: key "store-max-bytes": unknown key \(did you mean "store_max_bytes"\?\)$`}},
		{"not a key of the file", "plain_http = true\nconfig = \"/other.toml\"\n",
			[]string{`^config FILE:2: key "config": unknown key$`}},
		{"table", "root = \"/r\"\n[snapshotter]\nroot = \"/x\"\n",
			[]string{`^config FILE:2: key "snapshotter": unknown key$`}},
		{"dotted", "root = \"/r\"\nproxy.address = \"/x\"\n",
			[]string{`^config FILE:2: key "proxy": unknown key$`}},
		{"bool as string", "root = \"/r\"\n  plain_http = \"yes\"\n",
			[]string{`^config FILE:2: key "plain_http": wrong type: want a boolean, got the string "yes"$`}},
		{"size with an unknown unit", "store_max_bytes = \"10Q\"\n",
			[]string{`^config FILE:1: key "store_max_bytes": size "10Q": want bytes, or a number with a unit .*like 10G or 512MiB$`}},
		{"negative size", "store_max_bytes = -5\n",
			[]string{`^config FILE:1: key "store_max_bytes": invalid value -5: a size must not be negative$`}},
		{"size as float", "\n\nstore_max_bytes = 1.5\n",
			[]string{`^config FILE:3: key "store_max_bytes": wrong type: want a size \(bytes, or a string like "10G" or "auto"\), got the float 1.5$`}},
		{"path as integer", "address = 5\n",
			[]string{`^config FILE:1: key "address": wrong type: want a string, got the integer 5$`}},
		{"path as array", "root = [\"/a\", \"/b\"]\n",
			[]string{`^config FILE:1: key "root": wrong type: want a string, got an array$`}},
		{"syntax", "root = \"/r\"\nstore = /s\n",
			[]string{`^config FILE:2: .*`}},
		{"every problem, in the file's order", "plain_http = 1\nroot = \"/r\"\nbogus = true\nstore = false\n",
			[]string{`^config FILE:1: key "plain_http": wrong type`, `^config FILE:3: key "bogus": unknown key$`, `^config FILE:4: key "store": wrong type`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := DefaultConfig()
			p := writeConfig(t, tc.text)
			err := LoadConfig(p, true, &f, nil)
			if err == nil {
				t.Fatalf("accepted:\n%s", tc.text)
			}
			lines := strings.Split(err.Error(), "; ")
			if len(lines) != len(tc.want) {
				t.Fatalf("%d problems reported, want %d:\n%v", len(lines), len(tc.want), err)
			}
			for i, w := range tc.want {
				re := regexp.MustCompile(strings.ReplaceAll(w, "FILE", regexp.QuoteMeta(p)))
				if !re.MatchString(lines[i]) {
					t.Errorf("problem %d:\n got %s\nwant %s", i, lines[i], re)
				}
			}
			if f.Root != DefaultRoot || f.PlainHTTP {
				t.Errorf("a setting of a refused file was applied: %+v", f)
			}
		})
	}
}

func TestCheckSocketPath(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	live := filepath.Join(dir, "live.sock")
	ln, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	stale := filepath.Join(dir, "stale.sock")
	sl, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	sl.(*net.UnixListener).SetUnlinkOnClose(false)
	sl.Close()

	for _, tc := range []struct {
		name, path, want string // want "": accepted
	}{
		{"new, directory made", filepath.Join(dir, "run", "lazypull", "sn.sock"), ""},
		{"stale socket", stale, ""},
		{"empty", "", "empty path"},
		{"too long", filepath.Join(dir, strings.Repeat("x", 120)+".sock"), "a unix socket's path must be under 108"},
		{"directory is a file", filepath.Join(file, "sn.sock"), "cannot create its directory"},
		{"a file in the way", file, "a regular file is there; not replacing it"},
		{"a directory in the way", dir, "a directory is there"},
		{"served by another process", live, "another process is serving on it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckSocketPath(tc.path)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("got %v, want an error saying %q", err, tc.want)
			case tc.want != "" && tc.path != "" && !strings.Contains(err.Error(), tc.path):
				t.Errorf("%v does not name the socket", err)
			}
		})
	}
	if _, err := os.Stat(file); err != nil {
		t.Errorf("the file in the way is gone: %v", err)
	}
}

// TestCheckSocketPathReadOnlyDir: root writes anywhere except on a read-only file system,
// so a read-only tmpfs is the directory that cannot be written.
func TestCheckSocketPathReadOnlyDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIP: mounting a read-only tmpfs needs root")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_RDONLY, "size=64k"); err != nil {
		t.Fatalf("mount a read-only tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	err := CheckSocketPath(filepath.Join(dir, "sn.sock"))
	if err == nil || !strings.Contains(err.Error(), "is not writable") || !errors.Is(err, unix.EROFS) {
		t.Errorf("got %v, want: directory not writable (read-only file system)", err)
	}
}
