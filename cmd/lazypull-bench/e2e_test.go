package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"lazypull/internal/bench"
)

// TestBenchScenarioFlags: the scenario flags are parsed, and bad ones are refused as usage
// errors before anything starts.
func TestBenchScenarioFlags(t *testing.T) {
	f := &benchFlags{scenarios: "update, scale", update: "python", scaleImage: " python ", scale: "1,10,50",
		scenarioLinks: "100M/20ms,1G/2ms", scenarioN: 2}
	sc, err := scenarioConfig(f)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(sc.Run, []string{"update", "scale"}) || !slices.Equal(sc.ScaleCounts, []int{1, 10, 50}) ||
		sc.ScaleImage != "python" || len(sc.Links) != 2 || sc.Links[1].Name != "1G/2ms" || sc.N != 2 {
		t.Errorf("scenarioConfig = %+v", sc)
	}
	for _, tc := range []struct {
		args []string
		err  string
	}{
		{[]string{"--scenarios", "warm"}, `unknown scenario "warm"`},
		{[]string{"--scenarios", ""}, "--scenarios: none given"},
		{[]string{"--scale", "0"}, "--scale: container count 0"},
		{[]string{"--scale", "ten"}, `--scale: container count "ten"`},
		{[]string{"--scenario-links", "fast"}, "--scenario-links: link"},
		{[]string{"--scenarios", "scale", "--scale-image", "nope"}, `scale image "nope" unknown`},
		{[]string{"--scenarios", "update", "--update", "node"}, `image "node" has no next version`},
		{[]string{"--scenarios", "update", "--scenario-n", "0"}, "need at least 1 run per scenario"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, out, errOut := run(t, append([]string{"e2e"}, tc.args...)...)
			if code != 2 || !strings.Contains(errOut, tc.err) || out != "" {
				t.Errorf("exit %d, stderr %q; want 2 and %q", code, errOut, tc.err)
			}
		})
	}
}

func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = Main(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// TestBenchUserImageFlags: --user-image benches the user's image alone, in the cold starts
// only, unless --images or --scenarios are given; bad user-image flags are usage errors.
func TestBenchUserImageFlags(t *testing.T) {
	layout := t.TempDir()
	if err := os.WriteFile(filepath.Join(layout, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args      []string
		images    []string
		scenarios []string
	}{
		{[]string{"--user-image", layout, "--user-name", "mine"}, []string{"mine"}, []string{"cold"}},
		{[]string{"--user-image", layout, "--images", "python"}, []string{"python", "user"}, []string{"cold"}},
		{[]string{"--user-image", layout, "--scenarios", "cold,scale"}, []string{"user"}, []string{"cold", "scale"}},
	} {
		fs := flag.NewFlagSet("e2e", flag.ContinueOnError)
		f := e2eCommand.flags(fs).(*benchFlags)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		sc, err := scenarioConfig(f)
		if err != nil {
			t.Fatal(err)
		}
		cfg := bench.Config{Images: splitList(f.images), Scenarios: sc}
		if err := f.addUserImage(&cfg); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if !slices.Equal(cfg.Images, tc.images) || !slices.Equal(cfg.Scenarios.Run, tc.scenarios) ||
			len(cfg.User) != 1 || cfg.User[0].Source != "oci:"+layout {
			t.Errorf("%v: images %v, scenarios %v, user %+v; want %v, %v", tc.args, cfg.Images, cfg.Scenarios.Run, cfg.User, tc.images, tc.scenarios)
		}
	}
	for _, tc := range []struct {
		args []string
		err  string
	}{
		{[]string{"--user-cmd", "true"}, "--user-cmd without --user-image"},
		{[]string{"--user-image", layout, "--user-name", "python"}, `"python" is a built-in image's`},
		{[]string{"--user-image", layout, "--user-name", "../x"}, `image name "../x"`},
		{[]string{"--user-image", layout, "--user-server"}, "a server needs a readiness line"},
		{[]string{"--user-image", t.TempDir()}, "is not an OCI layout"},
		{[]string{"--user-image", "Not A Reference"}, "neither an OCI layout directory nor an image reference"},
		{[]string{"--user-image", layout, "--user-cmd", `["python3",`}, "not a JSON array"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, out, errOut := run(t, append([]string{"e2e"}, tc.args...)...)
			if code != 2 || !strings.Contains(errOut, tc.err) || out != "" {
				t.Errorf("exit %d, stderr %q; want 2 and %q", code, errOut, tc.err)
			}
		})
	}
}
