package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// ConvertConfig is the converter's benchmark (`lazypull-bench convert`, make bench-convert).
type ConvertConfig struct {
	BarConfig
	// ExtraLevel is the extra ctr-remote gzip level measured for reference (0: none); ExtraN
	// its timed runs (at most N).
	ExtraLevel, ExtraN int
}

// Convert measures lazypull's converter against ctr-remote's eStargz conversion, on the
// same image (the Debian bookworm + python3 test image of scripts/build-test-image.sh):
//
//  1. Converter throughput, as uncompressed MB/s (MB = 10^6 bytes; the uncompressed size is
//     the sum of the image's tar streams, i.e. of the sizes behind its diff IDs):
//     lazypull convert oci:SRC:python oci:OUT:lazy (layout -> layout);
//     lazypull convert REG/python:src REG/lazy-I:latest (registry -> registry);
//     ctr-remote image convert --estargz --oci REG/python:src REG/python:esgz-I (containerd
//     content store -> content store, its defaults); and, for reference, ctr-remote with
//     --estargz-compression-level ExtraLevel (its default is 9); and lazypull index
//     REG/python:src (reads the blobs, pushes an index artifact). Each is run once to warm up
//     (the extra level shares ctr-remote's), then N times (the extra level ExtraN times),
//     interleaved; the median and the min-max of the wall-clock time are reported, and the
//     median CPU time of the converter plus the daemon it works through (containerd, or the
//     registry), which other load on the machine disturbs much less. Bar, on the wall-clock
//     medians: lazypull (layout -> layout) >= 2x ctr-remote (its default settings), and
//     lazypull index >= 2x ctr-remote likewise.
//  2. Index vs eStargz TOC, per layer of the same image, with tools/indexsize: lazypull's
//     index payload against the eStargz TOC gzip member (compressed), and the index body
//     against stargz.index.json (uncompressed). Bar: index <= 1/3 of the TOC.
//
// Everything runs in a fresh work directory: a docker-registry on a random loopback port
// (scripts/registry.sh) and a private containerd (scripts/containerd.sh), both stopped, and
// the directory removed, whatever happened.
func Convert(ctx context.Context, cfg ConvertConfig) (err error) {
	if cfg.ExtraLevel < 0 || cfg.ExtraLevel > 9 {
		return fmt.Errorf("extra compression level %d: want 1 to 9, or 0 for none", cfg.ExtraLevel)
	}
	if cfg.ExtraN < 1 {
		return fmt.Errorf("extra level runs %d: want a positive integer", cfg.ExtraN)
	}
	cfg.ExtraN = min(cfg.ExtraN, cfg.N)
	b, err := newBar(cfg.BarConfig, "bench-convert", "lazypull-bench.")
	if err != nil {
		return err
	}
	c := &convertBench{bar: b, extraLevel: cfg.ExtraLevel, extraN: cfg.ExtraN, times: map[string][][]float64{}}
	stopContainerd := func() error {
		if c.ctd == "" {
			return nil
		}
		_, err := command(context.Background(), nil, filepath.Join(b.scripts(), "containerd.sh"), "stop", c.ctd)
		return err
	}
	return b.execute(func() error { return c.run(ctx) }, stopContainerd, func() error { return c.reg.stop() })
}

type convertBench struct {
	*bar
	extraLevel, extraN int
	reg                *registry
	ctd                string // containerd's directory, once started
	sock               string // containerd's socket
	// The daemons the converters work through: the registry's and containerd's PIDs.
	regPID, ctdPID int
	// times: per converter, the timed runs' wall, cpu and daemon cpu seconds.
	times map[string][][]float64
}

// indexRow is one row of tools/indexsize -tsv: layer digest format blob tar entries chunks
// meta meta_raw sha256s.
type indexRow struct {
	layer, digest, format                       string
	blob, tar, entries, chunks, meta, raw, shas int64
}

func (c *convertBench) indexsize(ctx context.Context, tool, layout string) ([]indexRow, error) {
	out, err := command(ctx, nil, tool, "-tsv", "-layout", layout)
	if err != nil {
		return nil, err
	}
	var rows []indexRow
	for line := range strings.SplitSeq(strings.TrimRight(out, "\n"), "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 10 {
			return nil, fmt.Errorf("indexsize -layout %s: %q: want 10 columns", layout, line)
		}
		r := indexRow{layer: f[0], digest: f[1], format: f[2]}
		for i, p := range []*int64{&r.blob, &r.tar, &r.entries, &r.chunks, &r.meta, &r.raw, &r.shas} {
			v, err := strconv.ParseInt(f[3+i], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("indexsize -layout %s: %q: %w", layout, line, err)
			}
			*p = v
		}
		rows = append(rows, r)
	}
	return rows, nil
}

// timed runs a converter with its output in WORK/KEY-RUN.log and, unless run is "warm",
// keeps the wall-clock time, the user+system CPU time of it and its children, and the CPU
// time daemonPID (0: none) used meanwhile. It returns the wall-clock seconds.
func (c *convertBench) timed(ctx context.Context, key, run string, daemonPID int, name string, args ...string) (float64, error) {
	lg, err := os.Create(filepath.Join(c.work, key+"-"+run+".log"))
	if err != nil {
		return 0, err
	}
	defer lg.Close()
	var d0, d1 float64
	if daemonPID != 0 {
		d0, _ = c.cpu(daemonPID)
	}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = lg, lg
	t0 := time.Now()
	err = cmd.Run()
	wall := time.Since(t0).Seconds()
	if err != nil {
		b, _ := os.ReadFile(lg.Name())
		return 0, fmt.Errorf("'%s %s' exited: %w\n%s", name, strings.Join(args, " "), err, tail(string(b), 25))
	}
	if daemonPID != 0 {
		d1, _ = c.cpu(daemonPID)
	}
	cpu := (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	if run != "warm" {
		c.times[key] = append(c.times[key], []float64{wall, cpu, d1 - d0})
	}
	return wall, nil
}

func (c *convertBench) run(ctx context.Context) error {
	b := c.bar
	commit, reg, err := b.begin(ctx, "ctr", "ctr-remote", "skopeo", "containerd", "go", "tar")
	if err != nil {
		return err
	}
	c.reg = reg
	src, indexsize, srcRows, err := c.setup(ctx)
	if err != nil {
		return err
	}
	r := &convertResult{commit: commit, src: srcRows}
	for _, row := range srcRows {
		r.tarBytes += row.tar
		r.srcBlobBytes += row.blob
	}
	if r.tarBytes <= 0 {
		return fmt.Errorf("source image has no tar bytes")
	}
	b.logf("source: %d layers, %d bytes compressed, %d bytes uncompressed", len(srcRows), r.srcBlobBytes, r.tarBytes)
	if err := c.pushSource(ctx, src); err != nil {
		return err
	}
	if err := c.rounds(ctx, src, r); err != nil {
		return err
	}
	if err := c.checkDigests(); err != nil {
		return err
	}
	if err := c.indexSizes(ctx, indexsize, r); err != nil {
		return err
	}
	b.step("report")
	return b.finish(c.report(r))
}

// convertResult is what the converter bench measured, for its report.
type convertResult struct {
	commit                string
	loadBefore, loadAfter string
	// The source image: its tar stream bytes and compressed blob bytes.
	tarBytes, srcBlobBytes int64
	// tools/indexsize's rows, per layer: the source's, lazypull's and eStargz's.
	src, lazy, esgz []indexRow
}

// setup starts containerd and builds the test image and tools/indexsize; it returns the
// image's OCI layout, the tool, and the image's rows.
func (c *convertBench) setup(ctx context.Context) (src, indexsize string, rows []indexRow, err error) {
	b := c.bar
	if c.regPID, err = readPID(filepath.Join(c.reg.dir, "registry.pid")); err != nil {
		return "", "", nil, err
	}
	b.step("start containerd")
	c.ctd = filepath.Join(b.work, "containerd")
	if _, err := command(ctx, nil, filepath.Join(b.scripts(), "containerd.sh"), "start", c.ctd); err != nil {
		return "", "", nil, err
	}
	c.sock = filepath.Join(c.ctd, "containerd.sock")
	if c.ctdPID, err = readPID(filepath.Join(c.ctd, "containerd.pid")); err != nil {
		return "", "", nil, err
	}

	b.step("build the test image (scripts/build-test-image.sh)")
	if src, err = b.testImage(ctx); err != nil {
		return "", "", nil, err
	}
	b.step("build tools/indexsize")
	if indexsize, err = b.buildTool(ctx, "indexsize"); err != nil {
		return "", "", nil, err
	}
	b.step("measure the source image (tools/indexsize: tar stream sizes, checked against the diff IDs)")
	if rows, err = c.indexsize(ctx, indexsize, src+":python"); err != nil {
		return "", "", nil, err
	}
	return src, indexsize, rows, nil
}

// pushSource pushes the source image from its layout src to the registry and pulls it into
// containerd.
func (c *convertBench) pushSource(ctx context.Context, src string) error {
	b := c.bar
	addr := c.reg.addr
	b.step("push the source image to the registry (skopeo)")
	if _, err := command(ctx, nil, "skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false", "oci:"+src+":python", "docker://"+addr+"/python:src"); err != nil {
		return err
	}
	b.step("pull the source image into containerd (ctr image pull)")
	_, err := command(ctx, nil, "ctr", "--address", c.sock, "image", "pull", "--plain-http", addr+"/python:src")
	return err
}

// The converters, each run of which writes to a new destination, so nothing is skipped as
// already there.

func (c *convertBench) runOCI(ctx context.Context, src, run string) (float64, error) {
	os.RemoveAll(filepath.Join(c.work, "lazy-oci-"+run))
	return c.timed(ctx, "oci", run, 0, c.cfg.Lazypull, "convert", "--json", "oci:"+src+":python", "oci:"+filepath.Join(c.work, "lazy-oci-"+run)+":lazy")
}

func (c *convertBench) runReg(ctx context.Context, run string) (float64, error) {
	addr := c.reg.addr
	return c.timed(ctx, "reg", run, c.regPID, c.cfg.Lazypull, "convert", "--json", addr+"/python:src", addr+"/lazy-"+run+":latest")
}

func (c *convertBench) runEsgz(ctx context.Context, run string) (float64, error) {
	addr := c.reg.addr
	return c.timed(ctx, "esgz", run, c.ctdPID, "ctr-remote", "--address", c.sock, "image", "convert", "--estargz", "--oci",
		addr+"/python:src", addr+"/python:esgz-"+run)
}

// runIndex indexes the source image in the registry: reads its blobs, pushes the artifact.
func (c *convertBench) runIndex(ctx context.Context, run string) (float64, error) {
	return c.timed(ctx, "index", run, c.regPID, c.cfg.Lazypull, "index", "--plain-http", c.reg.addr+"/python:src")
}

func (c *convertBench) runExtra(ctx context.Context, run string) (float64, error) {
	addr := c.reg.addr
	return c.timed(ctx, "extra", run, c.ctdPID, "ctr-remote", "--address", c.sock, "image", "convert", "--estargz",
		"--estargz-compression-level", strconv.Itoa(c.extraLevel), "--oci", addr+"/python:src", fmt.Sprintf("%s/python:esgz-l%d-%s", addr, c.extraLevel, run))
}

// rounds runs each converter once to warm up, then the N timed rounds, interleaved.
func (c *convertBench) rounds(ctx context.Context, src string, r *convertResult) error {
	b := c.bar
	runOCI := func(run string) (float64, error) { return c.runOCI(ctx, src, run) }
	runReg := func(run string) (float64, error) { return c.runReg(ctx, run) }
	runEsgz := func(run string) (float64, error) { return c.runEsgz(ctx, run) }
	runIndex := func(run string) (float64, error) { return c.runIndex(ctx, run) }
	b.step("warm up: each converter once")
	for _, w := range []struct {
		name string
		f    func(string) (float64, error)
	}{{"lazypull oci -> oci", runOCI}, {"lazypull registry -> registry", runReg}, {"ctr-remote --estargz", runEsgz}, {"lazypull index", runIndex}} {
		t, err := w.f("warm")
		if err != nil {
			return err
		}
		b.logf("%s: %.3f s", w.name, t)
	}
	os.RemoveAll(filepath.Join(b.work, "lazy-oci-warm"))

	r.loadBefore = loadavg()
	for i := 1; i <= b.cfg.N; i++ {
		run := strconv.Itoa(i)
		b.step("run %d of %d: lazypull oci -> oci", i, b.cfg.N)
		t, err := runOCI(run)
		if err != nil {
			return err
		}
		b.logf("%.3f s", t)
		// Keep the first run's output for the index comparison; the others only take room.
		if i > 1 {
			os.RemoveAll(filepath.Join(b.work, "lazy-oci-"+run))
		}
		b.step("run %d of %d: lazypull registry -> registry", i, b.cfg.N)
		if t, err = runReg(run); err != nil {
			return err
		}
		b.logf("%.3f s", t)
		b.step("run %d of %d: ctr-remote image convert --estargz --oci", i, b.cfg.N)
		if t, err = runEsgz(run); err != nil {
			return err
		}
		b.logf("%.3f s", t)
		b.step("run %d of %d: lazypull index", i, b.cfg.N)
		if t, err = runIndex(run); err != nil {
			return err
		}
		b.logf("%.3f s", t)
		if c.extraLevel != 0 && i <= c.extraN {
			b.step("run %d of %d: ctr-remote image convert --estargz --estargz-compression-level %d --oci", i, c.extraN, c.extraLevel)
			if t, err = c.runExtra(ctx, run); err != nil {
				return err
			}
			b.logf("%.3f s", t)
		}
	}
	r.loadAfter = loadavg()
	return nil
}

// checkDigests checks that every lazypull run wrote the same image, from their logs.
func (c *convertBench) checkDigests() error {
	b := c.bar
	b.step("check that every lazypull run wrote the same image")
	// --json summaries: {"source":...,"digest":"sha256:<manifest>",...}; logs say digest=..., not "digest":
	digestRE := regexp.MustCompile(`"digest":"(sha256:[0-9a-f]{64})"`)
	manifestOf := func(log string) string {
		raw, _ := os.ReadFile(log)
		if m := digestRE.FindSubmatch(raw); m != nil {
			return string(m[1])
		}
		return ""
	}
	lazyDigest := manifestOf(filepath.Join(b.work, "oci-1.log"))
	if lazyDigest == "" {
		return fmt.Errorf("no JSON summary in %s", filepath.Join(b.work, "oci-1.log"))
	}
	logs, _ := filepath.Glob(filepath.Join(b.work, "oci-[0-9]*.log"))
	regLogs, _ := filepath.Glob(filepath.Join(b.work, "reg-*.log"))
	for _, f := range append(logs, regLogs...) {
		if d := manifestOf(f); d != lazyDigest {
			return fmt.Errorf("%s wrote manifest %q, run 1 wrote %s", strings.TrimSuffix(filepath.Base(f), ".log"), d, lazyDigest)
		}
	}
	return nil
}

// indexSizes exports the first eStargz image from containerd and measures the indexes of
// the first lazypull image and its TOCs with tools/indexsize, into r.
func (c *convertBench) indexSizes(ctx context.Context, indexsize string, r *convertResult) error {
	b := c.bar
	b.step("export the eStargz image from containerd (ctr image export)")
	esgzTar := filepath.Join(b.work, "esgz.tar")
	if _, err := command(ctx, nil, "ctr", "--address", c.sock, "image", "export", esgzTar, c.reg.addr+"/python:esgz-1"); err != nil {
		return err
	}
	esgzDir := filepath.Join(b.work, "esgz")
	if err := os.MkdirAll(esgzDir, 0o755); err != nil {
		return err
	}
	if _, err := command(ctx, nil, "tar", "-C", esgzDir, "-xf", esgzTar); err != nil {
		return err
	}
	os.Remove(esgzTar)

	b.step("index and TOC sizes (tools/indexsize)")
	var err error
	if r.lazy, err = c.indexsize(ctx, indexsize, filepath.Join(b.work, "lazy-oci-1")+":lazy"); err != nil {
		return err
	}
	if r.esgz, err = c.indexsize(ctx, indexsize, esgzDir); err != nil {
		return err
	}
	layers := len(r.src)
	if len(r.lazy) != layers {
		return fmt.Errorf("lazypull image has %d layers, source %d", len(r.lazy), layers)
	}
	if len(r.esgz) != layers {
		return fmt.Errorf("eStargz image has %d layers, source %d", len(r.esgz), layers)
	}
	for i := range layers {
		if r.lazy[i].format != "lazypull" {
			return fmt.Errorf("a layer of the lazypull image is not a lazypull layer")
		}
		if r.esgz[i].format != "estargz" {
			return fmt.Errorf("a layer of the converted image is not eStargz")
		}
		// The lazypull layers' tar streams are the source's, byte for byte (indexsize checked the diff IDs).
		if r.lazy[i].tar != r.src[i].tar {
			return fmt.Errorf("lazypull tar sizes differ from the source's")
		}
	}
	return nil
}

// convertFigures are the report's figures of the throughput runs.
type convertFigures struct {
	c        *convertBench
	tarBytes int64
}

// mb is the uncompressed MB/s of a conversion in secs.
func (f convertFigures) mb(secs float64) float64 { return float64(f.tarBytes) / 1e6 / secs }

// med is the median of column col of converter key's timed runs.
func (f convertFigures) med(key string, col int) float64 {
	return median(column(f.c.times[key], col))
}

// cpu is the median CPU seconds of converter key's timed runs, its daemon's included.
func (f convertFigures) cpu(key string) float64 {
	var xs []float64
	for _, r := range f.c.times[key] {
		xs = append(xs, r[1]+r[2])
	}
	return median(xs)
}

// row is converter key's markdown row. The MB/s range runs from the slowest run to the fastest.
func (f convertFigures) row(key, label string) string {
	s := NewStat(column(f.c.times[key], 0))
	return fmt.Sprintf("| %s | %.3f (%.3f-%.3f) | %.1f (%.1f-%.1f) | %.3f + %.3f | %.1f |", label, s.Median, s.Min, s.Max,
		f.mb(s.Median), f.mb(s.Max), f.mb(s.Min), f.med(key, 1), f.med(key, 2), f.mb(f.cpu(key)))
}

// indexTotals are the index and TOC sizes summed over the layers: lazypull's (l) and
// eStargz's (e) entries, chunks, compressed metadata, raw metadata and sha256 bytes.
type indexTotals struct {
	le, ee, lc, ec, lm, em, lr, er, ls, es int64
	// worst is the largest ratio of a layer's compressed index to its TOC.
	worst float64
}

// indexTable is the markdown rows of the index vs TOC table, per layer and in all.
func indexTable(lazy, esgz []indexRow) (string, indexTotals) {
	pct := func(a, b int64) string { return fmt.Sprintf("%.1f%%", 100*float64(a)/float64(b)) }
	var tb strings.Builder
	var t indexTotals
	for i := range lazy {
		l, e := lazy[i], esgz[i]
		fmt.Fprintf(&tb, "| %s | %d / %d | %d / %d | %d | %d | %s | %d | %d | %s | %d / %d |\n",
			l.layer, l.entries, e.entries, l.chunks, e.chunks, l.meta, e.meta, pct(l.meta, e.meta), l.raw, e.raw, pct(l.raw, e.raw), 32*l.shas, 32*e.shas)
		t.le, t.ee, t.lc, t.ec, t.lm, t.em, t.lr, t.er = t.le+l.entries, t.ee+e.entries, t.lc+l.chunks, t.ec+e.chunks, t.lm+l.meta, t.em+e.meta, t.lr+l.raw, t.er+e.raw
		t.ls, t.es = t.ls+32*l.shas, t.es+32*e.shas
		t.worst = max(t.worst, float64(l.meta)/float64(e.meta))
	}
	fmt.Fprintf(&tb, "| all | %d / %d | %d / %d | %d | %d | %s | %d | %d | %s | %d / %d |",
		t.le, t.ee, t.lc, t.ec, t.lm, t.em, pct(t.lm, t.em), t.lr, t.er, pct(t.lr, t.er), t.ls, t.es)
	return tb.String(), t
}

// report writes the console summary and returns the markdown report of r.
func (c *convertBench) report(r *convertResult) string {
	b := c.bar
	N := b.cfg.N
	f := convertFigures{c: c, tarBytes: r.tarBytes}
	ratioOCI := f.med("esgz", 0) / f.med("oci", 0)
	ratioCPU := f.cpu("esgz") / f.cpu("oci")
	verdictTP := verdict(round2(ratioOCI) >= 2)
	table, t := indexTable(r.lazy, r.esgz)
	ratioC := float64(t.lm) / float64(t.em)
	ratioR := float64(t.lr) / float64(t.er)
	verdictC := verdict(3*t.lm <= t.em)
	verdictR := verdict(3*t.lr <= t.er)

	var w mdReport
	p := w.p
	p("")
	p("## make bench-convert, %s", time.Now().UTC().Format("2006-01-02 15:04:05 UTC"))
	p("")
	p("Command: `%s` (lazypull-bench convert, N=%d); the run took %.0f s.", b.cfg.Command, N, time.Since(b.started).Seconds())
	p("Machine: %s.", machineLine())
	p("Versions: %s (%s, built from the work tree at %s); ctr-remote from stargz-snapshotter"+
		" %s; %s.", b.lazypullVersion(), b.cfg.Lazypull, r.commit, debVersion("stargz-snapshotter"), containerdVersion())
	p("Image: the test image of scripts/build-test-image.sh (Debian bookworm minbase + python3),"+
		" %d gzip layers, %d bytes compressed, %d bytes of tar"+
		" (%.1f MB, the sum of the diff IDs' sizes).", len(r.src), r.srcBlobBytes, r.tarBytes, float64(r.tarBytes)/1e6)
	p("")
	c.reportThroughput(&w, r, f)
	p("### Bar: index <= 1/3 of the eStargz TOC, compressed: %s (%.2fx); uncompressed: %s (%.2fx)", verdictC, ratioC, verdictR, ratioR)
	p("")
	p("Per layer (`tools/indexsize`): lazypull index payload against the eStargz TOC gzip member" +
		" (compressed; footers not counted), and the index body against stargz.index.json" +
		" (uncompressed). Entries and chunks are lazypull / eStargz (ctr-remote's default chunk size);" +
		" the sha256 floor is 32 bytes per distinct SHA-256 value the metadata carries.")
	p("")
	p("| layer | entries | chunks | index, compressed | TOC, compressed | index/TOC | index body | TOC JSON | body/JSON | sha256 floor |")
	p("|---|---|---|---|---|---|---|---|---|---|")
	p("%s", table)
	p("")
	if verdictC == "MISSED" {
		floor := t.ls
		nonshaRatio := float64(t.lm-t.ls) / float64(t.em-t.es)
		p("**The compressed bar is missed** (worst layer %.2fx). Both formats carry a"+
			" SHA-256 per chunk (and per multi-chunk file), 32 bytes of entropy each that no compressor"+
			" removes: they are %d bytes, %.0f%% of lazypull's compressed index and alone"+
			" %.2fx the eStargz TOC, so 1/3 cannot be reached while every chunk is verified"+
			" with a sha256 (and lazypull's 128 KiB average chunks give it more chunks than eStargz's"+
			" default). Everything but the digests is %.2fx eStargz's.", t.worst, floor, 100*float64(floor)/float64(t.lm),
			float64(floor)/float64(t.em), nonshaRatio)
	}
	if verdictR == "MISSED" {
		p("**The uncompressed bar is missed.**")
	}

	// The console summary, then the markdown.
	o := b.cfg.Out
	fmt.Fprintln(o)
	fmt.Fprintf(o, "throughput (median of %d; uncompressed MB/s of %d tar bytes; CPU incl. daemon):\n", N, r.tarBytes)
	sumRow := func(key, label string) {
		fmt.Fprintf(o, "  %-42s %8.3f s %7.1f MB/s  %8.3f CPU-s\n", label, f.med(key, 0), f.mb(f.med(key, 0)), f.cpu(key))
	}
	sumRow("oci", "lazypull oci -> oci")
	sumRow("reg", "lazypull registry -> registry")
	sumRow("esgz", "ctr-remote --estargz")
	sumRow("index", "lazypull index (registry -> registry)")
	if c.extraLevel != 0 {
		sumRow("extra", fmt.Sprintf("ctr-remote --estargz (level %d)", c.extraLevel))
	}
	fmt.Fprintf(o, "  lazypull / ctr-remote: %.2fx wall-clock (bar >= 2x: %s), %.2fx CPU\n", ratioOCI, verdictTP, ratioCPU)
	ratioIdx, ratioIdxCPU := f.med("esgz", 0)/f.med("index", 0), f.cpu("esgz")/f.cpu("index")
	fmt.Fprintf(o, "  lazypull index / ctr-remote: %.2fx wall-clock (bar >= 2x: %s), %.2fx CPU\n", ratioIdx, verdict(round2(ratioIdx) >= 2), ratioIdxCPU)
	fmt.Fprintf(o, "index vs TOC: compressed %d / %d = %.2fx (bar <= 0.33: %s); uncompressed %d / %d = %.2fx (%s)\n",
		t.lm, t.em, ratioC, verdictC, t.lr, t.er, ratioR, verdictR)
	return w.String()
}

// reportThroughput writes the throughput bar's section.
func (c *convertBench) reportThroughput(w *mdReport, r *convertResult, f convertFigures) {
	p := w.p
	N := c.cfg.N
	ratioOCI := f.med("esgz", 0) / f.med("oci", 0)
	ratioReg := f.med("esgz", 0) / f.med("reg", 0)
	ratioCPU := f.cpu("esgz") / f.cpu("oci")
	verdictTP := verdict(round2(ratioOCI) >= 2)
	p("### Bar: converter throughput, lazypull >= 2x ctr-remote: %s (%.2fx)", verdictTP, ratioOCI)
	p("")
	p("Wall-clock seconds and uncompressed MB/s (10^6 bytes of tar per second): median of %d runs"+
		" after one warm-up run each, and (min-max); the runs were interleaved. CPU: median user+system"+
		" seconds of the converter process and its children, + those of the daemon it works through"+
		" (containerd for ctr-remote, the registry for registry -> registry), and the MB per CPU-second"+
		" of the two together.", N)
	p("")
	p("| converter | seconds | MB/s | CPU s | MB per CPU-s |")
	p("|---|---|---|---|---|")
	p("%s", f.row("oci", "lazypull convert, OCI layout -> OCI layout"))
	p("%s", f.row("reg", "lazypull convert, registry -> registry (loopback)"))
	p("%s", f.row("esgz", "ctr-remote image convert --estargz --oci (content store -> content store)"))
	p("%s", f.row("index", "lazypull index (reads the blobs from the registry, pushes the index artifact)"))
	if c.extraLevel != 0 {
		runs := "run"
		if c.extraN != 1 {
			runs = "runs"
		}
		p("%s", f.row("extra", fmt.Sprintf("ctr-remote, same, --estargz-compression-level %d (%d %s)", c.extraLevel, c.extraN, runs)))
	}
	p("")
	p("Load average (1, 5, 15 min) before the timed runs: %s; after: %s.", r.loadBefore, r.loadAfter)
	if first(r.loadBefore) > float64(numCPU())/2 || first(r.loadAfter) > float64(numCPU())/2+1 {
		p("Other work was running on the machine: the wall-clock figures are noisy, the CPU" +
			" figures much less so.")
	}
	p("")
	p("lazypull is %.2fx ctr-remote locally (OCI layout against content store) and"+
		" %.2fx from and to the registry (wall-clock medians); %.2fx in CPU time"+
		" (local conversion, daemons included).", ratioOCI, ratioReg, ratioCPU)
	if c.extraLevel != 0 {
		p("ctr-remote's default gzip level is 9; at level %d lazypull is still"+
			" %.2fx, so the gap is not the compression level alone.", c.extraLevel, f.med("extra", 0)/f.med("oci", 0))
	}
	if verdictTP == "MISSED" {
		p("**The bar is missed**: lazypull is below 2x ctr-remote on this run.")
	}
	p("")
	ratioIdx := f.med("esgz", 0) / f.med("index", 0)
	p("### Bar: `lazypull index` throughput >= 2x ctr-remote: %s (%.2fx)", verdict(round2(ratioIdx) >= 2), ratioIdx)
	p("")
	p("`lazypull index` of the same image in the registry (the unconverted image kept, an index"+
		" artifact pushed beside it; from and to the registry over loopback, its CPU counted with"+
		" the registry's) against ctr-remote's eStargz conversion: %.2fx in wall clock, %.2fx in"+
		" CPU time (medians).", ratioIdx, f.cpu("esgz")/f.cpu("index"))
	p("")
}

// first is the first number of a load average line.
func first(load string) float64 {
	f := strings.Fields(load)
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

func containerdVersion() string { return programVersion("containerd", 2) }

// programVersion is "NAME VERSION", VERSION the word at index at of `NAME --version`'s
// output.
func programVersion(name string, at int) string {
	out, _ := exec.Command(name, "--version").Output()
	f := strings.Fields(string(out))
	if len(f) <= at {
		return name + " (version unknown)"
	}
	return name + " " + f[at]
}
