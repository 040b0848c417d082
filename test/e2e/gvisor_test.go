package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// gvisorProgram prints the python test image's line, then the kernel release the container
// sees: gVisor reports its own, never the host's.
const gvisorProgram = `import os; print("hello from python"); print(os.uname().release)`

// checkGVisorOutput checks what gvisorProgram printed under gVisor.
func checkGVisorOutput(t *testing.T, out string) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || lines[0] != pythonOutput {
		t.Fatalf("container printed %q, want %q and a kernel release", out, pythonOutput)
	}
	var host unix.Utsname
	if err := unix.Uname(&host); err != nil {
		t.Fatal(err)
	}
	if release := unix.ByteSliceToString(host.Release[:]); lines[1] == release {
		t.Fatalf("the container saw the host's kernel %s: it did not run under gVisor", release)
	}
	t.Logf("kernel release under gVisor: %s", lines[1])
}

// TestGVisorRunsLazyImage: the lazypull python image, pulled with `lazypull pull`, runs under
// gVisor (Debian's runsc) from the lazypull snapshotter, fetching a small fraction of the
// image. containerd drives runsc through its runc shim (ctr --runc-binary), as Docker does:
// the runsc.v1 shim is TestGVisorShim's.
func TestGVisorRunsLazyImage(t *testing.T) {
	e := setup(t)
	tool(t, "runsc")
	const ns = "lazypull-e2e-gvisor"
	s, ref := e.pythonPulled(t, ns)
	// DIR/runsc: runsc with the flags this setup needs (scripts/containerd.sh).
	out := s.ctr(t, ns, "run", "--rm", "--snapshotter", "lazypull", "--runc-binary", filepath.Join(s.containerd, "runsc"),
		ref, fmt.Sprintf("gvisor-%d", os.Getpid()), "python3", "-c", gvisorProgram)
	checkGVisorOutput(t, out)

	m := remoteManifest(t, ref)
	wantFetchedLittle(t, "running python under gVisor", s.store, time.Now(), m)
}

// capSysResource is CAP_SYS_RESOURCE's bit in /proc/PID/status's capability sets.
const capSysResource = 24

// missingCapSysResource says why no process here can have CAP_SYS_RESOURCE, or "" when one can.
func missingCapSysResource(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		hex, ok := strings.CutPrefix(line, "CapBnd:")
		if !ok {
			continue
		}
		set, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
		if err != nil {
			t.Fatalf("/proc/self/status: %q: %v", line, err)
		}
		if set&(1<<capSysResource) != 0 {
			return ""
		}
		return fmt.Sprintf("CAP_SYS_RESOURCE is not in this machine's capability bounding set (CapBnd: %s), "+
			"so containerd-shim-runsc-v1 cannot lower its oom_score_adj to -999 as it insists on "+
			"('failed to set OOM Score on shim: ... permission denied')", strings.TrimSpace(hex))
	}
	t.Fatal("/proc/self/status has no CapBnd line")
	return ""
}

// TestGVisorShim: the lazypull python image under gVisor's own containerd shim, runtime
// io.containerd.runsc.v1, which is what Kubernetes (CRI) needs to run pods under gVisor.
// Debian's runsc package does not ship that shim; it runs when one is on PATH and the
// machine lets it start.
func TestGVisorShim(t *testing.T) {
	e := setup(t)
	tool(t, "runsc")
	var reasons []string
	if _, err := exec.LookPath("containerd-shim-runsc-v1"); err != nil {
		reasons = append(reasons, "containerd-shim-runsc-v1 is not on PATH: Debian's runsc package ships only /usr/bin/runsc")
	}
	if why := missingCapSysResource(t); why != "" {
		reasons = append(reasons, why)
	}
	if len(reasons) > 0 {
		t.Skipf("SKIP %s: gVisor's own shim cannot run on this machine:\n- %s\n"+
			"gVisor itself runs here through containerd's runc shim: TestGVisorRunsLazyImage", t.Name(), strings.Join(reasons, "\n- "))
	}

	ref := e.lazyImage(t, "python")
	s := e.startSnapshotter(t)
	const ns = "lazypull-e2e-gvisor-shim"
	// gVisor's network stack refuses the host's network namespace, which ctr gives it.
	config := filepath.Join(s.dir, "runsc.toml")
	if err := os.WriteFile(config, []byte("[runsc_config]\n  network = \"none\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.pull(t, e.bin, ns, ref)
	out := s.ctr(t, ns, "run", "--rm", "--snapshotter", "lazypull", "--runtime", "io.containerd.runsc.v1", "--runtime-config-path", config,
		ref, fmt.Sprintf("gvisor-shim-%d", os.Getpid()), "python3", "-c", gvisorProgram)
	checkGVisorOutput(t, out)
}
