package bench

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// WriteJSON writes res as indented JSON.
func WriteJSON(w io.Writer, res *Result) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(res)
}

// ReadJSON reads a Result written by WriteJSON.
func ReadJSON(r io.Reader) (*Result, error) {
	var res Result
	if err := json.NewDecoder(r).Decode(&res); err != nil {
		return nil, fmt.Errorf("read bench results: %w", err)
	}
	return &res, nil
}

// row is one line of a link's table, as text cells.
type row struct {
	Image, Mode, Pull, Ready, Total, MB, Requests, VsPlain, VsLimit string
	// VsStargz and ReqVsStargz: columns only when a stargz mode ran (hasStargz).
	VsStargz, ReqVsStargz string
}

// tableHeader names the columns of rows.
var tableHeader = row{"image", "mode", "pull s", "create+run to ready s", "total s", "MB before ready", "requests", "x faster than plain", "total / limit",
	"x faster than stargz", "requests / stargz"}

// linkRows returns the table of one link: a row per image and mode, then the limit per image.
func linkRows(res *Result, link string) []row {
	var rows []row
	for _, s := range res.Summaries {
		if s.Link != link {
			continue
		}
		r := row{Image: s.Image, Mode: string(s.Mode), Pull: s.Pull.Format(2), Ready: s.Ready.Format(2),
			Total: s.Total.Format(2), MB: s.Bytes.Scale(1e-6).Format(1), Requests: s.Requests.Format(0),
			VsPlain: timesCell(s.VsPlain), VsLimit: timesCell(s.VsLimit), VsStargz: timesCell(s.VsStargz), ReqVsStargz: timesCell(s.RequestsVsStargz)}
		rows = append(rows, r)
	}
	for _, l := range res.Limits {
		if l.Link != link {
			continue
		}
		rows = append(rows, row{Image: l.Image, Mode: "limit", Total: fmt.Sprintf("%.2f", l.Seconds),
			Ready: fmt.Sprintf("%.2f (warm)", l.Warm), MB: fmt.Sprintf("%.1f (read)", float64(l.Bytes)/1e6),
			Pull: "-", Requests: "-", VsPlain: "-", VsLimit: "1.00x", VsStargz: "-", ReqVsStargz: "-"})
	}
	return rows
}

// cells are r's columns; the stargz ones with stargz.
func (r row) cells(stargz bool) []string {
	c := []string{r.Image, r.Mode, r.Pull, r.Ready, r.Total, r.MB, r.Requests, r.VsPlain}
	if stargz {
		c = append(c, r.VsStargz, r.ReqVsStargz)
	}
	return append(c, r.VsLimit)
}

// hasStargz reports whether res ran a stargz mode: then the tables compare with stargz too.
func hasStargz(res *Result) bool {
	for _, m := range res.Modes {
		if isStargz(m) {
			return true
		}
	}
	return false
}

// WriteTables writes one markdown table per link: the medians with the min-max of the runs.
// An incomplete result is headed as such, and its runs are listed, never summarised.
func WriteTables(w io.Writer, res *Result) {
	if !res.Complete {
		fmt.Fprintf(w, "INCOMPLETE: the bench stopped on a failure; no table is reported.\n")
		if res.Failure != nil {
			fmt.Fprintf(w, "failed: image %q, mode %q, link %q, run %d, step %q:\n%s\n", res.Failure.Image, res.Failure.Mode,
				res.Failure.Link, res.Failure.Rep, res.Failure.Step, res.Failure.Msg)
		}
		fmt.Fprintf(w, "%d runs had finished before it.\n", len(res.Runs)+len(res.UpdateRuns)+len(res.ScaleRuns))
		return
	}
	if len(res.Summaries) > 0 { // the cold starts ran
		for _, l := range res.Links {
			fmt.Fprintf(w, "\n### Link %s (%s, %s round trip)\n\n", l.Name, rateString(l.Rate), l.RTT)
			writeMarkdown(w, linkRows(res, l.Name), hasStargz(res))
		}
		fmt.Fprintf(w, "\nMedians of %d cold runs each, (min-max). MB = 10^6 bytes the registry sent through the link from the pull's start until ready, requests likewise. The limit: warm local start + bytes read at start / bandwidth + 1 RTT; bytes read at start = lazypull's median bytes before ready on the fastest link.\n", res.N)
		if hasStargz(res) {
			fmt.Fprintf(w, "\n%s\n", stargzFootnote)
		}
	}
	writeScenarioTables(w, res)
	for _, s := range res.Skipped {
		fmt.Fprintf(w, "\n%s\n", s)
	}
}

func writeMarkdown(w io.Writer, rows []row, stargz bool) {
	var cells [][]string
	for _, r := range rows {
		cells = append(cells, r.cells(stargz))
	}
	writeGrid(w, tableHeader.cells(stargz), cells)
}

// writeGrid writes a markdown table, its columns padded to their widest cell.
func writeGrid(w io.Writer, header []string, rows [][]string) {
	cells := append([][]string{header}, rows...)
	width := make([]int, len(cells[0]))
	for _, c := range cells {
		for i, s := range c {
			width[i] = max(width[i], len(s))
		}
	}
	line := func(c []string) {
		var b strings.Builder
		b.WriteString("|")
		for i, s := range c {
			fmt.Fprintf(&b, " %-*s |", width[i], s)
		}
		fmt.Fprintln(w, b.String())
	}
	line(cells[0])
	sep := make([]string, len(width))
	for i := range sep {
		sep[i] = strings.Repeat("-", width[i])
	}
	line(sep)
	for _, c := range cells[1:] {
		line(c)
	}
}

func rateString(bits int64) string {
	switch {
	case bits >= 1e9 && bits%1e9 == 0:
		return fmt.Sprintf("%d Gbit/s", bits/1e9)
	case bits >= 1e6:
		return fmt.Sprintf("%g Mbit/s", float64(bits)/1e6)
	default:
		return fmt.Sprintf("%g kbit/s", float64(bits)/1e3)
	}
}

var htmlPage = template.Must(template.New("report").Funcs(template.FuncMap{
	"mb": func(b int64) float64 { return float64(b) / 1e6 },
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lazypull-bench e2e</title>
<style>
body { font-family: sans-serif; margin: 2em; max-width: 80em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: right; }
th:nth-child(-n+2), td:nth-child(-n+2) { text-align: left; }
.fail { color: #b00; font-weight: bold; }
</style></head><body>
<h1>lazypull-bench e2e</h1>
<p>{{.Res.Started.Format "2006-01-02 15:04:05 UTC"}}, {{.Res.Machine.CPUs}} CPUs ({{.Res.Machine.CPU}}), Linux {{.Res.Machine.Kernel}}, {{.Res.Machine.Go}};
load average {{.Res.Machine.LoadStart}} at the start, {{.Res.Machine.LoadEnd}} at the end.</p>
<p>Command: <code>{{.Res.Command}}</code></p>
{{if not .Res.Complete}}<p class="fail">INCOMPLETE: the bench stopped on a failure{{with .Res.Failure}} (image {{.Image}}, mode {{.Mode}}, link {{.Link}}, step {{.Step}}): {{.Msg}}{{end}}. No table is reported.</p>
{{else}}
{{if .Res.Summaries}}
{{if .Chart}}<p><img alt="time to ready per image and mode, per link" src="{{.Chart}}"></p>{{end}}
{{range .Links}}<h2>Link {{.Name}}</h2>
<table><tr>{{range $.Header}}<th>{{.}}</th>{{end}}</tr>
{{range .Rows}}<tr>{{range .}}<td>{{.}}</td>{{end}}</tr>
{{end}}</table>
{{end}}
<p>Medians of {{.Res.N}} cold runs, (min-max). MB: bytes the registry sent through the link from the pull's start until ready. Limit: warm local start + bytes read at start / bandwidth + one round trip.</p>
{{if .Stargz}}<p>{{.Stargz}}</p>{{end}}
{{end}}
{{range .Scenarios}}<h2>{{.Title}}</h2>
<table><tr>{{range .Header}}<th>{{.}}</th>{{end}}</tr>
{{range .Rows}}<tr>{{range .}}<td>{{.}}</td>{{end}}</tr>
{{end}}</table>
<p>{{.Note}}</p>
{{end}}
{{end}}
<h2>Images</h2>
<table><tr><th>image</th><th>ready line</th><th>layers</th><th>original MB</th><th>lazypull MB</th>{{if .Stargz}}<th>eStargz MB</th><th>optimized eStargz MB</th>{{end}}<th>prefetch profile</th></tr>
{{range .Res.Images}}<tr><td>{{.Name}}</td><td>{{.Ready}}</td><td>{{.Layers}}</td><td>{{printf "%.1f" (mb .Bytes)}}</td><td>{{printf "%.1f" (mb .LazyBytes)}}</td>{{if $.Stargz}}<td>{{printf "%.1f" (mb .EstargzBytes)}}</td><td>{{printf "%.1f" (mb .EstargzOptBytes)}}</td>{{end}}<td>{{with .Profile}}{{.Files}} files, {{printf "%.1f" (mb .Bytes)}} MB read{{else}}-{{end}}</td></tr>
{{end}}</table>
{{range .Res.Skipped}}<p>{{.}}</p>{{end}}
</body></html>
`))

// WriteHTML writes a self-contained page: the chart inlined, one table per link.
func WriteHTML(w io.Writer, res *Result, chartPNG []byte) error {
	type linkTable struct {
		Name string
		Rows [][]string
	}
	data := struct {
		Res       *Result
		Chart     template.URL
		Header    []string
		Links     []linkTable
		Stargz    string // the footnote of the stargz columns, when they are there
		Scenarios []table
	}{Res: res, Header: tableHeader.cells(hasStargz(res)), Scenarios: scenarioTables(res)}
	if hasStargz(res) {
		data.Stargz = stargzFootnote
	}
	if len(chartPNG) > 0 {
		// A typed URL: html/template would otherwise escape a data: URL away.
		data.Chart = template.URL("data:image/png;base64," + base64.StdEncoding.EncodeToString(chartPNG))
	}
	for _, l := range res.Links {
		lt := linkTable{Name: fmt.Sprintf("%s (%s, %s round trip)", l.Name, rateString(l.Rate), l.RTT)}
		for _, r := range linkRows(res, l.Name) {
			lt.Rows = append(lt.Rows, r.cells(hasStargz(res)))
		}
		data.Links = append(data.Links, lt)
	}
	return htmlPage.Execute(w, data)
}

// WriteAll writes results.json, and for a complete result chart.png and report.html, into
// dir; it returns the paths written.
func WriteAll(dir string, res *Result) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var paths []string
	var js bytes.Buffer
	if err := WriteJSON(&js, res); err != nil {
		return nil, err
	}
	p := filepath.Join(dir, "results.json")
	if err := os.WriteFile(p, js.Bytes(), 0o644); err != nil {
		return nil, err
	}
	paths = append(paths, p)
	var png []byte
	if res.Complete && len(res.Summaries) > 0 { // a chart of the cold starts, when they ran
		var b bytes.Buffer
		if err := WriteChart(&b, res); err != nil {
			return paths, fmt.Errorf("chart: %w", err)
		}
		png = b.Bytes()
		p := filepath.Join(dir, "chart.png")
		if err := os.WriteFile(p, png, 0o644); err != nil {
			return paths, err
		}
		paths = append(paths, p)
	}
	var h bytes.Buffer
	if err := WriteHTML(&h, res, png); err != nil {
		return paths, fmt.Errorf("html: %w", err)
	}
	p = filepath.Join(dir, "report.html")
	if err := os.WriteFile(p, h.Bytes(), 0o644); err != nil {
		return paths, err
	}
	return append(paths, p), nil
}
