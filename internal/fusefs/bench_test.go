package fusefs

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"lazypull/format"
	"lazypull/internal/testutil"
)

// BenchmarkSequentialRead reads a 256 MiB file whose content is complete on local disk, from
// start to end with 1 MiB reads: from the local file itself, through a mount that hands the
// kernel the local file (passthrough), and through a mount that serves every read itself
// from the local file (FUSE reads; the file's FUSE page cache is dropped before each pass, so
// every byte goes through this process). The local file stays in the page cache: the
// comparison is of the paths, not of the disk.
//
//	go test -run '^$' -bench SequentialRead -benchtime 10x ./internal/fusefs/
func BenchmarkSequentialRead(b *testing.B) {
	requireFUSE(b)
	const size = 256 << 20
	local := benchFile(b, size)
	ix := &format.Index{Entries: []format.Entry{{Name: "big", Type: '0', Mode: 0o644, Size: size}}}

	b.Run("local", func(b *testing.B) {
		readAll(b, local, size, false)
	})
	b.Run("passthrough", func(b *testing.B) {
		root, mnt, srv := mountIndex(b, ix, &localFileContent{path: local})
		if !srv.Passthrough() {
			b.Log("the kernel does not offer FUSE passthrough: this measures FUSE reads of the local file")
		}
		readAll(b, filepath.Join(mnt, "big"), size, false)
		if root.v.passthroughOff.Load() {
			b.Log("passthrough was refused: reads went through FUSE")
		}
	})
	b.Run("fuse", func(b *testing.B) {
		_, mnt, _ := mountIndex(b, ix, fileContent{openBench(b, local)})
		readAll(b, filepath.Join(mnt, "big"), size, true)
	})

	// The three one after the other in each iteration, so that they share the machine's
	// moods (a VM's throughput drifts a lot): MB/s of each, and the mounts' as % of local.
	b.Run("interleaved", func(b *testing.B) {
		_, ptMnt, _ := mountIndex(b, ix, &localFileContent{path: local})
		_, fuMnt, _ := mountIndex(b, ix, fileContent{openBench(b, local)})
		buf := make([]byte, 1<<20)
		var tLocal, tPT, tFUSE, cLocal, cPT time.Duration
		b.ResetTimer()
		for range b.N {
			w, c := timeRead(b, local, size, false, buf)
			tLocal, cLocal = tLocal+w, cLocal+c
			w, c = timeRead(b, filepath.Join(ptMnt, "big"), size, false, buf)
			tPT, cPT = tPT+w, cPT+c
			w, _ = timeRead(b, filepath.Join(fuMnt, "big"), size, true, buf)
			tFUSE += w
		}
		mbps := func(d time.Duration) float64 { return float64(size) * float64(b.N) / d.Seconds() / 1e6 }
		b.ReportMetric(mbps(tLocal), "local-MB/s")
		b.ReportMetric(mbps(tPT), "passthrough-MB/s")
		b.ReportMetric(mbps(tFUSE), "fuse-MB/s")
		b.ReportMetric(100*mbps(tPT)/mbps(tLocal), "passthrough-%local")
		b.ReportMetric(100*mbps(tFUSE)/mbps(tLocal), "fuse-%local")
		// The same by the reading thread's CPU time, which other load on the machine
		// disturbs less than wall time. (Not for FUSE reads: their work is in the server.)
		b.ReportMetric(100*mbps(cPT)/mbps(cLocal), "passthrough-%local-cpu")
		b.ReportMetric(0, "ns/op")
	})
}

// openBench opens path for reading until the benchmark ends.
func openBench(b *testing.B, path string) *os.File {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	return f
}

func readAll(b *testing.B, path string, size int64, dropCache bool) {
	buf := make([]byte, 1<<20)
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		if dropCache {
			b.StopTimer()
			f, err := os.Open(path)
			if err != nil {
				b.Fatal(err)
			}
			if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
				b.Fatal(err)
			}
			f.Close()
			b.StartTimer()
		}
		timeRead(b, path, size, false, buf)
	}
}

// timeRead reads path sequentially with reads of len(buf), and returns how long that took,
// in wall time and in the reading thread's CPU time. dropCache drops the file's page cache
// first (not timed).
func timeRead(b *testing.B, path string, size int64, dropCache bool, buf []byte) (wall, cpu time.Duration) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if dropCache {
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			b.Fatal(err)
		}
	}
	start, startCPU := time.Now(), threadCPU(b)
	var n int64
	for {
		m, err := f.Read(buf)
		n += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	wall, cpu = time.Since(start), threadCPU(b)-startCPU
	if n != size {
		b.Fatalf("read %d bytes, want %d", n, size)
	}
	return wall, cpu
}

// threadCPU returns the CPU time (user and system) of the calling thread.
func threadCPU(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

var (
	benchOnce sync.Once
	benchPath string
)

// benchFile writes a file of size bytes once per process (TestMain removes it), and reads it
// into the page cache.
func benchFile(b *testing.B, size int64) string {
	benchOnce.Do(func() {
		dir, err := os.MkdirTemp("", "fusefs-bench")
		if err != nil {
			b.Fatal(err)
		}
		p := filepath.Join(dir, "big")
		f, err := os.Create(p)
		if err != nil {
			b.Fatal(err)
		}
		block := testutil.RandBytes(7, 1<<20)
		for off := int64(0); off < size; off += int64(len(block)) {
			if _, err := f.Write(block); err != nil {
				b.Fatal(err)
			}
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
		if _, err := os.ReadFile(p); err != nil {
			b.Fatal(err)
		}
		benchPath = p
	})
	if benchPath == "" {
		b.Fatal("no bench file")
	}
	return benchPath
}

// fileContent serves every file from one local file (the benchmark has one file).
type fileContent struct{ f *os.File }

func (c fileContent) ReadAt(ctx context.Context, e *format.Entry, p []byte, off int64) (int, error) {
	return c.f.ReadAt(p, off)
}

// localFileContent also hands out the local file for passthrough.
type localFileContent struct{ path string }

func (c *localFileContent) ReadAt(ctx context.Context, e *format.Entry, p []byte, off int64) (int, error) {
	f, err := os.Open(c.path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.ReadAt(p, off)
}

func (c *localFileContent) LocalFile(e *format.Entry) (*os.File, bool) {
	f, err := os.Open(c.path)
	return f, err == nil
}
