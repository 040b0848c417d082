package cli

import (
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"lazypull/internal/cmdline"
	"lazypull/internal/service"
	"lazypull/internal/testutil"
)

// snapshotterFlagSet is the real schema of the snapshotter's config file: its flags.
func snapshotterFlagSet(t *testing.T, args ...string) (*flag.FlagSet, *snapshotterFlags) {
	t.Helper()
	cmd := snapshotterCommand()
	fs := newFlagSet(cmd)
	f := cmd.flags(fs).(*snapshotterFlags)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return fs, f
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	return testutil.WriteTemp(t, "config.toml", []byte(text))
}

func TestConfigSetsFlagsCommandLineWins(t *testing.T) {
	_, f := snapshotterFlagSet(t, "--store", "/from/flag")
	p := writeConfig(t, `# lazypull
address = "/run/x/sn.sock"
root = "/var/lib/x"
store = "/from/file"
store_max_bytes = 1073741824
plain_http = true
hosts_dir = "/etc/containerd/certs.d"
metrics_addr = "127.0.0.1:9000"
platform = "linux/arm64"
`)
	if err := f.load(p, true); err != nil {
		t.Fatal(err)
	}
	if f.Address != "/run/x/sn.sock" || f.Root != "/var/lib/x" || f.StoreMaxBytes != 1<<30 || !f.PlainHTTP ||
		f.HostsDir != "/etc/containerd/certs.d" || f.MetricsAddr != "127.0.0.1:9000" || f.Platform != "linux/arm64" {
		t.Errorf("settings not applied: %+v", f)
	}
	if f.Store != "/from/flag" {
		t.Errorf("store = %q; the flag on the command line must win over the file", f.Store)
	}
}

// TestSnapshotterRefusesBadConfig: the command stops before opening anything, exit 1, the
// problem on stderr.
func TestSnapshotterRefusesBadConfig(t *testing.T) {
	dir := t.TempDir()
	p := writeConfig(t, "root = \""+filepath.Join(dir, "root")+"\"\nstore = \""+filepath.Join(dir, "store")+"\"\nplain_http = \"true\"\n")
	code, _, stderr := run(t, "snapshotter", "--config", p, "--address", filepath.Join(dir, "sn.sock"))
	if code != cmdline.ExitFailure {
		t.Errorf("exit %d, want %d", code, cmdline.ExitFailure)
	}
	if want := "config " + p + `:3: key "plain_http": wrong type`; !strings.Contains(stderr, want) {
		t.Errorf("stderr %q does not say %q", stderr, want)
	}
	for _, d := range []string{"root", "store"} {
		if _, err := os.Stat(filepath.Join(dir, d)); err == nil {
			t.Errorf("%s made before the config was checked", d)
		}
	}
}

// TestConfigDocumented: the flags (but --config) are the keys of service.Config, one for
// one; the help shows every key with its default, and README's example config.toml names
// every key and loads as it is.
func TestConfigDocumented(t *testing.T) {
	code, help, _ := run(t, "snapshotter", "-h")
	if code != 0 {
		t.Fatalf("snapshotter -h: exit %d", code)
	}
	fs, _ := snapshotterFlagSet(t)
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	example := readmeConfigExample(t, string(readme))
	var keys []string
	fs.VisitAll(func(fl *flag.Flag) {
		if fl.Name == "config" {
			return
		}
		keys = append(keys, configKey(fl.Name))
		if !strings.Contains(help, "  "+tomlSetting(fl)+"\n") {
			t.Errorf("help does not show %q", tomlSetting(fl))
		}
		if !regexp.MustCompile(`(?m)^#? ?` + regexp.QuoteMeta(configKey(fl.Name)) + ` = `).MatchString(example) {
			t.Errorf("README's config.toml example does not name %s", configKey(fl.Name))
		}
	})
	if want := slices.Sorted(slices.Values(service.ConfigKeys())); !slices.Equal(keys, want) {
		t.Errorf("the flags are the keys %q; service.Config's are %q", keys, want)
	}
	_, f := snapshotterFlagSet(t)
	if err := f.load(writeConfig(t, example), true); err != nil {
		t.Errorf("README's config.toml example does not load: %v", err)
	}
}

// readmeConfigExample is the ```toml block of README.md that follows the line naming
// /etc/lazypull/config.toml.
func readmeConfigExample(t *testing.T, readme string) string {
	t.Helper()
	m := regexp.MustCompile("(?s)/etc/lazypull/config.toml[^\n]*\n+```toml\n(.*?)```").FindStringSubmatch(readme)
	if m == nil {
		t.Fatal("README.md has no ```toml block after a line naming /etc/lazypull/config.toml")
	}
	return m[1]
}

// TestConfigLogLevelAndKeeperIdle: log_level and keeper_idle are keys as their flags are,
// and a wrong value is refused with the file, the line and what to write instead.
func TestConfigLogLevelAndKeeperIdle(t *testing.T) {
	_, f := snapshotterFlagSet(t)
	if f.LogLevel.Level() != slog.LevelInfo || f.KeeperIdle != 10*time.Second {
		t.Fatalf("defaults: log level %v, keeper idle %v", f.LogLevel.Level(), f.KeeperIdle)
	}
	if err := f.load(writeConfig(t, "log_level = \"debug\"\nkeeper_idle = \"500ms\"\n"), true); err != nil {
		t.Fatal(err)
	}
	if f.LogLevel.Level() != slog.LevelDebug || f.KeeperIdle != 500*time.Millisecond {
		t.Errorf("config not applied: log level %v, keeper idle %v", f.LogLevel.Level(), f.KeeperIdle)
	}
	_, f = snapshotterFlagSet(t, "--log-level", "WARN")
	if f.LogLevel.Level() != slog.LevelWarn {
		t.Errorf("--log-level WARN: %v", f.LogLevel.Level())
	}
	for _, c := range []struct{ text, want string }{
		{"\nlog_level = \"verbose\"\n", `:2: key "log_level": log level "verbose": want debug, info, warn or error`},
		{"prefetch_wait = \"5\"\n", `:1: key "prefetch_wait": invalid duration "5": a duration needs a unit (ms, s, m, h), like "5s"`},
		{"keeper_idle = \"ten\"\n", `:1: key "keeper_idle": invalid duration "ten": want a number with a unit`},
	} {
		_, f := snapshotterFlagSet(t)
		p := writeConfig(t, c.text)
		if err := f.load(p, true); err == nil || !strings.Contains(err.Error(), "config "+p+c.want) {
			t.Errorf("%q: %v, want %q", c.text, err, c.want)
		}
	}
	if code, _, stderr := run(t, "mount", "--prefetch-wait", "5", "r", t.TempDir()); code != cmdline.ExitUsage || !strings.Contains(stderr, `invalid duration "5": a duration needs a unit (ms, s, m, h), like "5s"`) {
		t.Errorf("--prefetch-wait 5: exit %d, %s", code, stderr)
	}
	dir := t.TempDir()
	sn := []string{"snapshotter", "--config", writeConfig(t, ""), "--address", filepath.Join(dir, "sn.sock"), "--root", filepath.Join(dir, "root"),
		"--store", filepath.Join(dir, "store")}
	for _, args := range [][]string{append(sn, "--keeper-idle", "0"), append(sn, "--log-level", "loud"),
		{"mount", "--store", filepath.Join(dir, "store"), "--log-level", "loud", "r", dir}} {
		if code, _, stderr := run(t, args...); code != cmdline.ExitUsage {
			t.Errorf("%q: exit %d, want %d; %s", args, code, cmdline.ExitUsage, stderr)
		}
	}
	for _, d := range []string{"root", "store"} {
		if _, err := os.Stat(filepath.Join(dir, d)); err == nil {
			t.Errorf("%s made before the settings were checked", d)
		}
	}
}
