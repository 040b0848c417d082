package bench

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	stdhtml "html"
	"image/png"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// sampleResult is a complete result of two images, two modes and two links.
func sampleResult(t *testing.T) *Result {
	t.Helper()
	fast, _ := ParseLink("1G/2ms")
	slow, _ := ParseLink("100M/20ms")
	links := []Link{fast, slow}
	modes := []Mode{ModePlain, ModeLazypull}
	res := &Result{Complete: true, Command: "lazypull bench --n 2", Started: time.Date(2026, 11, 25, 23, 0, 0, 0, time.UTC),
		Machine: Machine{CPUs: 2, CPU: "test"}, N: 2, Links: links, Modes: modes, Skipped: []string{"stargz modes skipped: test"},
		Images: []ImageInfo{{Image: Workloads["python"], Layers: 2, Bytes: 68e6, LazyBytes: 72e6}, {Image: Workloads["node"], Layers: 2, Bytes: 88e6}}}
	for _, im := range []string{"python", "node"} {
		for _, l := range links {
			for rep := 1; rep <= 2; rep++ {
				k := float64(rep) * float64(1e9/l.Rate)
				res.Runs = append(res.Runs,
					Run{Image: im, Mode: ModePlain, Link: l.Name, Rep: rep, Start: Start{Pull: 5 * k, Ready: 0.3, Total: 5*k + 0.3, Bytes: 68e6, Requests: 5}},
					Run{Image: im, Mode: ModeLazypull, Link: l.Name, Rep: rep, Start: Start{Pull: 0.3, Ready: 1 * k, Total: 0.3 + k, Bytes: 5e6, Requests: 37}})
			}
		}
		res.Warm = append(res.Warm, Warm{Image: im, Rep: 1, Ready: 0.28})
	}
	res.Limits = Limits(res.Runs, res.Warm, []string{"python", "node"}, links)
	res.Summaries = Summarize(res.Runs, []string{"python", "node"}, links, modes, res.Limits)
	return res
}

// writeAll writes res with WriteAll into a new directory; it returns the directory and the
// paths written.
func writeAll(t *testing.T, res *Result) (dir string, paths []string) {
	t.Helper()
	dir = t.TempDir()
	paths, err := WriteAll(dir, res)
	if err != nil {
		t.Fatal(err)
	}
	return dir, paths
}

// readBack reads the results.json and the report.html that WriteAll wrote into dir.
func readBack(t *testing.T, dir string) (*Result, string) {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	back, err := ReadJSON(f)
	if err != nil {
		t.Fatal(err)
	}
	h, err := os.ReadFile(filepath.Join(dir, "report.html"))
	if err != nil {
		t.Fatal(err)
	}
	return back, string(h)
}

func TestWriteAllComplete(t *testing.T) {
	res := sampleResult(t)
	dir, paths := writeAll(t, res)
	if len(paths) != 3 {
		t.Fatalf("wrote %v, want results.json, chart.png, report.html", paths)
	}

	back, html := readBack(t, dir)
	if !back.Complete || len(back.Runs) != len(res.Runs) || len(back.Summaries) != len(res.Summaries) ||
		back.Links[1].RTT != 20*time.Millisecond || back.Summaries[1].VsPlain == 0 {
		t.Errorf("results.json does not read back as written: %+v", back)
	}

	b, err := os.ReadFile(filepath.Join(dir, "chart.png"))
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("chart.png: %v", err)
	}
	if w, h := img.Bounds().Dx(), img.Bounds().Dy(); w != chartWidth || h != 2*(panelTop+panelHeight+panelBottom) {
		t.Errorf("chart is %dx%d, want %d wide and one panel per link", w, h, chartWidth)
	}
	// Bars are drawn: both modes' colours appear.
	for mi := range res.Modes {
		want := modeColors[mi]
		found := false
		for y := 0; y < img.Bounds().Dy() && !found; y += 2 {
			for x := 0; x < img.Bounds().Dx(); x += 2 {
				r, g, bb, _ := img.At(x, y).RGBA()
				if uint8(r>>8) == want.R && uint8(g>>8) == want.G && uint8(bb>>8) == want.B {
					found = true
					break
				}
			}
		}
		if !found {
			t.Errorf("no bar of mode %s's colour in the chart", res.Modes[mi])
		}
	}

	for _, want := range []string{"<!doctype html>", "</html>", "lazypull bench --n 2", "Link 1G/2ms", "Link 100M/20ms", "stargz modes skipped"} {
		if !strings.Contains(html, want) {
			t.Errorf("report.html lacks %q", want)
		}
	}
	if strings.Count(html, "<table>") != strings.Count(html, "</table>") || strings.Count(html, "<tr>") != strings.Count(html, "</tr>") {
		t.Error("report.html: unbalanced table tags")
	}
	// Attribute text: the browser decodes its entities (html/template writes + as &#43;).
	m := regexp.MustCompile(`src="data:image/png;base64,([^"]+)"`).FindStringSubmatch(html)
	if m == nil {
		t.Fatal("report.html has no inline chart")
	}
	if raw, err := base64.StdEncoding.DecodeString(stdhtml.UnescapeString(m[1])); err != nil || !bytes.Equal(raw, b) {
		t.Errorf("the inline chart is not chart.png (decode: %v)", err)
	}

	var tables bytes.Buffer
	WriteTables(&tables, res)
	out := tables.String()
	if strings.Count(out, "### Link") != 2 || !strings.Contains(out, "| python | lazypull |") || !strings.Contains(out, "| limit") {
		t.Errorf("tables:\n%s", out)
	}
}

// TestIncompleteIsNeverATable: a result that stopped on a failure is written as JSON marked
// incomplete, with the failure; no chart, and no table, in the text or in the HTML.
func TestIncompleteIsNeverATable(t *testing.T) {
	res := sampleResult(t)
	res.Complete = false
	res.Summaries, res.Limits = nil, nil
	res.Failure = &StepError{Image: "node", Mode: ModeLazypull, Link: "100M/20ms", Rep: 2, Step: "run to ready", Msg: "ctr run exited"}
	dir, paths := writeAll(t, res)
	if _, err := os.Stat(filepath.Join(dir, "chart.png")); err == nil || len(paths) != 2 {
		t.Errorf("an incomplete result got a chart (wrote %v)", paths)
	}
	var tables bytes.Buffer
	WriteTables(&tables, res)
	out := tables.String()
	if !strings.Contains(out, "INCOMPLETE") || strings.Contains(out, "| image") ||
		!strings.Contains(out, `image "node", mode "lazypull", link "100M/20ms", run 2, step "run to ready"`) {
		t.Errorf("incomplete tables:\n%s", out)
	}
	h, _ := os.ReadFile(filepath.Join(dir, "report.html"))
	if !strings.Contains(string(h), "INCOMPLETE") || strings.Contains(string(h), "Link 1G/2ms") {
		t.Errorf("incomplete report.html shows a table or hides the failure:\n%s", h)
	}
	j, _ := os.ReadFile(filepath.Join(dir, "results.json"))
	if !strings.Contains(string(j), `"complete": false`) || !strings.Contains(string(j), `"step": "run to ready"`) {
		t.Errorf("results.json:\n%s", j)
	}
}

func TestStepErrorNamesWhere(t *testing.T) {
	err := stepErr(job{image: Workloads["gcc"], mode: ModePlain, link: Link{Name: "20M/50ms"}, rep: 3}, "pull", errors.New("boom"))
	want := `bench failed: image gcc, mode plain, link 20M/50ms, run 3: step "pull": boom`
	if err.Error() != want {
		t.Errorf("got %q, want %q", err.Error(), want)
	}
	if !errors.Is(err, err.Err) {
		t.Error("StepError does not unwrap")
	}
}

// TestBenchFailsLoudly: a step that fails stops Bench with a *StepError naming it, and a
// result marked incomplete.
func TestBenchFailsLoudly(t *testing.T) {
	l, _ := ParseLink("1G/2ms")
	cfg := Config{Images: []string{"python"}, Links: []Link{l}, Modes: []Mode{ModePlain}, N: 1,
		Scripts: t.TempDir(), ImagesDir: t.TempDir(), WorkDir: t.TempDir(), Lazypull: "/bin/false"}
	res, err := Bench(context.Background(), cfg)
	var se *StepError
	if !errors.As(err, &se) || se.Step != "build images" {
		t.Fatalf("Bench with no image builder: %v, want a StepError at build images", err)
	}
	if res == nil || res.Complete || res.Failure == nil || res.Failure.Msg == "" {
		t.Errorf("result %+v: want incomplete with the failure", res)
	}
	for _, bad := range []Config{
		{Images: []string{"nope"}, Links: cfg.Links, Modes: cfg.Modes, N: 1},
		{Images: cfg.Images, Links: cfg.Links, Modes: []Mode{"stargz"}, N: 1},
		{Images: cfg.Images, Links: cfg.Links, Modes: cfg.Modes, N: 0},
		{Images: cfg.Images, Modes: cfg.Modes, N: 1},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("Validate(%+v): no error", bad)
		}
	}
}
