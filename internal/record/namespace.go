package record

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"github.com/moby/sys/mountinfo"
)

// InOwnMountNamespace runs this program again with args, in a mount namespace of its own
// (CLONE_NEWNS; Go's exec also makes every mount in it private, MS_REC|MS_PRIVATE, before
// the program starts), its output going to stdout and stderr. Recording chrooted runs
// there: no mount the recording makes (the lazy view, its tmpfs, the overlay, /proc, /dev)
// is ever in the host's namespace, nor propagates to it, and all go with the namespace
// when the process ends, however it ends. Cancelling ctx asks it to stop (SIGTERM), as an
// interrupt would. A status other than 0 is an *exec.ExitError.
func InOwnMountNamespace(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, self, args...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = containerCleanupTimeout
	return cmd.Run()
}

// CheckPrivateMountNS checks that this process is in a mount namespace that is not its
// parent's and that has no shared mount: what it mounts reaches no other namespace.
func CheckPrivateMountNS() error {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return fmt.Errorf("mount namespace: %w", err)
	}
	parent, err := os.Readlink("/proc/" + strconv.Itoa(os.Getppid()) + "/ns/mnt")
	if err != nil {
		return fmt.Errorf("parent's mount namespace: %w", err)
	}
	if self == parent {
		return fmt.Errorf("runs in its parent's mount namespace (%s), not in one of its own", self)
	}
	ms, err := mountinfo.GetMounts(nil)
	if err != nil {
		return fmt.Errorf("mount namespace: %w", err)
	}
	for _, m := range ms {
		for f := range strings.FieldsSeq(m.Optional) {
			if strings.HasPrefix(f, "shared:") {
				return fmt.Errorf("mount namespace %s: %s is shared (%s): mounts made in it would propagate", self, m.Mountpoint, f)
			}
		}
	}
	return nil
}
