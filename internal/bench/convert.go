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
//     --estargz-compression-level ExtraLevel (its default is 9). Each is run once to warm up
//     (the extra level shares ctr-remote's), then N times (the extra level ExtraN times),
//     interleaved; the median and the min-max of the wall-clock time are reported, and the
//     median CPU time of the converter plus the daemon it works through (containerd, or the
//     registry), which other load on the machine disturbs much less. Bar, on the wall-clock
//     medians: lazypull (layout -> layout) >= 2x ctr-remote (its default settings).
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
	addr := reg.addr
	regPID, err := readPID(filepath.Join(reg.dir, "registry.pid"))
	if err != nil {
		return err
	}
	b.step("start containerd")
	ctd := filepath.Join(b.work, "containerd")
	c.ctd = ctd
	if _, err := command(ctx, nil, filepath.Join(b.scripts(), "containerd.sh"), "start", ctd); err != nil {
		return err
	}
	sock := filepath.Join(ctd, "containerd.sock")
	ctdPID, err := readPID(filepath.Join(ctd, "containerd.pid"))
	if err != nil {
		return err
	}

	b.step("build the test image (scripts/build-test-image.sh)")
	src, err := b.testImage(ctx)
	if err != nil {
		return err
	}
	b.step("build tools/indexsize")
	indexsize, err := b.buildTool(ctx, "indexsize")
	if err != nil {
		return err
	}
	b.step("measure the source image (tools/indexsize: tar stream sizes, checked against the diff IDs)")
	srcRows, err := c.indexsize(ctx, indexsize, src+":python")
	if err != nil {
		return err
	}
	layers := len(srcRows)
	var tarBytes, srcBlobBytes int64
	for _, r := range srcRows {
		tarBytes += r.tar
		srcBlobBytes += r.blob
	}
	if tarBytes <= 0 {
		return fmt.Errorf("source image has no tar bytes")
	}
	b.logf("source: %d layers, %d bytes compressed, %d bytes uncompressed", layers, srcBlobBytes, tarBytes)

	b.step("push the source image to the registry (skopeo)")
	if _, err := command(ctx, nil, "skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false", "oci:"+src+":python", "docker://"+addr+"/python:src"); err != nil {
		return err
	}
	b.step("pull the source image into containerd (ctr image pull)")
	if _, err := command(ctx, nil, "ctr", "--address", sock, "image", "pull", "--plain-http", addr+"/python:src"); err != nil {
		return err
	}

	// The converters. Each run writes to a new destination, so nothing is skipped as already there.
	runOCI := func(run string) (float64, error) {
		os.RemoveAll(filepath.Join(b.work, "lazy-oci-"+run))
		return c.timed(ctx, "oci", run, 0, b.cfg.Lazypull, "convert", "--json", "oci:"+src+":python", "oci:"+filepath.Join(b.work, "lazy-oci-"+run)+":lazy")
	}
	runReg := func(run string) (float64, error) {
		return c.timed(ctx, "reg", run, regPID, b.cfg.Lazypull, "convert", "--json", addr+"/python:src", addr+"/lazy-"+run+":latest")
	}
	runEsgz := func(run string) (float64, error) {
		return c.timed(ctx, "esgz", run, ctdPID, "ctr-remote", "--address", sock, "image", "convert", "--estargz", "--oci",
			addr+"/python:src", addr+"/python:esgz-"+run)
	}
	runExtra := func(run string) (float64, error) {
		return c.timed(ctx, "extra", run, ctdPID, "ctr-remote", "--address", sock, "image", "convert", "--estargz",
			"--estargz-compression-level", strconv.Itoa(c.extraLevel), "--oci", addr+"/python:src", fmt.Sprintf("%s/python:esgz-l%d-%s", addr, c.extraLevel, run))
	}

	b.step("warm up: each converter once")
	for _, w := range []struct {
		name string
		f    func(string) (float64, error)
	}{{"lazypull oci -> oci", runOCI}, {"lazypull registry -> registry", runReg}, {"ctr-remote --estargz", runEsgz}} {
		t, err := w.f("warm")
		if err != nil {
			return err
		}
		b.logf("%s: %.3f s", w.name, t)
	}
	os.RemoveAll(filepath.Join(b.work, "lazy-oci-warm"))

	loadBefore := loadavg()
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
		if c.extraLevel != 0 && i <= c.extraN {
			b.step("run %d of %d: ctr-remote image convert --estargz --estargz-compression-level %d --oci", i, c.extraN, c.extraLevel)
			if t, err = runExtra(run); err != nil {
				return err
			}
			b.logf("%.3f s", t)
		}
	}
	loadAfter := loadavg()

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

	b.step("export the eStargz image from containerd (ctr image export)")
	esgzTar := filepath.Join(b.work, "esgz.tar")
	if _, err := command(ctx, nil, "ctr", "--address", sock, "image", "export", esgzTar, addr+"/python:esgz-1"); err != nil {
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
	lazyRows, err := c.indexsize(ctx, indexsize, filepath.Join(b.work, "lazy-oci-1")+":lazy")
	if err != nil {
		return err
	}
	esgzRows, err := c.indexsize(ctx, indexsize, esgzDir)
	if err != nil {
		return err
	}
	if len(lazyRows) != layers {
		return fmt.Errorf("lazypull image has %d layers, source %d", len(lazyRows), layers)
	}
	if len(esgzRows) != layers {
		return fmt.Errorf("eStargz image has %d layers, source %d", len(esgzRows), layers)
	}
	for i := range layers {
		if lazyRows[i].format != "lazypull" {
			return fmt.Errorf("a layer of the lazypull image is not a lazypull layer")
		}
		if esgzRows[i].format != "estargz" {
			return fmt.Errorf("a layer of the converted image is not eStargz")
		}
		// The lazypull layers' tar streams are the source's, byte for byte (indexsize checked the diff IDs).
		if lazyRows[i].tar != srcRows[i].tar {
			return fmt.Errorf("lazypull tar sizes differ from the source's")
		}
	}

	b.step("report")
	N := b.cfg.N
	mb := func(secs float64) float64 { return float64(tarBytes) / 1e6 / secs }
	med := func(key string, col int) float64 { return median(column(c.times[key], col)) }
	cpuMed := func(key string) float64 {
		var xs []float64
		for _, r := range c.times[key] {
			xs = append(xs, r[1]+r[2])
		}
		return median(xs)
	}
	ratioOCI := med("esgz", 0) / med("oci", 0)
	ratioReg := med("esgz", 0) / med("reg", 0)
	ratioCPU := cpuMed("esgz") / cpuMed("oci")
	verdictTP := verdict(round2(ratioOCI) >= 2)
	// tpRow: a markdown row. The MB/s range runs from the slowest run to the fastest.
	tpRow := func(key, label string) string {
		s := NewStat(column(c.times[key], 0))
		return fmt.Sprintf("| %s | %.3f (%.3f-%.3f) | %.1f (%.1f-%.1f) | %.3f + %.3f | %.1f |", label, s.Median, s.Min, s.Max,
			mb(s.Median), mb(s.Max), mb(s.Min), med(key, 1), med(key, 2), mb(cpuMed(key)))
	}

	// Index vs TOC, per layer and in total.
	pct := func(a, b int64) string { return fmt.Sprintf("%.1f%%", 100*float64(a)/float64(b)) }
	var indexTable strings.Builder
	var le, ee, lc, ec, lm, em, lr, er, ls, es int64
	worst := 0.0
	for i := range layers {
		l, e := lazyRows[i], esgzRows[i]
		fmt.Fprintf(&indexTable, "| %s | %d / %d | %d / %d | %d | %d | %s | %d | %d | %s | %d / %d |\n",
			l.layer, l.entries, e.entries, l.chunks, e.chunks, l.meta, e.meta, pct(l.meta, e.meta), l.raw, e.raw, pct(l.raw, e.raw), 32*l.shas, 32*e.shas)
		le, ee, lc, ec, lm, em, lr, er = le+l.entries, ee+e.entries, lc+l.chunks, ec+e.chunks, lm+l.meta, em+e.meta, lr+l.raw, er+e.raw
		ls, es = ls+32*l.shas, es+32*e.shas
		worst = max(worst, float64(l.meta)/float64(e.meta))
	}
	fmt.Fprintf(&indexTable, "| all | %d / %d | %d / %d | %d | %d | %s | %d | %d | %s | %d / %d |",
		le, ee, lc, ec, lm, em, pct(lm, em), lr, er, pct(lr, er), ls, es)
	ratioC := float64(lm) / float64(em)
	ratioR := float64(lr) / float64(er)
	verdictC := verdict(3*lm <= em)
	verdictR := verdict(3*lr <= er)
	floor := ls
	nonshaRatio := float64(lm-ls) / float64(em-es)

	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format+"\n", args...) }
	p("")
	p("## make bench-convert, %s", time.Now().UTC().Format("2006-01-02 15:04:05 UTC"))
	p("")
	p("Command: `%s` (lazypull-bench convert, N=%d); the run took %.0f s.", b.cfg.Command, N, time.Since(b.started).Seconds())
	p("Machine: %s.", machineLine())
	p("Versions: %s (%s, built from the work tree at %s); ctr-remote from stargz-snapshotter"+
		" %s; %s.", b.lazypullVersion(), b.cfg.Lazypull, commit, debVersion("stargz-snapshotter"), containerdVersion())
	p("Image: the test image of scripts/build-test-image.sh (Debian bookworm minbase + python3),"+
		" %d gzip layers, %d bytes compressed, %d bytes of tar"+
		" (%.1f MB, the sum of the diff IDs' sizes).", layers, srcBlobBytes, tarBytes, float64(tarBytes)/1e6)
	p("")
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
	p("%s", tpRow("oci", "lazypull convert, OCI layout -> OCI layout"))
	p("%s", tpRow("reg", "lazypull convert, registry -> registry (loopback)"))
	p("%s", tpRow("esgz", "ctr-remote image convert --estargz --oci (content store -> content store)"))
	if c.extraLevel != 0 {
		runs := "run"
		if c.extraN != 1 {
			runs = "runs"
		}
		p("%s", tpRow("extra", fmt.Sprintf("ctr-remote, same, --estargz-compression-level %d (%d %s)", c.extraLevel, c.extraN, runs)))
	}
	p("")
	p("Load average (1, 5, 15 min) before the timed runs: %s; after: %s.", loadBefore, loadAfter)
	if first(loadBefore) > float64(numCPU())/2 || first(loadAfter) > float64(numCPU())/2+1 {
		p("Other work was running on the machine: the wall-clock figures are noisy, the CPU" +
			" figures much less so.")
	}
	p("")
	p("lazypull is %.2fx ctr-remote locally (OCI layout against content store) and"+
		" %.2fx from and to the registry (wall-clock medians); %.2fx in CPU time"+
		" (local conversion, daemons included).", ratioOCI, ratioReg, ratioCPU)
	if c.extraLevel != 0 {
		p("ctr-remote's default gzip level is 9; at level %d lazypull is still"+
			" %.2fx, so the gap is not the compression level alone.", c.extraLevel, med("extra", 0)/med("oci", 0))
	}
	if verdictTP == "MISSED" {
		p("**The bar is missed**: lazypull is below 2x ctr-remote on this run.")
	}
	p("")
	p("### Bar: index <= 1/3 of the eStargz TOC, compressed: %s (%.2fx); uncompressed: %s (%.2fx)", verdictC, ratioC, verdictR, ratioR)
	p("")
	p("Per layer (`tools/indexsize`): lazypull index payload against the eStargz TOC gzip member" +
		" (compressed; footers not counted), and the index body against stargz.index.json" +
		" (uncompressed). Entries and chunks are lazypull / eStargz (ctr-remote's default chunk size);" +
		" the sha256 floor is 32 bytes per distinct SHA-256 value the metadata carries.")
	p("")
	p("| layer | entries | chunks | index, compressed | TOC, compressed | index/TOC | index body | TOC JSON | body/JSON | sha256 floor |")
	p("|---|---|---|---|---|---|---|---|---|---|")
	p("%s", indexTable.String())
	p("")
	if verdictC == "MISSED" {
		p("**The compressed bar is missed** (worst layer %.2fx). Both formats carry a"+
			" SHA-256 per chunk (and per multi-chunk file), 32 bytes of entropy each that no compressor"+
			" removes: they are %d bytes, %.0f%% of lazypull's compressed index and alone"+
			" %.2fx the eStargz TOC, so 1/3 cannot be reached while every chunk is verified"+
			" with a sha256 (and lazypull's 128 KiB average chunks give it more chunks than eStargz's"+
			" default). Everything but the digests is %.2fx eStargz's.", worst, floor, 100*float64(floor)/float64(lm),
			float64(floor)/float64(em), nonshaRatio)
	}
	if verdictR == "MISSED" {
		p("**The uncompressed bar is missed.**")
	}

	// The console summary, then the markdown.
	o := b.cfg.Out
	fmt.Fprintln(o)
	fmt.Fprintf(o, "throughput (median of %d; uncompressed MB/s of %d tar bytes; CPU incl. daemon):\n", N, tarBytes)
	sumRow := func(key, label string) {
		fmt.Fprintf(o, "  %-42s %8.3f s %7.1f MB/s  %8.3f CPU-s\n", label, med(key, 0), mb(med(key, 0)), cpuMed(key))
	}
	sumRow("oci", "lazypull oci -> oci")
	sumRow("reg", "lazypull registry -> registry")
	sumRow("esgz", "ctr-remote --estargz")
	if c.extraLevel != 0 {
		sumRow("extra", fmt.Sprintf("ctr-remote --estargz (level %d)", c.extraLevel))
	}
	fmt.Fprintf(o, "  lazypull / ctr-remote: %.2fx wall-clock (bar >= 2x: %s), %.2fx CPU\n", ratioOCI, verdictTP, ratioCPU)
	fmt.Fprintf(o, "index vs TOC: compressed %d / %d = %.2fx (bar <= 0.33: %s); uncompressed %d / %d = %.2fx (%s)\n",
		lm, em, ratioC, verdictC, lr, er, ratioR, verdictR)
	return b.finish(w.String())
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
