package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"lazypull/internal/ocilayout"
)

// BarConfig is what the bar benchmarks (convert, mount, snapshotter: one bar or a few of
// one component each, on the python test image or a synthetic one, on loopback) share.
type BarConfig struct {
	// Root is the repository: scripts/ (registry, containerd, test image), tools/ (built with
	// go build), docs/benchmarks-history.md (Record).
	Root string
	// Lazypull is the lazypull binary measured.
	Lazypull string
	// N is the rounds of each measure (median and min-max are reported).
	N int
	// TestImages is where scripts/build-test-image.sh writes the python test image layout
	// ("": the work directory, so that tests reading the shared one are not disturbed).
	TestImages string
	// Record appends the report (markdown) to docs/benchmarks-history.md, the dated runs.
	Record bool
	// Command is the command line, for the report.
	Command string
	// Log gets the progress lines; Out the summary and the report.
	Log, Out io.Writer
}

func (c BarConfig) validate() error {
	if c.N < 1 {
		return fmt.Errorf("need at least 1 round, got %d", c.N)
	}
	if c.Root == "" || c.Lazypull == "" {
		return fmt.Errorf("no repository or no lazypull binary")
	}
	return nil
}

// bar is one run of a bar benchmark: its work directory, the step in progress (named in the
// error when one fails) and what to stop at the end.
type bar struct {
	cfg     BarConfig
	name    string // bench-mount, ...
	work    string
	stepNow string
	started time.Time
	hz      float64 // clock ticks per second of /proc/PID/stat
}

func newBar(cfg BarConfig, name, workPattern string) (*bar, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("must run as root (containerd, FUSE mounts, drop_caches)")
	}
	work, err := os.MkdirTemp("", workPattern)
	if err != nil {
		return nil, err
	}
	b := &bar{cfg: cfg, name: name, work: work, started: time.Now(), hz: 100}
	if out, err := exec.Command("getconf", "CLK_TCK").Output(); err == nil {
		if v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64); err == nil && v > 0 {
			b.hz = v
		}
	}
	if b.cfg.TestImages == "" {
		b.cfg.TestImages = filepath.Join(work, "images")
	}
	return b, nil
}

// need reports the first of the programs a bar runs that is not on PATH.
func need(programs ...string) error {
	for _, p := range programs {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("%s not found; run scripts/deps.sh (make deps)", p)
		}
	}
	return nil
}

func (b *bar) step(format string, args ...any) {
	b.stepNow = fmt.Sprintf(format, args...)
	b.logf("== %s", b.stepNow)
}

func (b *bar) logf(format string, args ...any) {
	fmt.Fprintf(b.cfg.Log, "%s: %s\n", b.name, fmt.Sprintf(format, args...))
}

// fail names the step that failed.
func (b *bar) fail(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("FAILED in step '%s': %w", b.stepNow, err)
}

// execute runs a bar's run, then its stops in order (each stop the bench's own daemons, a
// no-op for one never started) and removes the work directory: the run's error (named by
// its step), else the first stop's.
func (b *bar) execute(run func() error, stops ...func() error) (err error) {
	defer func() {
		for _, stop := range stops {
			if serr := stop(); serr != nil && err == nil {
				err = serr
			}
		}
		b.removeWork()
	}()
	return b.fail(run())
}

// removeWork removes the work directory, unless something is still mounted under it.
func (b *bar) removeWork() {
	if left := mountsUnder(b.work); len(left) > 0 {
		b.logf("warning: mounts left under %s; not removing it: %v", b.work, left)
		return
	}
	os.RemoveAll(b.work)
}

func (b *bar) scripts() string { return filepath.Join(b.cfg.Root, "scripts") }

// registry starts a docker-registry on a random loopback port in WORK/registry.
func (b *bar) registry(ctx context.Context) (*registry, error) {
	b.step("start a registry on a random loopback port")
	return startRegistry(ctx, b.scripts(), filepath.Join(b.work, "registry"))
}

// begin is how every bar starts: it checks that the programs it runs are installed, and
// returns the commit measured and the bar's registry, started.
func (b *bar) begin(ctx context.Context, programs ...string) (commit string, reg *registry, err error) {
	if err := need(programs...); err != nil {
		return "", nil, err
	}
	commit = b.commit()
	reg, err = b.registry(ctx)
	return commit, reg, err
}

// buildTool builds tools/NAME of the repository into the work directory.
func (b *bar) buildTool(ctx context.Context, name string) (string, error) {
	out := filepath.Join(b.work, name)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./tools/"+name)
	cmd.Dir = b.cfg.Root
	if o, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./tools/%s: %w\n%s", name, err, tail(string(o), 20))
	}
	return out, nil
}

// testImage builds the python test image (scripts/build-test-image.sh, cached) and returns
// its OCI layout directory.
func (b *bar) testImage(ctx context.Context) (string, error) {
	if _, err := command(ctx, nil, filepath.Join(b.scripts(), "build-test-image.sh"), b.cfg.TestImages); err != nil {
		return "", err
	}
	src := filepath.Join(b.cfg.TestImages, "python")
	if !ocilayout.At(src).HasIndex() {
		return "", fmt.Errorf("no OCI layout at %s", src)
	}
	return src, nil
}

// lazypullVersion is the first line of `lazypull version`.
func (b *bar) lazypullVersion() string {
	out, _ := exec.Command(b.cfg.Lazypull, "version").CombinedOutput()
	return strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0]
}

// commit is the repository's commit, and whether the tree had changes, as the run starts.
func (b *bar) commit() string {
	out, err := exec.Command("git", "-C", b.cfg.Root, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "an unknown commit"
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "-C", b.cfg.Root, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		c += ", with uncommitted changes"
	}
	return c
}

// ticks is the user+system CPU time of process pid so far, in seconds.
func (b *bar) cpu(pid int) (float64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which is in parentheses and may hold spaces.
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64) // field 14, utime
	st, err2 := strconv.ParseInt(f[12], 10, 64) // field 15, stime
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q stime %q", pid, f[11], f[12])
	}
	return float64(ut+st) / b.hz, nil
}

// finish prints the report and, when Record, appends it to docs/benchmarks-history.md.
func (b *bar) finish(report string) error {
	fmt.Fprintln(b.cfg.Out)
	fmt.Fprint(b.cfg.Out, report)
	if !b.cfg.Record {
		b.logf("--record appends this report to docs/benchmarks-history.md")
		return nil
	}
	docs := filepath.Join(b.cfg.Root, "docs", "benchmarks-history.md")
	f, err := os.OpenFile(docs, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	if st, err := f.Stat(); err == nil && st.Size() == 0 {
		fmt.Fprint(f, "# Benchmarks: the dated history\n\nRecorded runs, oldest first. See the end of each section for the bars.\n")
	}
	if _, err := io.WriteString(f, report); err != nil {
		f.Close()
		return err
	}
	b.logf("appended the report to docs/benchmarks-history.md")
	return f.Close()
}

// machineLine is the report's "Machine:" sentence start: CPUs, CPU model, kernel.
func machineLine() string {
	m := machine()
	cpu := m.CPU
	if cpu == "" {
		cpu = "unknown CPU"
	}
	return fmt.Sprintf("%d CPUs, %s, Linux %s", runtime.NumCPU(), cpu, m.Kernel)
}

// debVersion is the version of a Debian package, or "(version unknown)".
func debVersion(pkg string) string {
	out, err := exec.Command("dpkg-query", "-W", "-f=${Version}", pkg).Output()
	if err != nil || len(out) == 0 {
		return "(version unknown)"
	}
	return string(out)
}

// ociManifest is what the benchmarks read of an image manifest.
type ociManifest struct {
	Layers []struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int64  `json:"size"`
	} `json:"layers"`
}

func (m ociManifest) layerBytes() int64 {
	var n int64
	for _, l := range m.Layers {
		n += l.Size
	}
	return n
}

// getManifest fetches the OCI manifest of REG/repo:tag over plain HTTP.
func getManifest(ctx context.Context, reg, repo, tag string) (ociManifest, error) {
	var m ociManifest
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+reg+"/v2/"+repo+"/manifests/"+tag, nil)
	if err != nil {
		return m, err
	}
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return m, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return m, fmt.Errorf("manifest of %s/%s:%s: %s", reg, repo, tag, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		return m, fmt.Errorf("manifest of %s/%s:%s: %w", reg, repo, tag, err)
	}
	return m, nil
}

// storeStats is what the benchmarks read of a store's stats.json (the mount's or the
// snapshotter's figures, written every few seconds and at exit).
type storeStats struct {
	Fetch struct {
		Requests int64
		Bytes    int64
	} `json:"fetch"`
	Store struct {
		ChunksFetched int64
		BytesFetched  int64
		Bytes         int64
	} `json:"store"`
	Images []string `json:"images"`
}

const statsFile = "stats.json"

func readStoreStats(store string) (storeStats, error) {
	var s storeStats
	raw, err := os.ReadFile(filepath.Join(store, statsFile))
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return s, fmt.Errorf("%s: %w", filepath.Join(store, statsFile), err)
	}
	return s, nil
}

// statsWrittenAfter waits until store's stats.json is newer than t; false after limit.
func statsWrittenAfter(store string, t time.Time, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for {
		if st, err := os.Stat(filepath.Join(store, statsFile)); err == nil && st.ModTime().After(t) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// median is the median of xs (0 for none).
func median(xs []float64) float64 { return NewStat(xs).Median }

// mrange formats "median (min-max)" with format for each.
func mrange(xs []float64, format string) string {
	s := NewStat(xs)
	return fmt.Sprintf(format+" ("+format+"-"+format+")", s.Median, s.Min, s.Max)
}

// mrangeInt formats "median (min-max)" of integer counts, or the one value when all agree.
func mrangeInt(xs []float64) string {
	s := NewStat(xs)
	if s.Min == s.Max {
		return fmt.Sprintf("%.0f", s.Median)
	}
	return fmt.Sprintf("%.0f (%.0f-%.0f)", s.Median, s.Min, s.Max)
}

// mrangeMB formats byte counts as "median (min-max)" MB (10^6), or one value when all agree;
// unit follows the figures.
func mrangeMB(xs []float64, unit string) string {
	s := NewStat(xs)
	if s.Min == s.Max {
		return fmt.Sprintf("%.2f%s", s.Median/1e6, unit)
	}
	return fmt.Sprintf("%.2f (%.2f-%.2f)%s", s.Median/1e6, s.Min/1e6, s.Max/1e6, unit)
}

// column is column i of rows.
func column(rows [][]float64, i int) []float64 {
	out := make([]float64, len(rows))
	for j, r := range rows {
		out[j] = r[i]
	}
	return out
}

// verdict is MET or MISSED.
func verdict(ok bool) string {
	if ok {
		return "MET"
	}
	return "MISSED"
}

// mdReport is a bar's markdown report, written a line at a time.
type mdReport struct{ strings.Builder }

// p writes one line, format and args as for fmt.Printf.
func (w *mdReport) p(format string, args ...any) { fmt.Fprintf(&w.Builder, format+"\n", args...) }
