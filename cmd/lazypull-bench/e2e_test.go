package main

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
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
