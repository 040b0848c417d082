package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// SnapshotterConfig is the snapshotter's benchmark (`lazypull-bench snapshotter`, make
// bench-snapshotter).
type SnapshotterConfig struct {
	BarConfig
	// Parts are the parts to run: memory, cold (both when empty).
	Parts []string
}

// SnapshotterParts are the parts of the snapshotter's benchmark.
var SnapshotterParts = []string{"memory", "cold"}

const (
	snapshotterImages = 10
	snapshotterBarKiB = 64 * 1024
	snapshotterNS     = "bench"
)

// Snapshotter measures the snapshotter's bars, in one run (root; about 4 minutes on a 2-CPU
// machine).
//
// Images: the python test image (scripts/build-test-image.sh, Debian bookworm minbase +
// python3, 2 gzip layers) pushed unchanged into a docker-registry on a random loopback port
// (the "original"), converted with `lazypull convert` (bench/python-0:lazy), and 9 variants
// of the converted image that each add one small layer of their own (/etc/lazypull-variant,
// a few KiB; tools/addlayer, then `lazypull convert`, which copies the two lazypull layers
// as they are and converts the new one): 10 distinct lazypull images sharing 2 layers.
//
//  1. memory: the daemon with 10 images mounted. A `lazypull snapshotter` (fresh root and
//     store) and a private containerd using it (scripts/containerd.sh with
//     CONTAINERD_PROXY_SNAPSHOTTER); for each of the 10 images, one after the other,
//     `lazypull pull --plain-http REF` and `ctr run --rm --snapshotter lazypull REF ID
//     python3 -c "print('image N')"`; then, 5 s after the last container, VmRSS and VmHWM (and
//     RssAnon, RssFile) of the snapshotter process from /proc/PID/status. Bar: VmRSS <= 64
//     MiB. Where the memory goes: the Go runtime's figures and the top of a heap profile, from
//     the snapshotter's --debug-addr (net/http/pprof) after the reading.
//  2. cold: the cold start of the python image, lazypull against plain containerd. N rounds;
//     in each, in alternating order, lazy: a fresh containerd root and a fresh snapshotter
//     (root and store), then, timed, `lazypull pull --plain-http REG/bench/python-0:lazy` and
//     `ctr run --rm --snapshotter lazypull REG/bench/python-0:lazy ID`; plain: a fresh
//     containerd root (overlayfs snapshotter), then, timed, `ctr image pull --plain-http
//     REG/bench/python:orig` and `ctr run --rm REG/bench/python:orig ID`. Both containers
//     print "hello from python" (the image's command), checked. Daemons are started before
//     the clock starts and are not timed. Bytes fetched are the registry's egress: the sum of
//     http.response.written over the "response completed" lines the registry logged during
//     the timed part (every manifest, config, blob and Range response body, to containerd and
//     to the snapshotter alike), and the snapshotter's own count (fetch.Bytes in
//     STORE/stats.json) beside it. The page cache is not dropped (the registry's blobs are in
//     it for both). Bar: lazypull fetches far fewer bytes (judged as at most a quarter of the
//     plain pull's, medians).
//
// Everything runs in a fresh work directory (short, for unix socket paths): the registry,
// the containerds, the snapshotters, the image layouts. Every daemon started is stopped by
// its PID (containerd through scripts/containerd.sh, which also unmounts what is left under
// its directory), and the directory removed, whatever happened.
func Snapshotter(ctx context.Context, cfg SnapshotterConfig) (err error) {
	if len(cfg.Parts) == 0 {
		cfg.Parts = SnapshotterParts
	}
	for _, p := range cfg.Parts {
		if !slices.Contains(SnapshotterParts, p) {
			return fmt.Errorf("unknown part %q (want %s)", p, strings.Join(SnapshotterParts, ", "))
		}
	}
	b, err := newBar(cfg.BarConfig, "bench-snapshotter", "lzb-sn.")
	if err != nil {
		return err
	}
	s := &snBench{bar: b, parts: cfg.Parts}
	stopNode := func() error {
		if s.node == nil {
			return nil
		}
		return s.stopNode()
	}
	return b.execute(func() error { return s.run(ctx) }, stopNode, func() error { return s.reg.stop() })
}

type snBench struct {
	*bar
	parts  []string
	reg    *registry
	regLog string
	node   *node // the node running now (one at a time)
}

func (s *snBench) has(part string) bool { return slices.Contains(s.parts, part) }

// startNode starts, under WORK/NAME, a lazypull snapshotter with a fresh root and store
// (with --debug-addr 127.0.0.1:0 if debug) and a containerd of its own using it; or, when
// !lazy, a containerd with its overlayfs snapshotter alone.
func (s *snBench) startNode(ctx context.Context, name string, lazy, debug bool) error {
	n := &node{scripts: s.scripts(), lazypull: s.cfg.Lazypull, dir: filepath.Join(s.work, name)}
	n.ctd = filepath.Join(n.dir, "ctd")
	if err := os.MkdirAll(n.dir, 0o755); err != nil {
		return err
	}
	s.node = n
	env := []string{"CONTAINERD_PROXY_SNAPSHOTTER="}
	if lazy {
		var args []string
		if debug {
			args = append(args, "--debug-addr", "127.0.0.1:0")
		}
		if err := n.startSnapshotterWith("profile_policy = \"referrers\"\n", args...); err != nil {
			return err
		}
		env = []string{"CONTAINERD_PROXY_SNAPSHOTTER=" + n.snSock}
	}
	if _, err := command(ctx, env, filepath.Join(s.scripts(), "containerd.sh"), "start", n.ctd); err != nil {
		return fmt.Errorf("start containerd: %w", err)
	}
	return nil
}

// stopNode stops the node running now: its containerd, the snapshotter (SIGTERM: it leaves
// its lazy layer mounts to its keeper), the mounts left; then the keeper, which would exit
// by itself once idle (SIGTERM saves the wait); then it removes the node's directory.
func (s *snBench) stopNode() error {
	n := s.node
	s.node = nil
	kpid := 0
	if n.snRoot != "" {
		kpid = keeperPID(n.snRoot)
	}
	err := n.stop()
	if kpid != 0 {
		syscall.Kill(kpid, syscall.SIGTERM)
		deadline := time.Now().Add(10 * time.Second)
		for syscall.Kill(kpid, 0) == nil && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if syscall.Kill(kpid, 0) == nil {
			s.logf("lazypull keeper (pid %d) still running 10 s after SIGTERM; SIGKILL", kpid)
			syscall.Kill(kpid, syscall.SIGKILL)
		}
	}
	return err
}

// keeperPID is the PID of the `lazypull keeper` that the snapshotter with root snRoot
// started (it holds the layers' FUSE connections across snapshotter restarts), or 0.
func keeperPID(snRoot string) int {
	want := " keeper --socket " + filepath.Join(snRoot, "keeper.sock") + " "
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		raw, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil {
			continue
		}
		if strings.Contains(strings.ReplaceAll(string(raw), "\x00", " "), want) {
			pid, _ := strconv.Atoi(filepath.Base(d))
			return pid
		}
	}
	return 0
}

func (s *snBench) ctr(args ...string) []string {
	return append([]string{"--address", s.node.sock(), "--namespace", snapshotterNS}, args...)
}

func (s *snBench) pull(ctx context.Context, ref string) error {
	_, err := command(ctx, nil, s.cfg.Lazypull, "pull", "--address", s.node.sock(), "--snapshotter-address", s.node.snSock,
		"--namespace", snapshotterNS, "--plain-http", ref)
	return err
}

// ctrRun runs ctr with args and returns its standard output, trimmed.
func (s *snBench) ctrRun(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ctr", s.ctr(args...)...)
	var errb strings.Builder
	cmd.Stderr = &errb
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("ctr %s: %w\n%s", strings.Join(args, " "), err, tail(errb.String(), 20))
	}
	return strings.TrimSpace(string(out)), nil
}

// egressSince is the requests and bytes the registry logged as completed after byte offset
// of its log. Responses are logged as they complete, a moment after the client has the bytes.
func (s *snBench) egressSince(offset int64) (int64, int64, error) {
	time.Sleep(time.Second)
	f, err := os.Open(s.regLog)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return 0, 0, err
	}
	var n, bytes int64
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, `msg="response completed"`) {
			continue
		}
		n++
		for _, fld := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(fld, "http.response.written="); ok {
				w, _ := strconv.ParseInt(v, 10, 64)
				bytes += w
			}
		}
	}
	return n, bytes, sc.Err()
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// procKiB is a "Key:  N kB" figure of /proc/PID/status (or smaps_rollup).
func procKiB(pid int, file, key string) int64 {
	raw, _ := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, file))
	for line := range strings.SplitSeq(string(raw), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == key+":" {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	return 0
}

func mibOf(kib int64) string { return fmt.Sprintf("%.1f", float64(kib)/1024) }

func (s *snBench) run(ctx context.Context) error {
	b := s.bar
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("/dev/fuse missing: this machine cannot mount FUSE")
	}
	commit, reg, err := b.begin(ctx, "go", "ctr", "containerd", "runc", "docker-registry", "skopeo")
	if err != nil {
		return err
	}
	s.reg, s.regLog = reg, filepath.Join(reg.dir, "registry.log")
	r := &snResult{commit: commit}
	if err := s.pushImages(ctx, r); err != nil {
		return err
	}
	if s.has("memory") {
		b.step("memory: %d images through one snapshotter", snapshotterImages)
		if r.mem, err = s.memory(ctx, r.refs); err != nil {
			return err
		}
	}
	if s.has("cold") {
		if err := s.coldRounds(ctx, r); err != nil {
			return err
		}
	}
	return b.finish(s.report(r))
}

// snResult is what the snapshotter bench measured, for its report.
type snResult struct {
	commit string
	// The original image's reference, the lazypull images' (the converted image first, then
	// its variants), and the layer bytes of the original and the converted image.
	orig                 string
	refs                 []string
	origBytes, lazyBytes int64

	mem *snMemory // nil when the memory part does not run

	// The cold starts, a row per round (timedStart's), and the load around them.
	coldLazy, coldPlain   [][]float64
	loadBefore, loadAfter string
}

// pushImages pushes the original test image, converts it, and converts the variants, each
// the converted image with one more small layer, into the registry; into r.
func (s *snBench) pushImages(ctx context.Context, r *snResult) error {
	b := s.bar
	addr := s.reg.addr
	b.step("build the python test image (cached) and tools/addlayer")
	images, err := b.testImage(ctx)
	if err != nil {
		return err
	}
	addlayer, err := b.buildTool(ctx, "addlayer")
	if err != nil {
		return err
	}

	b.step("push the original, convert it, and make %d variants", snapshotterImages-1)
	r.orig = addr + "/bench/python:orig"
	if _, err := command(ctx, nil, "skopeo", "copy", "--quiet", "--dest-tls-verify=false", "oci:"+images+":python", "docker://"+r.orig); err != nil {
		return err
	}
	lazyLayout := filepath.Join(b.work, "lazy")
	if _, err := command(ctx, nil, b.cfg.Lazypull, "convert", "--json", "oci:"+images+":python", "oci:"+lazyLayout+":python"); err != nil {
		return err
	}
	for i := range snapshotterImages {
		ref := fmt.Sprintf("%s/bench/python-%d:lazy", addr, i)
		if i == 0 {
			if _, err := command(ctx, nil, b.cfg.Lazypull, "convert", "--json", "oci:"+lazyLayout+":python", ref); err != nil {
				return err
			}
		} else if err := s.pushVariant(ctx, addlayer, lazyLayout, i, ref); err != nil {
			return err
		}
		r.refs = append(r.refs, ref)
	}
	origMan, err := getManifest(ctx, addr, "bench/python", "orig")
	if err != nil {
		return err
	}
	lazyMan, err := getManifest(ctx, addr, "bench/python-0", "lazy")
	if err != nil {
		return err
	}
	v1Man, err := getManifest(ctx, addr, "bench/python-1", "lazy")
	if err != nil {
		return err
	}
	if len(v1Man.Layers) != 3 {
		return fmt.Errorf("variant 1 does not have 3 layers")
	}
	r.origBytes, r.lazyBytes = origMan.layerBytes(), lazyMan.layerBytes()
	return nil
}

// pushVariant makes variant i of the converted image in lazyLayout, with addlayer, and
// converts it into the registry as ref.
func (s *snBench) pushVariant(ctx context.Context, addlayer, lazyLayout string, i int, ref string) error {
	b := s.bar
	layer := filepath.Join(b.work, fmt.Sprintf("layer-%d", i))
	if err := os.MkdirAll(filepath.Join(layer, "etc"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(layer, "etc", "lazypull-variant"), variantFile(i), 0o644); err != nil {
		return err
	}
	variants := fmt.Sprintf("%s:python-%d", filepath.Join(b.work, "variants"), i)
	if _, err := command(ctx, nil, addlayer, "-src", lazyLayout+":python", "-dst", variants, layer); err != nil {
		return err
	}
	_, err := command(ctx, nil, b.cfg.Lazypull, "convert", "--json", "oci:"+variants, ref)
	return err
}

// coldRounds runs the N cold start rounds, lazy and plain alternating first, into r.
func (s *snBench) coldRounds(ctx context.Context, r *snResult) error {
	b := s.bar
	r.loadBefore = loadavg()
	for round := 1; round <= b.cfg.N; round++ {
		b.step("cold start, round %d of %d", round, b.cfg.N)
		lazyFirst := round%2 == 1
		for k := range 2 {
			if (k == 0) == lazyFirst {
				row, err := s.coldLazy(ctx, round, r.refs[0])
				if err != nil {
					return err
				}
				r.coldLazy = append(r.coldLazy, row)
				b.logf("lazy round %d: %v", round, row)
			} else {
				row, err := s.coldPlain(ctx, round, r.orig)
				if err != nil {
					return err
				}
				r.coldPlain = append(r.coldPlain, row)
				b.logf("plain round %d: %v", round, row)
			}
		}
	}
	r.loadAfter = loadavg()
	return nil
}

// report returns the markdown report of r.
func (s *snBench) report(r *snResult) string {
	b := s.bar
	var w mdReport
	p := w.p
	p("")
	p("## lazypull-bench snapshotter, %s", time.Now().UTC().Format("2006-01-02 15:04:05 UTC"))
	p("")
	p("Command: `%s` (`make bench-snapshotter`; N=%d, parts %s; root); the run took %.0f s.", b.cfg.Command, b.cfg.N, strings.Join(s.parts, " "), time.Since(b.started).Seconds())
	p("Machine: %s, %s.", machineLine(), memTotal())
	p("Versions: %s (%s; the work tree was at %s when the run started);"+
		" containerd %s, runc %s, docker-registry %s.", b.lazypullVersion(), b.cfg.Lazypull, r.commit,
		debVersion("containerd"), debVersion("runc"), debVersion("docker-registry"))
	p("Images: the python test image (Debian bookworm minbase + python3): original 2 gzip layers,"+
		" %d bytes; converted, %d bytes of lazypull layers; %d variants of the"+
		" converted image, each with one more small layer (tools/addlayer).", r.origBytes, r.lazyBytes, snapshotterImages-1)
	if r.mem != nil {
		reportMemory(&w, r.mem)
	}
	if s.has("cold") {
		s.reportCold(&w, r)
	}
	return w.String()
}

// reportMemory writes the memory bar's section.
func reportMemory(w *mdReport, mem *snMemory) {
	p := w.p
	p("")
	p("### Bar: daemon RSS with %d images mounted <= 64 MiB: %s (%s MiB)", snapshotterImages, mem.verdict, mibOf(mem.rss))
	p("")
	p("One `lazypull snapshotter` and its containerd; for each of the %d images, `lazypull pull`, then"+
		" `ctr run --rm --snapshotter lazypull REF ID python3 -c \"print('image N')\"`. Read from"+
		" /proc/PID/status of the snapshotter 5 s after the last container exited; it then served"+
		" %d FUSE layer mounts (the 2 shared layers once, and each variant's own layer) for"+
		" %d open images, with %d threads; it had fetched %d chunks"+
		" (%.2f MB from the registry, indexes included).", snapshotterImages, mem.fuseMounts, mem.imagesOpen, mem.threads,
		mem.chunks, float64(mem.fetched)/1e6)
	p("")
	p("| | KiB | MiB |")
	p("|---|---|---|")
	p("| VmRSS, at start (no image) | %d | %s |", mem.rssStart, mibOf(mem.rssStart))
	p("| **VmRSS**, %d images | **%d** | **%s** |", snapshotterImages, mem.rss, mibOf(mem.rss))
	p("| of which RssAnon (Go heap, stacks, runtime) | %d | %s |", mem.rssAnon, mibOf(mem.rssAnon))
	p("| of which RssFile (the binary's pages) | %d | %s |", mem.rssFile, mibOf(mem.rssFile))
	p("| VmHWM (peak) | %d | %s |", mem.hwm, mibOf(mem.hwm))
	p("| for reference: Pss (file pages shared with other processes split among them) | %d | %s |", mem.pss, mibOf(mem.pss))
	p("| for reference: VmRSS of its `lazypull keeper` (holds the FUSE connections; a process of its own) | %s | %s |", mem.keeperRSS, mem.keeperRSSMiB)
	p("| for reference: Pss of the keeper (the same binary: most of its pages are the snapshotter's too) | %s | %s |", mem.keeperPss, mem.keeperPssMiB)
	p("")
	p("VmRSS after each image (KiB): %s.", strings.Join(mem.curve, ", "))
	p("")
	p("Go runtime (MiB, runtime.MemStats from the heap profile): HeapAlloc %s, HeapInuse %s,"+
		" HeapReleased %s, Sys %s, NextGC %s. Heap profile, in use at the last GC"+
		" (`go tool pprof -top -sample_index=inuse_space`):", mem.memstat("HeapAlloc"), mem.memstat("HeapInuse"),
		mem.memstat("HeapReleased"), mem.memstat("Sys"), mem.memstat("NextGC"))
	p("")
	p("```")
	w.WriteString(mem.heapTop)
	p("```")
}

// reportCold writes the cold start bar's section.
func (s *snBench) reportCold(w *mdReport, r *snResult) {
	p := w.p
	coldLazy, coldPlain := r.coldLazy, r.coldPlain
	byteRatio := median(column(coldLazy, 4)) / median(column(coldPlain, 4))
	timeRatio := median(column(coldLazy, 2)) / median(column(coldPlain, 2))
	verdictCold := verdict(byteRatio <= 0.25)
	p("")
	p("### Bar: cold `lazypull pull` + `ctr run` fetches far fewer bytes than `ctr image pull` + `ctr run` (taken as <= 0.25x): %s (%.3fx the bytes)", verdictCold, byteRatio)
	p("")
	p("Each round: a fresh containerd root (and for lazypull a fresh snapshotter root and store), daemons"+
		" started before the clock; timed: the pull, then `ctr run --rm` until the container printed"+
		" \"hello from python\" and exited. Bytes: the registry's egress during the timed part (sum of"+
		" http.response.written in its log: manifests, configs, blobs and Range responses), and lazypull's"+
		" own count (fetch.Bytes: the snapshotter's requests, not containerd's manifest and config). Medians"+
		" of %d rounds (min-max), lazy and plain alternating first; loopback registry; page cache not dropped."+
		" Load average (1, 5, 15 min) before: %s; after: %s.", s.cfg.N, r.loadBefore, r.loadAfter)
	p("")
	p("| | pull, s | run, s | total, s | requests | bytes from the registry | lazypull fetch.Bytes | chunks |")
	p("|---|---|---|---|---|---|---|---|")
	p("| `lazypull pull` + `ctr run --snapshotter lazypull` | %s | %s | **%s** | %s | **%s** | %s | %s |",
		mrange(column(coldLazy, 0), "%.3f"), mrange(column(coldLazy, 1), "%.3f"), mrange(column(coldLazy, 2), "%.3f"),
		mrange(column(coldLazy, 3), "%.0f"), mrangeMB(column(coldLazy, 4), " MB"), mrangeMB(column(coldLazy, 5), " MB"), mrange(column(coldLazy, 6), "%.0f"))
	p("| `ctr image pull` + `ctr run` (overlayfs) | %s | %s | **%s** | %s | **%s** | - | - |",
		mrange(column(coldPlain, 0), "%.3f"), mrange(column(coldPlain, 1), "%.3f"), mrange(column(coldPlain, 2), "%.3f"),
		mrange(column(coldPlain, 3), "%.0f"), mrangeMB(column(coldPlain, 4), " MB"))
	p("")
	p("lazypull / plain: bytes %.3fx (medians), wall clock %.2fx.", byteRatio, timeRatio)
}

// variantFile is the content of variant i's /etc/lazypull-variant: a line naming it and
// 3000 random bytes in base64, 76 columns a line.
func variantFile(i int) []byte {
	raw := make([]byte, 3000)
	rand.Read(raw)
	enc := base64.StdEncoding.EncodeToString(raw)
	var w strings.Builder
	fmt.Fprintf(&w, "variant %d\n", i)
	for len(enc) > 76 {
		w.WriteString(enc[:76] + "\n")
		enc = enc[76:]
	}
	w.WriteString(enc + "\n")
	return []byte(w.String())
}

// snMemory is what the memory part read.
type snMemory struct {
	rssStart, rss, hwm, rssAnon, rssFile, pss int64
	threads, fuseMounts, imagesOpen           int
	chunks, fetched                           int64
	keeperRSS, keeperRSSMiB                   string
	keeperPss, keeperPssMiB                   string
	curve                                     []string
	heap, heapTop                             string
	verdict                                   string
}

// memstat is a runtime.MemStats figure of the heap profile's text form, in MiB.
func (m *snMemory) memstat(key string) string {
	for line := range strings.SplitSeq(m.heap, "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[0] == "#" && f[1] == key && f[2] == "=" {
			v, _ := strconv.ParseFloat(f[3], 64)
			return fmt.Sprintf("%.1f", v/1048576)
		}
	}
	return ""
}

var debugAddrRE = regexp.MustCompile(`msg="serving Go profiles" addr=(\S+)`)

func (s *snBench) memory(ctx context.Context, refs []string) (*snMemory, error) {
	if err := s.startNode(ctx, "mem", true, true); err != nil {
		return nil, err
	}
	n := s.node
	var debugAddr string
	deadline := time.Now().Add(10 * time.Second)
	for debugAddr == "" {
		lg, _ := os.ReadFile(n.snLog.Name())
		if m := debugAddrRE.FindSubmatch(lg); m != nil {
			debugAddr = string(m[1])
		} else if time.Now().After(deadline) {
			return nil, fmt.Errorf("the snapshotter did not log its debug address")
		} else {
			time.Sleep(100 * time.Millisecond)
		}
	}
	pid := n.sn.Process.Pid
	m := &snMemory{rssStart: procKiB(pid, "status", "VmRSS")}
	for i, ref := range refs {
		if err := s.pull(ctx, ref); err != nil {
			return nil, err
		}
		out, err := s.ctrRun(ctx, "run", "--rm", "--snapshotter", "lazypull", ref, fmt.Sprintf("mem-%d", i), "python3", "-c", fmt.Sprintf("print('image %d')", i))
		if err != nil {
			return nil, err
		}
		if want := fmt.Sprintf("image %d", i); out != want {
			return nil, fmt.Errorf("container of %s printed %q, want %q", ref, out, want)
		}
		rss := procKiB(pid, "status", "VmRSS")
		m.curve = append(m.curve, strconv.FormatInt(rss, 10))
		s.logf("image %d: VmRSS %d kB", i, rss)
	}
	time.Sleep(5 * time.Second)
	m.rss = procKiB(pid, "status", "VmRSS")
	m.hwm = procKiB(pid, "status", "VmHWM")
	m.rssAnon = procKiB(pid, "status", "RssAnon")
	m.rssFile = procKiB(pid, "status", "RssFile")
	m.threads = int(procKiB(pid, "status", "Threads"))
	m.pss = procKiB(pid, "smaps_rollup", "Pss")
	m.keeperRSS, m.keeperRSSMiB, m.keeperPss, m.keeperPssMiB = "-", "-", "-", "-"
	if kpid := keeperPID(n.snRoot); kpid != 0 {
		k := procKiB(kpid, "status", "VmRSS")
		kp := procKiB(kpid, "smaps_rollup", "Pss")
		m.keeperRSS, m.keeperRSSMiB = strconv.FormatInt(k, 10), mibOf(k)
		m.keeperPss, m.keeperPssMiB = strconv.FormatInt(kp, 10), mibOf(kp)
	}
	if raw, err := os.ReadFile("/proc/self/mounts"); err == nil {
		for line := range strings.SplitSeq(string(raw), "\n") {
			f := strings.Fields(line)
			if len(f) >= 3 && f[2] == "fuse.lazypull" && strings.HasPrefix(f[1], n.dir+"/") {
				m.fuseMounts++
			}
		}
	}
	st, err := readStoreStats(n.snStore)
	if err != nil {
		return nil, err
	}
	m.imagesOpen, m.chunks, m.fetched = len(st.Images), st.Store.ChunksFetched, st.Fetch.Bytes
	heap, err := httpGet(ctx, "http://"+debugAddr+"/debug/pprof/heap?debug=1")
	if err != nil {
		return nil, err
	}
	m.heap = string(heap)
	pb, err := httpGet(ctx, "http://"+debugAddr+"/debug/pprof/heap")
	if err != nil {
		return nil, err
	}
	pbFile := filepath.Join(s.work, "heap.pb.gz")
	if err := os.WriteFile(pbFile, pb, 0o644); err != nil {
		return nil, err
	}
	if top, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-sample_index=inuse_space", "-nodecount=12", s.cfg.Lazypull, pbFile).Output(); err == nil {
		on := false
		for line := range strings.SplitSeq(string(top), "\n") {
			if !on && strings.HasPrefix(strings.TrimSpace(line), "flat") {
				on = true
			}
			if on {
				m.heapTop += line + "\n"
			}
		}
		m.heapTop = strings.TrimRight(m.heapTop, "\n") + "\n"
	}
	m.verdict = verdict(m.rss <= snapshotterBarKiB)
	s.logf("VmRSS %d kB, VmHWM %d kB (bar %d kB): %s", m.rss, m.hwm, snapshotterBarKiB, m.verdict)
	return m, s.stopNode()
}

func httpGet(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

// coldLazy is one lazy round: pull_s run_s total_s requests egress fetch.Bytes chunks.
func (s *snBench) coldLazy(ctx context.Context, r int, ref string) ([]float64, error) {
	if err := s.startNode(ctx, fmt.Sprintf("cold-lazy-%d", r), true, false); err != nil {
		return nil, err
	}
	row, err := s.timedStart(ctx, "lazy", func() error { return s.pull(ctx, ref) },
		"run", "--rm", "--snapshotter", "lazypull", ref, fmt.Sprintf("cold-lazy-%d", r))
	if err != nil {
		return nil, err
	}
	// The snapshotter writes its figures every 2 s: wait for a write after the run.
	statsWrittenAfter(s.node.snStore, time.Now(), 6*time.Second)
	st, err := readStoreStats(s.node.snStore)
	if err != nil {
		return nil, err
	}
	row = append(row, float64(st.Fetch.Bytes), float64(st.Store.ChunksFetched))
	return row, s.stopNode()
}

// coldPlain is one plain round: pull_s run_s total_s requests egress.
func (s *snBench) coldPlain(ctx context.Context, r int, orig string) ([]float64, error) {
	if err := s.startNode(ctx, fmt.Sprintf("cold-plain-%d", r), false, false); err != nil {
		return nil, err
	}
	pull := func() error {
		_, err := command(ctx, nil, "ctr", s.ctr("image", "pull", "--plain-http", orig)...)
		return err
	}
	row, err := s.timedStart(ctx, "plain", pull, "run", "--rm", orig, fmt.Sprintf("cold-plain-%d", r))
	if err != nil {
		return nil, err
	}
	return row, s.stopNode()
}

// timedStart is a round's timed part: pull, then `ctr` with run's arguments, which must
// print the python image's line. It returns pull_s run_s total_s requests egress, the last
// two what the registry served meanwhile; what names the mode in an error.
func (s *snBench) timedStart(ctx context.Context, what string, pull func() error, run ...string) ([]float64, error) {
	mark := fileSize(s.regLog)
	t0 := time.Now()
	if err := pull(); err != nil {
		return nil, err
	}
	t1 := time.Now()
	out, err := s.ctrRun(ctx, run...)
	t2 := time.Now()
	if err != nil {
		return nil, err
	}
	if out != "hello from python" {
		return nil, fmt.Errorf("%s container printed %q", what, out)
	}
	reqs, egress, err := s.egressSince(mark)
	if err != nil {
		return nil, err
	}
	return []float64{t1.Sub(t0).Seconds(), t2.Sub(t1).Seconds(), t2.Sub(t0).Seconds(), float64(reqs), float64(egress)}, nil
}

func memTotal() string {
	raw, _ := os.ReadFile("/proc/meminfo")
	for line := range strings.SplitSeq(string(raw), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
			v, _ := strconv.ParseFloat(f[1], 64)
			return fmt.Sprintf("%.0f GiB", v/1048576)
		}
	}
	return "unknown memory"
}
