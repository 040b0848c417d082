package service

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"lazypull/internal/testutil"

	versionapi "github.com/containerd/containerd/api/services/version/v1"
	ptypes "github.com/containerd/containerd/v2/pkg/protobuf/types"
	"google.golang.org/grpc"
)

const readmeSocket = "/run/lazypull/snapshotter.sock"

// readmeContainerdConfig is README's containerd config.toml for containerd 1.6/1.7 (major 1)
// or 2.x (major 2): the ```toml block after the line that names that version.
func readmeContainerdConfig(t *testing.T, major int) string {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	marker := map[int]string{1: "containerd 1.6 and 1.7\n(config version 2):", 2: "containerd 2.x (config version 3"}[major]
	m := regexp.MustCompile("(?s)" + regexp.QuoteMeta(marker) + "[^`]*```toml\n(.*?)```").FindStringSubmatch(string(readme))
	if m == nil {
		t.Fatalf("README.md has no ```toml block after %q", marker)
	}
	return m[1]
}

// TestContainerdConfigProblems: what the snapshotter finds wrong in containerd's config, for
// each containerd version: README's configs are right for their version, and README's
// version 2 config on containerd 2.x (which migrates it without CRI's snapshotter, so that
// pods run on overlayfs) is wrong.
func TestContainerdConfigProblems(t *testing.T) {
	v2, v3 := readmeContainerdConfig(t, 1), readmeContainerdConfig(t, 2)
	const proxy = "\n[proxy_plugins.lazypull]\n  type = \"snapshot\"\n  address = \"" + readmeSocket + "\"\n"
	for _, c := range []struct {
		name, config, containerd string
		want                     []string // substrings of the problems; none: no problem
	}{
		{"README version 2 on 1.6", v2, "1.6.20~ds1", nil},
		{"README version 2 on 1.7", v2, "v1.7.27", nil},
		{"README version 3 on 2.4", v3, "2.4.2+unknown", nil},
		{"README version 2 on 2.4", v2, "2.4.2+unknown", []string{`pulls with snapshotter "overlayfs", not "lazypull"`, "disable_snapshot_annotations", "version = 3"}},
		{"README version 2 on 2.0", v2, "v2.0.0", []string{`"overlayfs"`}},
		{"version 2 with runtimes on 2.4 (migrated whole)", v2 + "  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n    runtime_type = \"io.containerd.runc.v2\"\n", "2.4.2", nil},
		{"README version 3 on 1.6", v3, "1.6.20", []string{"config version 3"}},
		{"version 3 without disable_snapshot_annotations",
			"version = 3\n" + proxy + "[plugins.'io.containerd.cri.v1.images']\n  snapshotter = \"lazypull\"\n", "2.4.2",
			[]string{"disable_snapshot_annotations is not false"}},
		{"version 2 with disable_snapshot_annotations = true",
			"version = 2\n" + proxy + "[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"lazypull\"\n  disable_snapshot_annotations = true\n", "1.6.20",
			[]string{"disable_snapshot_annotations is not false", `"io.containerd.grpc.v1.cri".containerd`}},
		{"version 1 (plugins.cri) on 1.6", proxy + "[plugins.cri.containerd]\n  snapshotter = \"lazypull\"\n  disable_snapshot_annotations = false\n", "1.6.20", nil},
		{"no proxy plugin", "version = 2\n", "1.6.20", []string{"no [proxy_plugins] entry", readmeSocket}},
		{"proxy plugin at another socket", strings.ReplaceAll(v3, readmeSocket, "/run/other.sock"), "2.4.2", []string{"no [proxy_plugins] entry"}},
		{"proxy plugin, CRI not meant for it", "version = 3\n" + proxy, "2.4.2", nil},
		{"CRI disabled", "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n" + proxy +
			"[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"lazypull\"\n", "2.4.2", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := parseContainerdConfig(c.config)
			if err != nil {
				t.Fatalf("parse: %v\n%s", err, c.config)
			}
			got := strings.Join(cfg.problems(c.containerd, readmeSocket), "\n")
			if len(c.want) == 0 && got != "" {
				t.Errorf("problems, want none:\n%s", got)
			}
			if len(c.want) > 0 && got == "" {
				t.Errorf("no problem found, want %q", c.want)
			}
			for _, w := range c.want {
				if !strings.Contains(got, w) {
					t.Errorf("problems do not say %q:\n%s", w, got)
				}
			}
		})
	}
}

type fakeVersion struct {
	versionapi.UnimplementedVersionServer
	version string
}

func (f *fakeVersion) Version(context.Context, *ptypes.Empty) (*versionapi.VersionResponse, error) {
	return &versionapi.VersionResponse{Version: f.version}, nil
}

// TestWatchContainerdWarns: the snapshotter waits for containerd's config and for containerd
// to answer at the address the config names, asks its version over the API, and logs one
// warning for README's version 2 config on a containerd 2 and one info line for README's
// version 3 config; nothing before both are there.
func TestWatchContainerdWarns(t *testing.T) {
	for _, c := range []struct {
		major   int
		version string
		want    string
	}{
		{1, "2.4.2+unknown", `level=WARN msg="containerd will not use this snapshotter as configured"`},
		{2, "2.4.2+unknown", `level=INFO msg="containerd's config uses this snapshotter"`},
		{1, "1.6.20~ds1", `level=INFO msg="containerd's config uses this snapshotter"`},
	} {
		t.Run(c.version+"/README for "+map[int]string{1: "1.6", 2: "2.x"}[c.major], func(t *testing.T) {
			dir := t.TempDir()
			sock := filepath.Join(dir, "containerd.sock")
			config := filepath.Join(dir, "config.toml")
			var buf testutil.LogBuffer
			log := slog.New(slog.NewTextHandler(&buf, nil))
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			done := make(chan struct{})
			go func() { watchContainerd(ctx, log, config, readmeSocket, 10*time.Millisecond); close(done) }()

			// Neither the config nor containerd: nothing yet.
			text := readmeContainerdConfig(t, c.major) + "\n[grpc]\n  address = \"" + sock + "\"\n"
			if err := os.WriteFile(config, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond) // a few rounds with the config and no containerd
			if s := buf.String(); s != "" {
				t.Fatalf("logged before containerd answered:\n%s", s)
			}
			ln, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			srv := grpc.NewServer()
			versionapi.RegisterVersionServer(srv, &fakeVersion{version: c.version})
			go srv.Serve(ln)
			defer srv.Stop()
			select {
			case <-done:
			case <-ctx.Done():
				t.Fatal("watchContainerd did not return once containerd answered")
			}
			lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], c.want) || !strings.Contains(lines[0], "containerd="+c.version) {
				t.Fatalf("log:\n%s\nwant one line: %s (containerd=%s)", buf.String(), c.want, c.version)
			}
			t.Logf("%s", lines[0])
		})
	}
}
