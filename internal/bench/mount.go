package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// MountConfig is the lazy mount's benchmark (`lazypull-bench mount`, make bench-mount).
type MountConfig struct {
	BarConfig
	// BigBytes is the size of the big image's one file (1 GiB for the bars).
	BigBytes int64
}

// The lazy mount's bars, in one run (root; 4 to 5 minutes on a 2-CPU machine at 1 GiB):
//
//  1. Cold read from the registry: an image with one file of BigBytes random
//     (incompressible) bytes, built with tools/mkimage and converted into a docker-registry
//     on a random loopback port. Each of N rounds mounts the image on a fresh store, drops
//     the page cache and times a read of MNT/bigfile in 1 MiB reads (dd bs=1M), then drops
//     the page cache again and times `curl -s -o /dev/null http://REG/v2/big/blobs/LAYER`
//     (the converted layer blob) and, for reference, curl fetching the same blob in Range
//     requests of the mount's mean request size, one after the other on one connection
//     (what the registry costs per request, without lazypull's work). The mount does more
//     than curl: Range requests, zstd decompression and a sha256 check of every chunk, and
//     writing every chunk to the store. Bar: mount MB/s >= 0.8x curl MB/s (whole blob).
//  2. Reading a file that is complete in the store: once the last round's store holds the
//     whole file (assembled into one object), a new mount opens it through FUSE passthrough.
//     N rounds of 4 reads each, interleaved (ABBA), the page cache dropped before each: of
//     MNT/bigfile, and of the store's object file itself (the same bytes on the same disk;
//     the passthrough backing file); a round's figure is the median of its 4 reads. Then
//     the same with a hot page cache, for reference. Bar: mount >= 0.95x disk.
//  3. Bytes fetched to run `python3 -c 'print(1)'` (chroot into a fresh mount of the python
//     test image, scripts/build-test-image.sh), against the bytes it reads, measured two
//     ways: the data of every FUSE_READ reply on that mount's connection, from the kernel's
//     fuse_request_send/fuse_request_end tracepoints (a private tracefs instance): what the
//     page cache took in, the process's reads and page faults plus the kernel's read-ahead;
//     and an upper bound: the total size of the distinct regular files it opened or
//     executed (strace -e openat,open,execve after the chroot, plus the ELF interpreter).
//     Fetched is the mount's figures (STORE/stats.json) once written after the run:
//     fetch.Bytes (all response bytes from the registry, the indexes included),
//     store.BytesFetched (compressed chunk bytes) and store.Bytes (the store was empty: the
//     uncompressed bytes of the chunks fetched). Bar: fetched <= 1.2x the bytes read; judged
//     on the uncompressed chunk bytes (like for like), the network bytes given as well.
//
// Everything runs in a fresh work directory: the registry (scripts/registry.sh), the stores,
// the mount points. Mounts are stopped with SIGTERM (then `lazypull umount` if still
// mounted), the registry with its script, the tracefs instance removed (and tracefs
// unmounted if this mounted it), and the directory removed, whatever happened. The page
// cache is dropped before every cold read: that slows other work on the machine a moment.
func Mount(ctx context.Context, cfg MountConfig) (err error) {
	if cfg.BigBytes < 1<<20 {
		return fmt.Errorf("the big file must be at least 1 MiB, got %d bytes", cfg.BigBytes)
	}
	b, err := newBar(cfg.BarConfig, "bench-mount", "lazypull-bench-mount.")
	if err != nil {
		return err
	}
	m := &mountBench{bar: b, big: cfg.BigBytes}
	// As before, the mount's exit on the way out is not the bench's result.
	stopMount := func() error { m.stop(); m.traceOff(); return nil }
	return b.execute(func() error { return m.run(ctx) }, stopMount, func() error { return m.reg.stop() })
}

type mountBench struct {
	*bar
	big int64

	reg    *registry
	addr   string
	regPID int
	mnt    *mountProc // the mount running now (one at a time)

	blob      string
	blobBytes int64
	// tracefs: the instance directory, and whether this mounted tracefs.
	traceInst      string
	mountedTracefs bool
}

// mountProc is one `lazypull mount` running in the background.
type mountProc struct {
	cmd        *exec.Cmd
	done       chan error
	dir, store string
	log        string
}

const tracefsDir = "/sys/kernel/tracing"

func (m *mountBench) run(ctx context.Context) error {
	b := m.bar
	commit, reg, err := b.begin(ctx, "go", "curl", "docker-registry", "chroot", "mountpoint", "strace")
	if err != nil {
		return err
	}
	m.reg, m.addr = reg, reg.addr
	if m.regPID, err = readPID(filepath.Join(reg.dir, "registry.pid")); err != nil {
		return err
	}
	r := &mountResult{commit: commit}
	bigSHA, err := m.setupBig(ctx, r)
	if err != nil {
		return err
	}

	b.step("warm up: one untimed curl of the blob (the first read of a file just written is slower on this disk)")
	if err := dropCaches(); err != nil {
		return err
	}
	if _, err := m.curlBlob(ctx); err != nil {
		return err
	}

	r.loadBefore = loadavg()
	store, obj, err := m.coldRounds(ctx, bigSHA, r)
	if err != nil {
		return err
	}
	if err := m.localRounds(ctx, store, obj, r); err != nil {
		return err
	}
	r.loadAfterBig = loadavg()
	if err := m.pythonRounds(ctx, r); err != nil {
		return err
	}
	r.loadAfter = loadavg()

	b.step("report")
	return b.finish(m.report(r))
}

// mountResult is what the mount bench measured, for its report.
type mountResult struct {
	commit                              string
	loadBefore, loadAfterBig, loadAfter string

	// The big image: its conversion's seconds and its layer's media type.
	convertSecs float64
	blobType    string

	// Cold reads, a row per round. coldMount: seconds MB/s lazypull_CPU_s registry_CPU_s
	// requests bytes chunks; coldCurl: curlBlob's; coldRanges: curlRanges'; coldRatio:
	// mount MB/s / curl MB/s, and mount / ranges.
	coldMount, coldCurl, coldRanges, coldRatio [][]float64
	// The Range requests curl replays: their size and count.
	rangeSize int64
	rangeReqs int

	// Local reads through passthrough against the disk, a row per round: mount_s mount_MB/s
	// disk_s disk_MB/s disk_s/mount_s mount_process_read.
	localCold, localHot [][]float64

	// python3 -c 'print(1)': the image's layers and layer blob bytes, whether the FUSE
	// tracepoints were there, and pythonRound's rows.
	pyLayers     int
	pyImageBytes int64
	traceOK      bool
	py           [][]float64
}

// setupBig builds the big image, converts it into the registry and records its layer; it
// returns the big file's sha256.
func (m *mountBench) setupBig(ctx context.Context, r *mountResult) (string, error) {
	b := m.bar
	b.step("build tools/mkimage")
	mkimage, err := b.buildTool(ctx, "mkimage")
	if err != nil {
		return "", err
	}
	b.step("make the %d-byte image (random bytes; mkimage, gzip level 1)", m.big)
	bigSHA, err := m.makeBigImage(ctx, mkimage)
	if err != nil {
		return "", err
	}
	b.step("convert it into the registry")
	t0 := time.Now()
	if _, err := command(ctx, nil, b.cfg.Lazypull, "convert", "--json", "oci:"+filepath.Join(b.work, "big-oci")+":big", m.addr+"/big:lazy"); err != nil {
		return "", err
	}
	r.convertSecs = time.Since(t0).Seconds()
	os.RemoveAll(filepath.Join(b.work, "big-oci"))
	man, err := getManifest(ctx, m.addr, "big", "lazy")
	if err != nil {
		return "", err
	}
	if len(man.Layers) != 1 {
		return "", fmt.Errorf("the converted image has %d layers, want 1", len(man.Layers))
	}
	m.blob, m.blobBytes = man.Layers[0].Digest, man.Layers[0].Size
	r.blobType = man.Layers[0].MediaType
	b.logf("layer %s: %d bytes (%s); conversion took %.1f s", m.blob, m.blobBytes, r.blobType, r.convertSecs)
	return bigSHA, nil
}

// coldRounds runs the cold rounds into r: a read through a fresh mount, then curl of the
// blob whole and in Range requests. It returns the last round's store, and the object in it
// that holds the big file (the mount stopped).
func (m *mountBench) coldRounds(ctx context.Context, bigSHA string, r *mountResult) (store, obj string, err error) {
	b := m.bar
	rangeCfg := filepath.Join(b.work, "ranges.cfg")
	for i := 1; i <= b.cfg.N; i++ {
		b.step("cold round %d of %d: read of bigfile through a fresh mount", i, b.cfg.N)
		store = filepath.Join(b.work, fmt.Sprintf("store-cold-%d", i))
		row, err := m.coldRead(ctx, i, store)
		if err != nil {
			return "", "", err
		}
		r.coldMount = append(r.coldMount, row)
		if i < b.cfg.N {
			if err := m.stop(); err != nil {
				return "", "", err
			}
			os.RemoveAll(store)
			os.RemoveAll(filepath.Join(b.work, fmt.Sprintf("mnt-cold-%d", i)))
		} else {
			b.step("wait until the store holds bigfile as one complete object")
			obj = filepath.Join(store, "objects", bigSHA[:2], bigSHA)
			if err := m.waitObject(obj); err != nil {
				return "", "", err
			}
			if err := m.stop(); err != nil {
				return "", "", err
			}
		}
		if i == 1 {
			// The mount's mean request size, rounded to 64 KiB, for the Range requests curl replays.
			req, reqBytes := row[4], row[5]
			r.rangeSize = max(int64(reqBytes/req/65536+0.5)*65536, 65536)
			if r.rangeReqs, err = m.writeRangeConfig(rangeCfg, r.rangeSize); err != nil {
				return "", "", err
			}
		}
		b.step("cold round %d of %d: curl the layer blob, whole and in %d Range requests of %d bytes", i, b.cfg.N, r.rangeReqs, r.rangeSize)
		if err := m.coldCurls(ctx, rangeCfg, r); err != nil {
			return "", "", err
		}
	}
	return store, obj, nil
}

// coldRead mounts the big image on a fresh store, drops the caches and times a read of
// bigfile through the mount, which it leaves running. Its row: seconds MB/s lazypull_CPU_s
// registry_CPU_s requests bytes chunks.
func (m *mountBench) coldRead(ctx context.Context, i int, store string) ([]float64, error) {
	b := m.bar
	if err := m.start(ctx, m.addr+"/big:lazy", store, filepath.Join(b.work, fmt.Sprintf("mnt-cold-%d", i)), fmt.Sprintf("mount-cold-%d.log", i)); err != nil {
		return nil, err
	}
	base, err := readStoreStats(store)
	if err != nil {
		return nil, err
	}
	if err := dropCaches(); err != nil {
		return nil, err
	}
	c0, _ := b.cpu(m.mnt.cmd.Process.Pid)
	r0, _ := b.cpu(m.regPID)
	secs, n, err := timedRead(filepath.Join(m.mnt.dir, "bigfile"))
	if err != nil {
		return nil, err
	}
	c1, _ := b.cpu(m.mnt.cmd.Process.Pid)
	r1, _ := b.cpu(m.regPID)
	if n != m.big {
		return nil, fmt.Errorf("read %d bytes through the mount, want %d", n, m.big)
	}
	if err := waitStatsTwice(store, time.Now()); err != nil {
		return nil, err
	}
	st, err := readStoreStats(store)
	if err != nil {
		return nil, err
	}
	req, reqBytes := st.Fetch.Requests-base.Fetch.Requests, st.Fetch.Bytes-base.Fetch.Bytes
	b.logf("mount: %.3f s, %.1f MB/s; %d requests for %d bytes", secs, mbps(m.big, secs), req, reqBytes)
	return []float64{secs, mbps(m.big, secs), c1 - c0, r1 - r0, float64(req), float64(reqBytes), float64(st.Store.ChunksFetched)}, nil
}

// waitObject waits, 120 s at most, until the store object obj is the whole big file.
func (m *mountBench) waitObject(obj string) error {
	deadline := time.Now().Add(120 * time.Second)
	for {
		if fi, err := os.Stat(obj); err == nil && fi.Mode().IsRegular() {
			if fi.Size() != m.big {
				return fmt.Errorf("%s is %d bytes, not %d", obj, fi.Size(), m.big)
			}
			return nil
		}
		if m.exited() {
			return fmt.Errorf("lazypull mount exited:\n%s", m.logTail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no complete object %s 120 s after the read (chunks not assembled)", obj)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// coldCurls times curl of the blob, whole and in the Range requests of rangeCfg, each
// after dropping the caches, into r, with the round's ratios to the mount's last read.
func (m *mountBench) coldCurls(ctx context.Context, rangeCfg string, r *mountResult) error {
	if err := dropCaches(); err != nil {
		return err
	}
	c, err := m.curlBlob(ctx)
	if err != nil {
		return err
	}
	r.coldCurl = append(r.coldCurl, c)
	if err := dropCaches(); err != nil {
		return err
	}
	rg, err := m.curlRanges(ctx, rangeCfg)
	if err != nil {
		return err
	}
	r.coldRanges = append(r.coldRanges, rg)
	m.logf("curl: %.1f MB/s whole, %.1f MB/s in ranges", c[1], rg[1])
	// Per round: mount MB/s / curl MB/s, and mount / ranges.
	mr := r.coldMount[len(r.coldMount)-1][1]
	r.coldRatio = append(r.coldRatio, []float64{round2(mr / c[1]), round2(mr / rg[1])})
	return nil
}

// localRounds mounts store again, where obj holds the big file complete, and times cold
// and hot reads of it through the mount's passthrough against reads of obj, into r.
func (m *mountBench) localRounds(ctx context.Context, store, obj string, r *mountResult) error {
	b := m.bar
	b.step("passthrough: mount the same store again")
	if err := m.start(ctx, m.addr+"/big:lazy", store, filepath.Join(b.work, "mnt-local"), "mount-local.log"); err != nil {
		return err
	}
	if lg, _ := os.ReadFile(m.mnt.log); !bytes.Contains(lg, []byte("passthrough=true")) {
		return fmt.Errorf("the mount says the kernel does not offer passthrough")
	}
	if devOf(filepath.Dir(obj)) != devOf(b.work) {
		return fmt.Errorf("the store object is not on the work dir's file system")
	}
	mountFile := filepath.Join(m.mnt.dir, "bigfile")
	b.step("local: one untimed cold read of the object (its first read since it was written)")
	if _, _, err := m.localRead(obj); err != nil {
		return err
	}
	for i := 1; i <= b.cfg.N; i++ {
		b.step("local round %d of %d: 4 cold reads each of MNT/bigfile and of the store object, interleaved", i, b.cfg.N)
		row, err := m.localColdRound(i, mountFile, obj)
		if err != nil {
			return err
		}
		r.localCold = append(r.localCold, row)
	}
	b.step("local, hot page cache: one read of each to warm up, then %d of each, interleaved", b.cfg.N)
	if _, _, err := timedRead(mountFile); err != nil {
		return err
	}
	if _, _, err := timedRead(obj); err != nil {
		return err
	}
	for range b.cfg.N {
		p0 := rchar(m.mnt.cmd.Process.Pid)
		ms, _, err := timedRead(mountFile)
		if err != nil {
			return err
		}
		p1 := rchar(m.mnt.cmd.Process.Pid)
		ds, _, err := timedRead(obj)
		if err != nil {
			return err
		}
		r.localHot = append(r.localHot, []float64{ms, mbps(m.big, ms), ds, mbps(m.big, ds), round2(ds / ms), float64(p1 - p0)})
	}
	b.logf("hot: mount %.1f MB/s, disk %.1f MB/s", median(column(r.localHot, 1)), median(column(r.localHot, 3)))
	if err := m.stop(); err != nil {
		return err
	}
	os.RemoveAll(store)
	os.RemoveAll(filepath.Join(b.work, "mnt-local"))
	return nil
}

// localColdRound is local round i: 4 cold reads each of mountFile and obj, interleaved
// (ABBA, disk first in even rounds). Its row: mount_s mount_MB/s disk_s disk_MB/s
// disk_s/mount_s mount_process_read, the seconds the medians of the round's reads.
func (m *mountBench) localColdRound(i int, mountFile, obj string) ([]float64, error) {
	order := []string{mountFile, obj, obj, mountFile, mountFile, obj, obj, mountFile}
	if i%2 == 0 {
		order = []string{obj, mountFile, mountFile, obj, obj, mountFile, mountFile, obj}
	}
	var rm, rd []float64
	var pread int64
	for _, f := range order {
		s, p, err := m.localRead(f)
		if err != nil {
			return nil, err
		}
		if f == mountFile {
			rm = append(rm, s)
			pread += p
		} else {
			rd = append(rd, s)
		}
	}
	ms, ds := median(rm), median(rd)
	m.logf("mount %.1f MB/s, disk %.1f MB/s (medians of 4: %v / %v s); the mount process read %d bytes meanwhile", mbps(m.big, ms), mbps(m.big, ds), rm, rd, pread)
	return []float64{ms, mbps(m.big, ms), ds, mbps(m.big, ds), round2(ds / ms), float64(pread)}, nil
}

// localRead is one cold read (caches dropped) of f, the mount's file or the object:
// seconds, and the bytes the mount process read meanwhile.
func (m *mountBench) localRead(f string) (float64, int64, error) {
	if err := dropCaches(); err != nil {
		return 0, 0, err
	}
	p0 := rchar(m.mnt.cmd.Process.Pid)
	s, n, err := timedRead(f)
	if err != nil {
		return 0, 0, err
	}
	p1 := rchar(m.mnt.cmd.Process.Pid)
	if n != m.big {
		return 0, 0, fmt.Errorf("read %d bytes of %s, want %d", n, f, m.big)
	}
	return s, p1 - p0, nil
}

// pythonRounds builds and converts the python test image and runs the python rounds into r.
func (m *mountBench) pythonRounds(ctx context.Context, r *mountResult) error {
	b := m.bar
	b.step("build the python test image (scripts/build-test-image.sh)")
	src, err := b.testImage(ctx)
	if err != nil {
		return err
	}
	b.step("convert it into the registry")
	if _, err := command(ctx, nil, b.cfg.Lazypull, "convert", "--json", "oci:"+src+":python", m.addr+"/python:lazy"); err != nil {
		return err
	}
	pyMan, err := getManifest(ctx, m.addr, "python", "lazy")
	if err != nil {
		return err
	}
	r.pyLayers, r.pyImageBytes = len(pyMan.Layers), pyMan.layerBytes()

	b.step("set up a tracefs instance for the FUSE request tracepoints")
	r.traceOK = m.traceOn()
	if !r.traceOK {
		b.logf("no tracefs or no fuse tracepoints (Linux 6.15+): reporting only the strace upper bound")
	}
	for i := 1; i <= b.cfg.N; i++ {
		b.step("python round %d of %d: chroot MNT python3 -c 'print(1)' on a fresh store", i, b.cfg.N)
		row, err := m.pythonRound(ctx, i, r.traceOK)
		if err != nil {
			return err
		}
		r.py = append(r.py, row)
	}
	return nil
}

// report writes the console summary and returns the markdown report of r.
func (m *mountBench) report(r *mountResult) string {
	b := m.bar
	N := b.cfg.N
	fsType, disk := fsOf(b.work)
	var w mdReport
	p := w.p
	p("")
	p("## lazypull-bench mount, %s", time.Now().UTC().Format("2006-01-02 15:04:05 UTC"))
	p("")
	p("Command: `%s` (N=%d, a %d-byte file; root); the run took %.0f s.", b.cfg.Command, N, m.big, time.Since(b.started).Seconds())
	p("Machine: %s; work dir, stores and registry on %s (%s), the same disk.", machineLine(), fsType, disk)
	p("Versions: %s (%s; the work tree was at %s when the run started); registry: Debian's docker-registry %s; %s.",
		b.lazypullVersion(), b.cfg.Lazypull, r.commit, debVersion("docker-registry"), curlVersion())
	p("Load average (1, 5, 15 min) at the start: %s; after the big-file parts: %s; at the end: %s.", r.loadBefore, r.loadAfterBig, r.loadAfter)
	p("Medians of %d rounds, (min-max). MB = 10^6 bytes. Each cold read follows `sync; echo 3 > /proc/sys/vm/drop_caches`.", N)
	p("")
	ratioCold, verdictCold := m.reportCold(&w, r)
	localRatio, verdictLocal := m.reportLocal(&w, r)
	pyHeadline, verdictPy := m.reportPython(&w, r)

	o := b.cfg.Out
	fmt.Fprintln(o)
	fmt.Fprintf(o, "cold read:  curl %.1f MB/s, mount %.1f MB/s: %.2fx (bar >= 0.8: %s); curl in %d ranges %.1f MB/s\n",
		median(column(r.coldCurl, 1)), median(column(r.coldMount, 1)), ratioCold, verdictCold, r.rangeReqs, median(column(r.coldRanges, 1)))
	fmt.Fprintf(o, "local read: mount %.1f MB/s, disk %.1f MB/s: %.2fx (bar >= 0.95: %s); hot %.2fx\n",
		median(column(r.localCold, 1)), median(column(r.localCold, 3)), localRatio, verdictLocal, median(column(r.localHot, 4)))
	fmt.Fprintf(o, "python:     %s (bar <= 1.2: %s)\n", pyHeadline, verdictPy)
	return w.String()
}

// reportCold writes the cold read's section and returns its ratio and verdict.
func (m *mountBench) reportCold(w *mdReport, r *mountResult) (float64, string) {
	p := w.p
	ratioCold := median(column(r.coldRatio, 0))
	ratioRanges := median(column(r.coldRatio, 1))
	// Registry CPU milliseconds per MiB served: whole blob, curl's ranges, the mount's requests.
	mib := float64(m.blobBytes) / 1048576
	msWhole := median(column(r.coldCurl, 3)) * 1000 / mib
	msRange := median(column(r.coldRanges, 2)) * 1000 / mib
	var msMountRounds []float64
	for _, row := range r.coldMount {
		msMountRounds = append(msMountRounds, row[3]*1000/(row[5]/1048576))
	}
	msMount := median(msMountRounds)
	verdictCold := verdict(ratioCold >= 0.8)
	p("### Bar: cold read through the mount >= 0.8x curl of the same blob: %s (%.2fx)", verdictCold, ratioCold)
	p("")
	p("Image: one layer, a file of %d random bytes and a few directories (tools/mkimage), converted"+
		" with `lazypull convert` into the loopback registry in %.1f s: layer blob %d bytes (%s).", m.big, r.convertSecs, m.blobBytes, r.blobType)
	p("Mount: a fresh store, `lazypull mount`, then a read of MNT/bigfile in 1 MiB reads (as `dd bs=1M`), wall clock"+
		" over its %d bytes. It fetches the chunks with HTTP Range requests (%s of them, for"+
		" %s bytes, %s chunks), decompresses each zstd frame,"+
		" checks its sha256 and has it written to the store; curl only moves bytes. curl: `curl -s -o /dev/null"+
		" http://REG/v2/big/blobs/%s`, wall clock of the process over the blob's bytes (and curl's own"+
		" `%%{speed_download}`); the bar is against this. For reference, curl again fetching the whole blob in"+
		" %d Range requests of %d bytes (the mount's mean request size, rounded to 64 KiB),"+
		" one after the other over one keep-alive connection. Each round: the mount, then curl, then the"+
		" ranges, each after dropping the caches; one untimed curl before the rounds.",
		m.big, mrangeInt(column(r.coldMount, 4)), mrangeInt(column(r.coldMount, 5)), mrangeInt(column(r.coldMount, 6)), m.blob, r.rangeReqs, r.rangeSize)
	p("")
	p("| reader | seconds | MB/s | reader CPU s | registry CPU s | registry CPU per MiB |")
	p("|---|---|---|---|---|---|")
	p("| lazy mount, read of bigfile (%d bytes) | %s | %s | %.2f (lazypull mount) | %.2f | %.1f ms |", m.big,
		mrange(column(r.coldMount, 0), "%.3f"), mrange(column(r.coldMount, 1), "%.1f"), median(column(r.coldMount, 2)), median(column(r.coldMount, 3)), msMount)
	p("| curl, the layer blob (%d bytes) | %s | %s (curl says %.1f) | - | %.2f | %.1f ms |", m.blobBytes,
		mrange(column(r.coldCurl, 0), "%.3f"), mrange(column(r.coldCurl, 1), "%.1f"), median(column(r.coldCurl, 2)), median(column(r.coldCurl, 3)), msWhole)
	p("| curl, the same in %d Range requests (reference) | %s | %s | - | %.2f | %.1f ms |", r.rangeReqs,
		mrange(column(r.coldRanges, 0), "%.3f"), mrange(column(r.coldRanges, 1), "%.1f"), median(column(r.coldRanges, 2)), msRange)
	p("")
	p("Mount / curl of the whole blob: **%s** (the bar); mount / curl in"+
		" Range requests of the same size: %sx.", mrange(column(r.coldRatio, 0), "%.2f")+"x", mrange(column(r.coldRatio, 1), "%.2f"))
	p("")
	if verdictCold == "MISSED" {
		p("**The bar is missed** on this run: the mount reads at %.2fx curl's rate. The registry"+
			" spends %.1f ms of CPU per MiB it serves in Range requests of %d bytes, against"+
			" %.1f ms per MiB of the whole blob in one GET: fetched in requests of the size the mount makes,"+
			" the blob comes at %.1f MB/s even to curl, which does nothing with the bytes, and the mount"+
			" reaches %.2fx that. The registry and lazypull share the %d CPUs: during the"+
			" mount's read they used %.2f and %.2f CPU seconds"+
			" in %.3f s of wall clock (medians).", ratioCold, msRange, r.rangeSize, msWhole, median(column(r.coldRanges, 1)),
			ratioRanges, numCPU(), median(column(r.coldMount, 3)), median(column(r.coldMount, 2)), median(column(r.coldMount, 0)))
		p("")
	}
	return ratioCold, verdictCold
}

// reportLocal writes the local read's section and returns its ratio and verdict.
func (m *mountBench) reportLocal(w *mdReport, r *mountResult) (float64, string) {
	p := w.p
	N := m.cfg.N
	localRatio := median(column(r.localCold, 4))
	verdictLocal := verdict(localRatio >= 0.95)
	p("### Bar: sequential read of a fully local file through the mount >= 0.95x local disk: %s (%.2fx)", verdictLocal, localRatio)
	p("")
	p("After round %d above the store holds bigfile as one complete object (its name checked to be the"+
		" sha256 of the bytes written); a new `lazypull mount` of the same store (its log says passthrough=true)"+
		" opens it through FUSE passthrough, with that object as the backing file. Compared: a read of"+
		" MNT/bigfile, and a read of the object file itself (the same bytes on the same disk), 1 MiB reads each. Cold: after one"+
		" untimed read of the object, %d rounds of eight reads, mount, disk, disk, mount, mount, disk, disk,"+
		" mount (disk first in even rounds), each after dropping the caches; a round's time for each is the"+
		" median of its four reads, to damp the outliers of single cold reads."+
		" Hot: %d interleaved reads of each without dropping the caches, after one read of each."+
		" \"Mount process read\" is the growth of the lazypull process's rchar during the reads through the"+
		" mount (summed over a round's four): with passthrough the data never passes through it.", N, N, N)
	p("")
	p("| | mount, MB/s | disk (store object), MB/s | mount / disk | mount process read |")
	p("|---|---|---|---|---|")
	p("| cold (page cache dropped) | %s | %s | **%s** | %s bytes |", mrange(column(r.localCold, 1), "%.1f"), mrange(column(r.localCold, 3), "%.1f"), mrange(column(r.localCold, 4), "%.2f"), mrangeInt(column(r.localCold, 5)))
	p("| hot (in the page cache), for reference | %s | %s | %s | %s bytes |", mrange(column(r.localHot, 1), "%.1f"), mrange(column(r.localHot, 3), "%.1f"), mrange(column(r.localHot, 4), "%.2f"), mrangeInt(column(r.localHot, 5)))
	p("")
	if verdictLocal == "MISSED" {
		p("**The bar is missed** on this run: the mount reads at %.2fx the disk's rate.", localRatio)
		p("")
	}
	return localRatio, verdictLocal
}

// reportPython writes the python run's section and returns its headline and verdict.
func (m *mountBench) reportPython(w *mdReport, r *mountResult) (string, string) {
	p := w.p
	// py's columns: fetch_bytes fetch_run fetch_req_run chunks chunk_c chunk_u kread nread
	// nfiles ubytes skipped base_fetch.
	py := r.py
	var pyRatios, pyFrac [][]float64
	div := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	for _, row := range py {
		// fetch/kread, chunk_c/kread, chunk_u/kread, kread/ubytes, chunk_u/ubytes
		pyRatios = append(pyRatios, []float64{div(row[0], row[6]), div(row[4], row[6]), div(row[5], row[6]), div(row[6], row[9]), div(row[5], row[9])})
		pyFrac = append(pyFrac, []float64{row[0] / float64(r.pyImageBytes), row[1] / float64(r.pyImageBytes)})
	}
	verdictPy, pyHeadline := pyVerdict(r.traceOK, pyRatios)
	human := func(v float64) string { return fmt.Sprintf("%.2f MB", v/1e6) }
	mr := func(xs []float64) string {
		s := NewStat(xs)
		if s.Min == s.Max {
			return human(s.Median)
		}
		return fmt.Sprintf("%s (%s-%s)", human(s.Median), human(s.Min), human(s.Max))
	}
	p("### Bar: bytes fetched for `python3 -c 'print(1)'` <= 1.2x the bytes it reads: %s (%s)", verdictPy, pyHeadline)
	p("")
	m.pythonMethod(w, r)
	p("| what | bytes |")
	p("|---|---|")
	p("| fetched from the registry (`fetch.Bytes`), in all | %s |", mr(column(py, 0)))
	p("| of which at mount time (manifest, config, indexes) | %s |", mr(column(py, 11)))
	p("| of which for the run | %s in %s requests |", mr(column(py, 1)), mrangeInt(column(py, 2)))
	p("| chunks fetched, compressed (`store.BytesFetched`) | %s, %s chunks |", mr(column(py, 4)), mrangeInt(column(py, 3)))
	p("| chunks fetched, uncompressed (`store.Bytes` after the run) | %s |", mr(column(py, 5)))
	if r.traceOK {
		p("| read: kernel FUSE_READ replies | %s in %s requests |", mr(column(py, 6)), mrangeInt(column(py, 7)))
	}
	p("| read, upper bound: files opened | %s in %s files |", mr(column(py, 9)), mrangeInt(column(py, 8)))
	p("| image, lazypull layer blobs | %s |", human(float64(r.pyImageBytes)))
	p("")
	p("| ratio | value |")
	p("|---|---|")
	if r.traceOK {
		p("| uncompressed chunks / kernel reads (the bar) | **%sx** |", mrange(column(pyRatios, 2), "%.2f"))
		p("| fetched from the registry, in all / kernel reads | %sx |", mrange(column(pyRatios, 0), "%.2f"))
		p("| compressed chunks / kernel reads | %sx |", mrange(column(pyRatios, 1), "%.2f"))
		p("| kernel reads / files opened | %sx |", mrange(column(pyRatios, 3), "%.2f"))
	}
	p("| uncompressed chunks / files opened | %sx |", mrange(column(pyRatios, 4), "%.2f"))
	p("| fraction of the image fetched, in all | %.1f%% |", 100*median(column(pyFrac, 0)))
	p("| fraction of the image fetched for the run | %.1f%% |", 100*median(column(pyFrac, 1)))
	p("")
	if strings.HasPrefix(verdictPy, "MISSED") {
		p("**The bar is missed** on this run.")
		p("")
	}
	return pyHeadline, verdictPy
}

// pyVerdict judges the python bar on the rounds' ratios (fetch/kread, chunk_c/kread,
// chunk_u/kread, kread/ubytes, chunk_u/ubytes): on the kernel's reads when traceOK, else on
// the upper bound only.
func pyVerdict(traceOK bool, pyRatios [][]float64) (verdictPy, pyHeadline string) {
	rNet := median(column(pyRatios, 0))
	rUnc := median(column(pyRatios, 2))
	rUncUB := median(column(pyRatios, 4))
	if traceOK {
		verdictPy = verdict(rUnc <= 1.2)
		pyHeadline = fmt.Sprintf("uncompressed chunks %.2fx, network bytes %.2fx the bytes the kernel read", rUnc, rNet)
		return verdictPy, pyHeadline
	}
	verdictPy = verdict(rUncUB <= 1.2)
	if verdictPy == "MET" {
		verdictPy = "MET (against the upper bound only)"
	}
	pyHeadline = fmt.Sprintf("uncompressed chunks %.2fx the size of the files opened (no tracepoints)", rUncUB)
	return verdictPy, pyHeadline
}

// pythonMethod writes how the python run is measured.
func (m *mountBench) pythonMethod(w *mdReport, r *mountResult) {
	p := w.p
	p("Image: the python test image (scripts/build-test-image.sh, Debian bookworm minbase + python3),"+
		" converted into the registry: %d layers, %d bytes of lazypull layer blobs."+
		" Each round: a fresh store, `lazypull mount`, `chroot MNT python3 -c 'print(1)'` under strace, then"+
		" the mount's STORE/stats.json once written twice after the run.", r.pyLayers, r.pyImageBytes)
	p("")
	p("- Fetched: `fetch.Bytes`, every response byte from the registry since the mount started (the" +
		" manifest, config and the layers' indexes at mount time included; the part after mounting is" +
		" the run); `store.BytesFetched`, the compressed chunk bytes; `store.Bytes`, what the store holds" +
		" afterwards: the chunks uncompressed, the store having been empty.")
	if r.traceOK {
		p("- Read, tight: the data bytes of every FUSE_READ reply on the mount's connection, from the" +
			" kernel's `fuse:fuse_request_send`/`fuse:fuse_request_end` tracepoints (reply length less its" +
			" 16-byte header). That is what the kernel asked the mount for: the process's read() calls and" +
			" mmap page faults plus the kernel's read-ahead (1 MiB on this mount), so more than the" +
			" process itself touches; a file opened again once complete in the store would be read" +
			" through passthrough, outside this count (its bytes were fetched by the first open).")
	}
	p("- Read, upper bound: the total size of the distinct regular files python3 opened or executed"+
		" with success after the chroot (`strace -f -e trace=openat,open,execve,chroot`; stat in the mount),"+
		" plus its ELF interpreter, which the kernel opens without a syscall of the process; opens"+
		" relative to another directory fd, which could not be placed: %.0f.", median(column(r.py, 10)))
	p("")
}

// makeBigImage writes a rootfs with one file of m.big random bytes and packs it with
// mkimage into WORK/big-oci; it returns the file's sha256.
func (m *mountBench) makeBigImage(ctx context.Context, mkimage string) (string, error) {
	rootfs := filepath.Join(m.work, "big-rootfs")
	for _, d := range []string{"etc", "tmp", "usr/bin", "var/lib/data"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			return "", err
		}
	}
	if err := os.WriteFile(filepath.Join(rootfs, "etc/hostname"), []byte("big\n"), 0o644); err != nil {
		return "", err
	}
	f, err := os.Create(filepath.Join(rootfs, "bigfile"))
	if err != nil {
		return "", err
	}
	var seed [32]byte
	for i := range seed {
		seed[i] = byte(rand.Uint32())
	}
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.NewChaCha8(seed), m.big); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	if _, err := command(ctx, nil, mkimage, "-out", filepath.Join(m.work, "big-oci"), "-tag", "big", "-gzip-level", "1", "-cmd", `["/bigfile"]`, rootfs); err != nil {
		return "", err
	}
	os.RemoveAll(rootfs)
	return hex.EncodeToString(h.Sum(nil)), nil
}

// start runs `lazypull mount` in the background and waits for the mount and for its first
// stats.json (written once the images are open).
func (m *mountBench) start(ctx context.Context, ref, store, dir, logName string) error {
	for _, d := range []string{store, dir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	os.Remove(filepath.Join(store, statsFile))
	lg, err := os.Create(filepath.Join(m.work, logName))
	if err != nil {
		return err
	}
	cmd := exec.Command(m.cfg.Lazypull, "mount", "--plain-http", "--store", store, ref, dir)
	cmd.Stdout, cmd.Stderr = lg, lg
	if err := cmd.Start(); err != nil {
		lg.Close()
		return err
	}
	lg.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	m.mnt = &mountProc{cmd: cmd, done: done, dir: dir, store: store, log: lg.Name()}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if isMountpoint(dir) {
			if st, err := os.Stat(filepath.Join(store, statsFile)); err == nil && st.Size() > 0 {
				return nil
			}
		}
		if m.exited() {
			return fmt.Errorf("lazypull mount exited before mounting:\n%s", m.logTail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lazypull mount: %s not mounted (or no stats.json) after 30 s:\n%s", dir, m.logTail())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// exited reports whether the mount process has ended (keeping its status for stop).
func (m *mountBench) exited() bool {
	select {
	case err := <-m.mnt.done:
		m.mnt.done <- err
		return true
	default:
		return false
	}
}

func (m *mountBench) logTail() string {
	b, _ := os.ReadFile(m.mnt.log)
	return tail(string(b), 25)
}

// stop ends the mount running now: SIGTERM, SIGKILL after 20 s, then `lazypull umount` (or
// umount -l) if still mounted.
func (m *mountBench) stop() error {
	if m.mnt == nil {
		return nil
	}
	mp := m.mnt
	m.mnt = nil
	mp.cmd.Process.Signal(syscall.SIGTERM)
	var err error
	select {
	case err = <-mp.done:
	case <-time.After(20 * time.Second):
		m.logf("lazypull mount (pid %d) still running 20 s after SIGTERM; SIGKILL", mp.cmd.Process.Pid)
		mp.cmd.Process.Kill()
		err = <-mp.done
	}
	if err != nil {
		m.logf("lazypull mount (pid %d) exited with %v", mp.cmd.Process.Pid, err)
	}
	if isMountpoint(mp.dir) {
		if uerr := exec.Command(m.cfg.Lazypull, "umount", mp.dir).Run(); uerr != nil {
			exec.Command("umount", "-l", mp.dir).Run()
		}
	}
	return nil
}

// curlBlob GETs the whole layer blob: seconds, MB/s, curl's own MB/s, registry CPU seconds.
func (m *mountBench) curlBlob(ctx context.Context) ([]float64, error) {
	r0, _ := m.cpu(m.regPID)
	t0 := time.Now()
	out, err := exec.CommandContext(ctx, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{speed_download}",
		"http://"+m.addr+"/v2/big/blobs/"+m.blob).Output()
	secs := time.Since(t0).Seconds()
	r1, _ := m.cpu(m.regPID)
	if err != nil {
		return nil, fmt.Errorf("curl: %w", err)
	}
	f := strings.Fields(string(out))
	if len(f) != 3 || f[0] != "200" || f[1] != strconv.FormatInt(m.blobBytes, 10) {
		return nil, fmt.Errorf("curl: %q (want HTTP 200, %d bytes)", out, m.blobBytes)
	}
	speed, _ := strconv.ParseFloat(f[2], 64)
	return []float64{secs, mbps(m.blobBytes, secs), speed / 1e6, r1 - r0}, nil
}

// writeRangeConfig writes a curl config that fetches the whole blob in Range requests of
// size bytes, one URL each; it returns their number.
func (m *mountBench) writeRangeConfig(path string, size int64) (int, error) {
	var w strings.Builder
	n := 0
	for off := int64(0); off < m.blobBytes; off += size {
		if off > 0 {
			w.WriteString("next\n")
		}
		fmt.Fprintf(&w, "url = \"http://%s/v2/big/blobs/%s\"\nrange = \"%d-%d\"\noutput = \"/dev/null\"\nsilent\nfail\nwrite-out = \"%%{size_download}\\n\"\n",
			m.addr, m.blob, off, off+size-1)
		n++
	}
	return n, os.WriteFile(path, []byte(w.String()), 0o644)
}

// curlRanges fetches the whole blob again in the Range requests of the config, one after
// the other over one keep-alive connection: seconds, MB/s, registry CPU seconds.
func (m *mountBench) curlRanges(ctx context.Context, config string) ([]float64, error) {
	r0, _ := m.cpu(m.regPID)
	t0 := time.Now()
	out, err := exec.CommandContext(ctx, "curl", "-K", config).Output()
	secs := time.Since(t0).Seconds()
	r1, _ := m.cpu(m.regPID)
	if err != nil {
		return nil, fmt.Errorf("curl -K %s: %w", config, err)
	}
	var got int64
	for _, f := range strings.Fields(string(out)) {
		v, _ := strconv.ParseInt(f, 10, 64)
		got += v
	}
	if got != m.blobBytes {
		return nil, fmt.Errorf("curl of the ranges got %d bytes, want %d", got, m.blobBytes)
	}
	return []float64{secs, mbps(m.blobBytes, secs), r1 - r0}, nil
}

// traceOn sets up a private tracefs instance for the FUSE request tracepoints; false when
// the kernel has none.
func (m *mountBench) traceOn() bool {
	if _, err := os.Stat(filepath.Join(tracefsDir, "instances")); err != nil {
		if exec.Command("mount", "-t", "tracefs", "nodev", tracefsDir).Run() == nil {
			m.mountedTracefs = true
		}
	}
	if _, err := os.Stat(filepath.Join(tracefsDir, "instances")); err != nil {
		return false
	}
	if _, err := os.Stat(filepath.Join(tracefsDir, "events/fuse/fuse_request_end")); err != nil {
		return false
	}
	inst := filepath.Join(tracefsDir, "instances", fmt.Sprintf("lazypull-bench-mount-%d", os.Getpid()))
	if err := os.Mkdir(inst, 0o755); err != nil {
		m.logf("tracefs instance: %v", err)
		return false
	}
	m.traceInst = inst
	if err := writeTrace(inst, "buffer_size_kb", "8192"); err != nil {
		m.logf("tracefs instance: %v", err)
		return false
	}
	return true
}

// traceOff removes the tracefs instance, and unmounts tracefs if this mounted it.
func (m *mountBench) traceOff() {
	if m.traceInst != "" {
		writeTrace(m.traceInst, "tracing_on", "0")
		writeTrace(m.traceInst, "events/fuse/enable", "0")
		if err := syscall.Rmdir(m.traceInst); err != nil {
			m.logf("warning: remove %s: %v", m.traceInst, err)
		}
		m.traceInst = ""
	}
	if m.mountedTracefs {
		exec.Command("umount", tracefsDir).Run()
		m.mountedTracefs = false
	}
}

func writeTrace(inst, file, value string) error {
	return os.WriteFile(filepath.Join(inst, file), []byte(value+"\n"), 0)
}

// pythonRound runs python3 -c 'print(1)' in a chroot of a fresh mount of the python image
// and returns fetch_bytes fetch_run fetch_req_run chunks chunk_c chunk_u kread nread nfiles
// ubytes skipped base_fetch.
func (m *mountBench) pythonRound(ctx context.Context, i int, traceOK bool) ([]float64, error) {
	store := filepath.Join(m.work, fmt.Sprintf("store-py-%d", i))
	mnt := filepath.Join(m.work, fmt.Sprintf("mnt-py-%d", i))
	if err := m.start(ctx, m.addr+"/python:lazy", store, mnt, fmt.Sprintf("mount-py-%d.log", i)); err != nil {
		return nil, err
	}
	base, err := readStoreStats(store)
	if err != nil {
		return nil, err
	}
	if traceOK {
		if err := m.traceStart(mnt); err != nil {
			return nil, err
		}
	}
	straceOut := filepath.Join(m.work, fmt.Sprintf("strace-%d.out", i))
	out, err := exec.CommandContext(ctx, "strace", "-f", "-e", "trace=openat,open,execve,chroot", "-o", straceOut,
		"chroot", mnt, "python3", "-c", "print(1)").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "1" {
		return nil, fmt.Errorf("python3 printed %q (%v), want 1", out, err)
	}
	after := time.Now()
	var kread, nread int64
	if traceOK {
		if nread, kread, err = m.traceStop(); err != nil {
			return nil, err
		}
	}
	if err := waitStatsTwice(store, after); err != nil {
		return nil, err
	}
	st, err := readStoreStats(store)
	if err != nil {
		return nil, err
	}

	// The upper bound, from the mount: after the figures above, as it reads more (stat, ELF).
	strace, err := os.ReadFile(straceOut)
	if err != nil {
		return nil, err
	}
	opened, skipped := openedFiles(strace)
	nfiles, ubytes := openedBytes(mnt, opened)
	m.logf("fetched %d bytes (%d for the run, %d requests); chunks %d: %d compressed, %d uncompressed; kernel read %d bytes in %d FUSE_READs; %d files opened, %d bytes",
		st.Fetch.Bytes, st.Fetch.Bytes-base.Fetch.Bytes, st.Fetch.Requests-base.Fetch.Requests, st.Store.ChunksFetched, st.Store.BytesFetched, st.Store.Bytes, kread, nread, nfiles, ubytes)
	row := []float64{float64(st.Fetch.Bytes), float64(st.Fetch.Bytes - base.Fetch.Bytes), float64(st.Fetch.Requests - base.Fetch.Requests),
		float64(st.Store.ChunksFetched), float64(st.Store.BytesFetched), float64(st.Store.Bytes),
		float64(kread), float64(nread), float64(nfiles), float64(ubytes), float64(skipped), float64(base.Fetch.Bytes)}
	if err := m.stop(); err != nil {
		return nil, err
	}
	os.RemoveAll(store)
	os.RemoveAll(mnt)
	return row, nil
}

// traceStart has the tracefs instance trace the FUSE requests on mnt's connection, from
// an empty trace.
func (m *mountBench) traceStart(mnt string) error {
	inst := m.traceInst
	var st syscall.Stat_t
	if err := syscall.Stat(mnt, &st); err != nil {
		return err
	}
	conn := uint64(unix.Major(st.Dev))<<20 | uint64(unix.Minor(st.Dev))
	for _, e := range []string{"fuse_request_send", "fuse_request_end"} {
		if err := writeTrace(inst, "events/fuse/"+e+"/filter", fmt.Sprintf("connection == %d", conn)); err != nil {
			return err
		}
		if err := writeTrace(inst, "events/fuse/"+e+"/enable", "1"); err != nil {
			return err
		}
	}
	if err := writeTrace(inst, "trace", ""); err != nil {
		return err
	}
	return writeTrace(inst, "tracing_on", "1")
}

// traceStop stops the tracing traceStart began and returns the FUSE_READ replies it saw
// and their data bytes; an error if any failed or the trace buffer overran.
func (m *mountBench) traceStop() (nread, kread int64, err error) {
	inst := m.traceInst
	writeTrace(inst, "tracing_on", "0")
	trace, err := os.ReadFile(filepath.Join(inst, "trace"))
	if err != nil {
		return 0, 0, err
	}
	writeTrace(inst, "events/fuse/enable", "0")
	stats, _ := filepath.Glob(filepath.Join(inst, "per_cpu/cpu*/stats"))
	for _, s := range stats {
		b, _ := os.ReadFile(s)
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "overrun: "); ok && strings.TrimSpace(v) != "0" {
				return 0, 0, fmt.Errorf("the trace buffer overran; FUSE reads were lost")
			}
		}
	}
	nread, kread, kerr := fuseReads(trace)
	if kerr != 0 {
		return 0, 0, fmt.Errorf("%d FUSE_READ requests failed", kerr)
	}
	return nread, kread, nil
}

// openedBytes is the number and total size of the distinct regular files among opened
// (paths inside the chroot mnt), python3's ELF interpreter added.
func openedBytes(mnt string, opened []string) (nfiles, ubytes int64) {
	if exe, err := exec.Command("chroot", mnt, "readlink", "-f", "/usr/bin/python3").Output(); err == nil {
		if interp := elfInterp(filepath.Join(mnt, strings.TrimSpace(string(exe)))); interp != "" {
			opened = append(opened, interp)
		}
	}
	statOut, _ := exec.Command("chroot", append([]string{mnt, "stat", "-L", "-c", "%d:%i %s %F", "--"}, opened...)...).Output()
	seen := map[string]bool{}
	for line := range strings.SplitSeq(string(statOut), "\n") {
		f := strings.SplitN(line, " ", 3)
		if len(f) == 3 && f[2] == "regular file" && !seen[f[0]] {
			seen[f[0]] = true
			nfiles++
			n, _ := strconv.ParseInt(f[1], 10, 64)
			ubytes += n
		}
	}
	return nfiles, ubytes
}

// fuseReads reads a trace of the fuse_request_send and fuse_request_end events: the number
// of FUSE_READ replies, their data bytes (a reply's len is its 16-byte header plus the data)
// and how many failed.
func fuseReads(trace []byte) (n, bytes, errs int64) {
	field := func(f []string, name string) string {
		for j := 0; j < len(f)-1; j++ {
			if f[j] == name {
				return f[j+1]
			}
		}
		return ""
	}
	reads := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(string(trace)))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		switch {
		case strings.Contains(line, "fuse_request_send:") && strings.Contains(line, "(FUSE_READ)"):
			reads[field(f, "req")] = true
		case strings.Contains(line, "fuse_request_end:"):
			if reads[field(f, "req")] {
				n++
				l, _ := strconv.ParseInt(field(f, "len"), 10, 64)
				bytes += l - 16
				if e := field(f, "error"); e != "0" && e != "" {
					errs++
				}
			}
		}
	}
	return n, bytes, errs
}

// openedFiles reads `strace -f -e trace=openat,open,execve,chroot` output: the paths of the
// files opened or executed with success after the chroot, relative ones made absolute
// (chroot(1) changes to /), each once; and the opens relative to a directory fd other than
// the cwd, which it cannot place.
func openedFiles(strace []byte) (paths []string, skipped int) {
	on := false
	seen := map[string]bool{}
	for line := range strings.SplitSeq(string(strace), "\n") {
		success := func() bool {
			i := strings.LastIndex(line, " = ")
			if i < 0 {
				return false
			}
			_, err := strconv.ParseUint(line[i+3:], 10, 64)
			return err == nil
		}
		if !on {
			on = strings.Contains(line, "chroot(") && strings.HasSuffix(line, " = 0")
			continue
		}
		if !(strings.Contains(line, "openat(") || strings.Contains(line, "open(") || strings.Contains(line, "execve(")) ||
			strings.Contains(line, "unfinished") || !success() {
			continue
		}
		if strings.Contains(line, "openat(") && !strings.Contains(line, `openat(AT_FDCWD, "`) {
			skipped++
			continue
		}
		a := strings.IndexByte(line, '"')
		if a < 0 {
			continue
		}
		z := strings.IndexByte(line[a+1:], '"')
		if z < 0 {
			continue
		}
		p := line[a+1 : a+1+z]
		if !strings.HasPrefix(p, "/") {
			p = "/" + p
		}
		if !seen[p] {
			seen[p] = true
			paths = append(paths, p)
		}
	}
	return paths, skipped
}

// elfInterp is the program interpreter an ELF file requests, or "".
func elfInterp(path string) string {
	f, err := elf.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b, err := io.ReadAll(p.Open())
			if err == nil {
				return strings.TrimRight(string(b), "\x00")
			}
		}
	}
	return ""
}

// waitStatsTwice waits until store's stats.json was written after t, twice (so that the
// background store writers of the chunks fetched before t have finished).
func waitStatsTwice(store string, t time.Time) error {
	if !statsWrittenAfter(store, t, 6*time.Second) {
		return errors.New("no stats.json written after the run in 6 s")
	}
	if !statsWrittenAfter(store, time.Now(), 6*time.Second) {
		return errors.New("no second stats.json written after the run in 6 s")
	}
	return nil
}

// timedRead reads path in 1 MiB reads (as dd bs=1M): seconds and bytes.
func timedRead(path string) (float64, int64, error) {
	t0 := time.Now()
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var n int64
	for {
		k, err := f.Read(buf)
		n += int64(k)
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, n, err
		}
	}
	return time.Since(t0).Seconds(), n, nil
}

func mbps(bytes int64, secs float64) float64 { return float64(bytes) / 1e6 / secs }

// round2 rounds to 2 decimals, as the ratios are kept.
func round2(x float64) float64 {
	v, _ := strconv.ParseFloat(strconv.FormatFloat(x, 'f', 2, 64), 64)
	return v
}

// rchar is the bytes process pid has read so far (/proc/PID/io).
func rchar(pid int) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "rchar: "); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

func readPID(file string) (int, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

func isMountpoint(dir string) bool { return exec.Command("mountpoint", "-q", dir).Run() == nil }

func devOf(path string) uint64 {
	var st syscall.Stat_t
	if syscall.Stat(path, &st) != nil {
		return 0
	}
	return st.Dev
}

// fsOf is the file system type and source of the file system holding path.
func fsOf(path string) (string, string) {
	out, err := exec.Command("findmnt", "-no", "FSTYPE,SOURCE", "-T", path).Output()
	f := strings.Fields(string(out))
	if err != nil || len(f) < 2 {
		return "unknown", "unknown"
	}
	return f[0], f[1]
}

func curlVersion() string { return programVersion("curl", 1) }

func numCPU() int { return machine().CPUs }
