package bench

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseCounts(t *testing.T) {
	for in, want := range map[string][]int{
		"1,10,50":    {1, 10, 50},
		" 3 , 1 ,3,": {3, 1},
		"200":        {200},
	} {
		got, err := ParseCounts(in)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("ParseCounts(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", ",", "0", "-1", "1,x", "1.5", "201", "0x10", "+5"} {
		if got, err := ParseCounts(bad); err == nil {
			t.Errorf("ParseCounts(%q) = %v, want an error", bad, got)
		}
	}
}

func TestScenarioValidate(t *testing.T) {
	l, _ := ParseLink("100M/20ms")
	modes := []Mode{ModePlain, ModeLazypull}
	good := ScenarioConfig{Run: []string{"cold", "update", "scale"}, Update: []string{"python"}, ScaleImage: "python",
		ScaleCounts: []int{1, 10}, Links: []Link{l}, N: 1}
	if err := good.validate(modes); err != nil {
		t.Fatalf("validate(%+v): %v", good, err)
	}
	// The cold starts alone need none of the scenario fields.
	if err := (&ScenarioConfig{Run: []string{"cold"}}).validate(modes); err != nil {
		t.Errorf("cold only: %v", err)
	}
	if err := (&ScenarioConfig{}).validate(modes); err != nil || !(ScenarioConfig{}).Has(ScenarioCold) {
		t.Errorf("no scenarios given: %v; want the cold starts alone", err)
	}
	for name, mod := range map[string]func(*ScenarioConfig){
		"unknown scenario":  func(c *ScenarioConfig) { c.Run = append(c.Run, "warm") },
		"no link":           func(c *ScenarioConfig) { c.Links = nil },
		"n 0":               func(c *ScenarioConfig) { c.N = 0 },
		"no update image":   func(c *ScenarioConfig) { c.Update = nil },
		"no v2":             func(c *ScenarioConfig) { c.Update = []string{"node"} },
		"unknown scale img": func(c *ScenarioConfig) { c.ScaleImage = "nope" },
		"no counts":         func(c *ScenarioConfig) { c.ScaleCounts = nil },
		"count too big":     func(c *ScenarioConfig) { c.ScaleCounts = []int{maxScale + 1} },
	} {
		c := good
		c.Run = slices.Clone(good.Run)
		mod(&c)
		if err := c.validate(modes); err == nil {
			t.Errorf("%s: validate(%+v) passed", name, c)
		}
	}
	if err := good.validate([]Mode{ModePlain, ModeLazypull, ModeProfile}); err != nil {
		t.Errorf("all of today's modes: %v", err)
	}
	if err := good.validate([]Mode{ModeEstargz, ModeEstargzOpt}); err != nil {
		t.Errorf("the stargz modes: %v", err)
	}
	if err := good.validate([]Mode{"stargz"}); err == nil {
		t.Error("a mode without a scenario hook passed")
	}
	// Scale alone does not need an update image, and the reverse.
	c := good
	c.Run, c.Update = []string{"scale"}, nil
	if err := c.validate(modes); err != nil {
		t.Errorf("scale alone: %v", err)
	}
}

func TestConfigImagesAndLinks(t *testing.T) {
	slow, _ := ParseLink("100M/20ms")
	fast, _ := ParseLink("1G/2ms")
	cfg := Config{Images: []string{"python", "node"}, Links: []Link{fast, slow},
		Scenarios: ScenarioConfig{Run: []string{"cold", "update", "scale"}, Update: []string{"python"}, ScaleImage: "node",
			Links: []Link{slow}}}
	if got, want := cfg.allImages(), []string{"python", "node", "python-v2"}; !slices.Equal(got, want) {
		t.Errorf("allImages = %v, want %v", got, want)
	}
	if got := cfg.allLinks(); len(got) != 2 || got[0].Name != fast.Name || got[1].Name != slow.Name {
		t.Errorf("allLinks = %v, want the cold links once each", got)
	}
	cfg.Scenarios.Run = []string{"update"}
	if got, want := cfg.allImages(), []string{"python", "python-v2"}; !slices.Equal(got, want) {
		t.Errorf("update only: allImages = %v, want %v", got, want)
	}
	if got := cfg.allLinks(); len(got) != 1 || got[0].Name != slow.Name {
		t.Errorf("update only: allLinks = %v", got)
	}
	cfg.Scenarios.Run = []string{"cold"}
	if got := cfg.allImages(); !slices.Equal(got, cfg.Images) {
		t.Errorf("cold only: allImages = %v", got)
	}
}

func TestScenarioJobs(t *testing.T) {
	l, _ := ParseLink("100M/20ms")
	c := ScenarioConfig{Run: []string{"update", "scale"}, Update: []string{"python"}, ScaleImage: "python",
		ScaleCounts: []int{1, 10, 50}, Links: []Link{l}, N: 2}
	modes := []Mode{ModePlain, ModeLazypull}
	js := scenarioJobs(c, modes, 42)
	if len(js) != 2*2*(1+3) {
		t.Fatalf("%d jobs, want 16", len(js))
	}
	seen := map[string]bool{}
	for i, j := range js {
		if j.order != i {
			t.Errorf("job %d has order %d", i, j.order)
		}
		seen[j.String()] = true
	}
	if len(seen) != len(js) {
		t.Errorf("duplicate jobs: %v", seen)
	}
	if !seen["scale python x50 lazypull 100M/20ms #2"] || !seen["update python plain 100M/20ms #1"] {
		t.Errorf("jobs: %v", seen)
	}
	again := scenarioJobs(c, modes, 42)
	if !slices.Equal(js, again) {
		t.Error("the same seed gave another order")
	}
	c.Run = []string{"cold"}
	if js := scenarioJobs(c, modes, 42); len(js) != 0 {
		t.Errorf("cold only: %d scenario jobs", len(js))
	}
}

func TestSummarizeUpdates(t *testing.T) {
	l, _ := ParseLink("100M/20ms")
	runs := []UpdateRun{
		{From: "python", Mode: ModePlain, Link: l.Name, V1Bytes: 40e6, Start: Start{Total: 3, Bytes: 20e6}},
		{From: "python", Mode: ModePlain, Link: l.Name, V1Bytes: 40e6, Start: Start{Total: 5, Bytes: 20e6}},
		{From: "python", Mode: ModeLazypull, Link: l.Name, V1Bytes: 5e6, Start: Start{Total: 1, Bytes: 1e6}},
		{From: "python", Mode: ModeLazypull, Link: l.Name, V1Bytes: 5e6, Start: Start{Total: 2, Bytes: 3e6}},
		{From: "node", Mode: ModeLazypull, Link: l.Name, Start: Start{Total: 2, Bytes: 3e6}}, // not asked for
	}
	s := SummarizeUpdates(runs, []string{"python"}, []Link{l}, []Mode{ModePlain, ModeLazypull})
	if len(s) != 2 || s[0].Mode != ModePlain || s[1].Mode != ModeLazypull || s[1].To != "python-v2" {
		t.Fatalf("summaries %+v", s)
	}
	if s[0].MeetsBar != nil || s[0].BytesVsPlain != 1 {
		t.Errorf("plain: %+v; want no bar, bytes 1x itself", s[0])
	}
	lz := s[1]
	if lz.Total.Median != 1.5 || !approx(lz.VsPlain, 4/1.5) || !approx(lz.BytesVsPlain, 0.1) || lz.MeetsBar == nil || !*lz.MeetsBar {
		t.Errorf("lazypull: %+v; want median 1.5 s, 2.67x, 10%% of the bytes, bar met", lz)
	}
	runs[3].Bytes = 3.2e6 // median 2.1 MB: 10.5%
	s = SummarizeUpdates(runs, []string{"python"}, []Link{l}, []Mode{ModePlain, ModeLazypull})
	if *s[1].MeetsBar {
		t.Errorf("10.5%% of plain's bytes met the bar: %+v", s[1])
	}
	// Without plain runs there is nothing to compare with.
	s = SummarizeUpdates(runs, []string{"python"}, []Link{l}, []Mode{ModeLazypull})
	if len(s) != 1 || s[0].MeetsBar != nil || s[0].VsPlain != 0 {
		t.Errorf("lazypull alone: %+v", s)
	}
}

func TestSummarizeScale(t *testing.T) {
	l, _ := ParseLink("100M/20ms")
	var runs []ScaleRun
	for _, k := range []int{1, 10} {
		runs = append(runs,
			ScaleRun{Image: "python", Count: k, Mode: ModePlain, Link: l.Name, Pull: 4, AllReady: float64(k), Total: 4 + float64(k), Bytes: 20e6},
			ScaleRun{Image: "python", Count: k, Mode: ModeLazypull, Link: l.Name, Pull: 0.5, AllReady: float64(k) + 0.5, Total: 1 + float64(k), Bytes: 4e6})
	}
	s := SummarizeScale(runs, "python", []int{1, 10}, []Link{l}, []Mode{ModePlain, ModeLazypull})
	if len(s) != 4 || s[0].Count != 1 || s[2].Count != 10 || s[3].Mode != ModeLazypull {
		t.Fatalf("summaries %+v", s)
	}
	if !approx(s[1].VsPlain, 5.0/2) || !approx(s[3].VsPlain, 14.0/11) || !approx(s[3].BytesVsPlain, 0.2) {
		t.Errorf("ratios: x1 %+v, x10 %+v", s[1], s[3])
	}
}

func TestReadySpread(t *testing.T) {
	f, m, l := readySpread([]time.Duration{3 * time.Second, time.Second, 2 * time.Second, 10 * time.Second})
	if f != 1 || m != 2.5 || l != 10 {
		t.Errorf("readySpread = %v, %v, %v; want 1, 2.5, 10", f, m, l)
	}
	if f, m, l := readySpread(nil); f != 0 || m != 0 || l != 0 {
		t.Error("readySpread(nil) is not zero")
	}
}

// TestScenarioReports: the scenarios' tables are in the text and the HTML, a result with no
// cold starts is written without a chart, and results.json carries the scenario sections.
func TestScenarioReports(t *testing.T) {
	l, _ := ParseLink("100M/20ms")
	modes := []Mode{ModePlain, ModeLazypull}
	res := &Result{Complete: true, Command: "lazypull bench --scenarios update,scale", Links: []Link{l}, Modes: modes,
		ScenarioResults: ScenarioResults{Scenarios: []string{"update", "scale"}, ScenarioLinks: []Link{l}, ScenarioN: 1,
			UpdateRuns: []UpdateRun{
				{From: "python", To: "python-v2", Mode: ModePlain, Link: l.Name, Rep: 1, Start: Start{Total: 4, Bytes: 18e6}},
				{From: "python", To: "python-v2", Mode: ModeLazypull, Link: l.Name, Rep: 1, Start: Start{Total: 1, Bytes: 2.5e6}}},
			ScaleRuns: []ScaleRun{
				{Image: "python", Count: 10, Mode: ModePlain, Link: l.Name, Rep: 1, Total: 9, Bytes: 18e6},
				{Image: "python", Count: 10, Mode: ModeLazypull, Link: l.Name, Rep: 1, Total: 6, Bytes: 4e6}}}}
	res.UpdateSummaries = SummarizeUpdates(res.UpdateRuns, []string{"python"}, res.Links, modes)
	res.ScaleSummaries = SummarizeScale(res.ScaleRuns, "python", []int{10}, res.Links, modes)

	var b bytes.Buffer
	WriteTables(&b, res)
	out := b.String()
	for _, want := range []string{"### Image update", "| python -> python-v2 | 100M/20ms | lazypull |", "13.9%", "MISSED",
		"### Scale", "| python | 10 | 100M/20ms | lazypull |", "22.2%"} {
		if !strings.Contains(out, want) {
			t.Errorf("tables lack %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "### Link") {
		t.Errorf("a cold table without cold runs:\n%s", out)
	}

	dir, paths := writeAll(t, res)
	if len(paths) != 2 {
		t.Errorf("wrote %v, want results.json and report.html (no cold starts, no chart)", paths)
	}
	back, html := readBack(t, dir)
	if !strings.Contains(html, "<h2>Image update") || !strings.Contains(html, "<h2>Scale") ||
		strings.Count(html, "<table>") != 3 || strings.Count(html, "<tr>") != strings.Count(html, "</tr>") {
		t.Errorf("report.html:\n%s", html)
	}
	if len(back.UpdateRuns) != 2 || len(back.ScaleSummaries) != 2 || back.UpdateSummaries[1].MeetsBar == nil || *back.UpdateSummaries[1].MeetsBar {
		t.Errorf("results.json does not read back the scenarios: %+v", back.ScenarioResults)
	}
}
