package e2e

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"lazypull/internal/testutil"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestContainerdTestsListed: every test that starts a snapshotter with its containerd
// (startSnapshotter, directly or through the package's helpers) is one scripts/test.sh runs
// again on containerd 2 ($containerd_tests), so that a new one cannot stay on 1.6 unnoticed.
// It reads the sources: no registry or containerd needed.
func TestContainerdTestsListed(t *testing.T) {
	script, err := os.ReadFile("../../scripts/test.sh")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^containerd_tests='([^']+)'$`).FindSubmatch(script)
	if m == nil {
		t.Fatal("scripts/test.sh has no containerd_tests='REGEXP' line")
	}
	listed := regexp.MustCompile(string(m[1]))

	fset := token.NewFileSet()
	files, err := filepath.Glob("*_test.go")
	if err != nil {
		t.Fatal(err)
	}
	calls := map[string]map[string]bool{} // function or method name -> names it calls
	var tests []string
	for _, name := range files {
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			called := map[string]bool{}
			ast.Inspect(fn.Body, func(n ast.Node) bool {
				if c, ok := n.(*ast.CallExpr); ok {
					switch f := c.Fun.(type) {
					case *ast.Ident:
						called[f.Name] = true
					case *ast.SelectorExpr:
						called[f.Sel.Name] = true
					}
				}
				return true
			})
			for k := range calls[fn.Name.Name] { // methods of one name on several types
				called[k] = true
			}
			calls[fn.Name.Name] = called
			if strings.HasPrefix(fn.Name.Name, "Test") && fn.Recv == nil {
				tests = append(tests, fn.Name.Name)
			}
		}
	}
	var reaches func(name string, seen map[string]bool) bool
	reaches = func(name string, seen map[string]bool) bool {
		if name == "startSnapshotterWith" {
			return true
		}
		if seen[name] {
			return false
		}
		seen[name] = true
		for c := range calls[name] {
			if reaches(c, seen) {
				return true
			}
		}
		return false
	}
	n := 0
	for _, test := range tests {
		if !reaches(test, map[string]bool{}) {
			continue
		}
		n++
		if !listed.MatchString(test) {
			t.Errorf("%s starts a snapshotter with its containerd, but scripts/test.sh's containerd_tests does not name it: it runs on containerd 1.6 only", test)
		}
	}
	if n == 0 {
		t.Fatal("no test found that starts a snapshotter: the source analysis is broken")
	}
}

// wantContainerdChecked waits for the snapshotter's verdict on its containerd's config
// (logged once containerd answers) and fails unless it is that containerd will use it.
func (s *snapshotterEnv) wantContainerdChecked(t *testing.T, ok bool) string {
	t.Helper()
	var verdict string
	testutil.Await(t, time.Minute, "the snapshotter's check of its containerd's config (in its log)", func() (bool, string) {
		log := s.log.String()
		for _, l := range strings.Split(log, "\n") {
			if strings.Contains(l, `msg="containerd's config uses this snapshotter"`) || strings.Contains(l, `msg="containerd will not use this snapshotter as configured"`) {
				verdict = l
				return true, ""
			}
		}
		return false, log
	})
	if good := strings.Contains(verdict, `msg="containerd's config uses this snapshotter"`); good != ok {
		t.Errorf("the snapshotter's check of its containerd's config: %s", verdict)
	}
	return verdict
}

// readmeContainerdConfig is README's containerd config.toml for containerd 1.6/1.7 or 2.x
// ("1.6", "2"), with the snapshotter's socket at sock.
func readmeContainerdConfig(t *testing.T, version, sock string) string {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	marker := map[string]string{"1.6": "containerd 1.6 and 1.7\n(config version 2):", "2": "containerd 2.x (config version 3"}[version]
	m := regexp.MustCompile("(?s)" + regexp.QuoteMeta(marker) + "[^`]*```toml\n(.*?)```").FindStringSubmatch(string(readme))
	if m == nil {
		t.Fatalf("README.md has no ```toml block after %q", marker)
	}
	return strings.ReplaceAll(m[1], "/run/lazypull/snapshotter.sock", sock)
}

// withConfigFile makes startSnapshotter's containerd run on config text (scripts/containerd.sh
// CONTAINERD_CONFIG_FILE: only its root, state and sockets added).
func withConfigFile(text func(s *snapshotterEnv) string) snapshotterOption {
	return func(s *snapshotterEnv) []string {
		p := filepath.Join(s.dir, "containerd-config.toml")
		if err := os.WriteFile(p, []byte(text(s)), 0o644); err != nil {
			panic(err)
		}
		return []string{"CONTAINERD_CONFIG_FILE=" + p}
	}
}

// TestCRIReadmeConfig: containerd runs on README's containerd config for its version,
// verbatim, but for the snapshotter's socket: crictl pull of a lazypull image leaves every
// layer a remote snapshot of the lazypull snapshotter, and the snapshotter's check of
// containerd's config says containerd uses it. On containerd 2, README's config for 1.6/1.7
// (version 2) is the trap it warns about: containerd migrates it without CRI's snapshotter,
// the pull unpacks every layer with overlayfs, the lazypull snapshotter sees none, and its
// check warns.
func TestCRIReadmeConfig(t *testing.T) {
	e := setup(t)
	tool(t, "crictl")
	ref := e.lazyImage(t, "python")
	m := remoteManifest(t, ref)
	v := containerdVersion()
	configs := []string{v}
	if v == "2" {
		configs = append(configs, "1.6")
	}
	for _, config := range configs {
		lazy := config == v
		t.Run("README for "+config, func(t *testing.T) {
			s := e.startSnapshotter(t, withConfigFile(func(s *snapshotterEnv) string { return readmeContainerdConfig(t, config, s.sock) }))
			s.crictl(t, "pull", ref)
			remote, all := s.remoteSnapshots(t, criNamespace)
			line := s.wantContainerdChecked(t, lazy)
			t.Logf("containerd %s on README's config for %s: %d of %d layers remote lazypull snapshots; %s", v, config, remote, all, line)
			if lazy && (remote != len(m.Layers) || all != len(m.Layers)) {
				t.Errorf("%d remote snapshots of %d, want all %d layers remote", remote, all, len(m.Layers))
			}
			if !lazy {
				if all != 0 {
					t.Errorf("%d lazypull snapshots, want none: containerd 2 should not use the snapshotter on a version 2 config (if it does now, README and the check can say so)", all)
				}
				for _, want := range []string{`pulls with snapshotter \"overlayfs\"`, "version = 3"} {
					if !strings.Contains(line, want) {
						t.Errorf("the warning does not say %q", want)
					}
				}
			}
		})
	}
}

// TestSnapshotterShimOfItsContainerd: a container of the test's containerd runs under the runc
// shim beside that containerd's binary (containerd 2's own, not Debian's 1.6 one, which would
// be first on PATH otherwise).
func TestSnapshotterShimOfItsContainerd(t *testing.T) {
	e := setup(t)
	const ns = "lazypull-e2e-shim"
	s, ref := e.pythonPulled(t, ns)
	id := fmt.Sprintf("shim-%d", os.Getpid())
	s.ctr(t, ns, "run", "-d", "--snapshotter", "lazypull", ref, id, "python3", "-c", "import time; time.sleep(600)")
	ctrBin, err := filepath.EvalSymlinks(filepath.Join(s.containerd, "ctr"))
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(filepath.Dir(ctrBin), "containerd-shim-runc-v2")
	sock := filepath.Join(s.containerd, "containerd.sock")
	var shims []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), "\x00-address\x00"+sock+"\x00") {
			continue
		}
		exe, err := os.Readlink(filepath.Join(filepath.Dir(p), "exe"))
		if err == nil {
			shims = append(shims, exe)
		}
	}
	if len(shims) == 0 {
		t.Fatalf("no shim process with -address %s", sock)
	}
	for _, exe := range shims {
		if exe != want {
			t.Errorf("the shim of containerd %s is %s, want %s", containerdVersion(), exe, want)
		}
	}
	t.Logf("containerd %s: shim %s", containerdVersion(), shims[0])
	// The task goes with containerd.sh stop.
}
