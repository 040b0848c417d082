package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"github.com/moby/sys/mountinfo"
)

// profileChrootName is the command `lazypull profile --runtime chroot` starts itself as.
const profileChrootName = "profile-chroot"

// profileChrootCommand records a profile with --runtime chroot. `lazypull profile` starts it
// in a mount namespace of its own (CLONE_NEWNS, every mount made private, MS_REC|MS_PRIVATE,
// before anything is mounted: Go's exec does both in the child), so that no mount the
// recording makes (the lazy view, its tmpfs, the overlay, /proc, /dev) is ever in the host's
// namespace, nor propagates to it, and all go with the namespace when the process ends,
// however it ends. It refuses to run in its parent's mount namespace or in one with shared
// mounts.
var profileChrootCommand = &command{
	name:    profileChrootName,
	args:    "[flags] -- REF [CMD ARGS...]",
	summary: "record a profile chrooted, in a mount namespace of its own (started by lazypull profile --runtime chroot)",
	flags:   profileFlagSet,
	run: func(ctx context.Context, e *env, vals any, args []string) error {
		f := vals.(*profileFlags)
		if len(args) == 0 || f.runtime != "chroot" {
			return usagef("started by lazypull profile --runtime chroot only")
		}
		if err := checkPrivateMountNS(); err != nil {
			return err
		}
		return recordProfile(ctx, e, f, args)
	},
}

// recordInNamespace runs profile-chroot with the flags set on f and args, in a mount
// namespace of its own, its output passed on; it returns its exit status as an exitError
// (profile-chroot has said why on stderr). Cancelling ctx asks it to stop (SIGTERM), as an
// interrupt would.
func recordInNamespace(ctx context.Context, e *env, f *profileFlags, args []string) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("record chrooted: %w", err)
	}
	cmd := exec.CommandContext(ctx, self, f.childArgs(profileChrootName, args)...)
	cmd.Stdout, cmd.Stderr = e.stdout, e.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = containerCleanupTimeout
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.Exited() {
		return exitError{ee.ExitCode()}
	}
	if err != nil {
		return fmt.Errorf("record chrooted (%s in a mount namespace of its own): %w", profileChrootName, err)
	}
	return nil
}

// childArgs is the command line of cmd with the flags set on f, then args after "--".
func (f *profileFlags) childArgs(cmd string, args []string) []string {
	out := []string{cmd}
	f.set.Visit(func(fl *flag.Flag) { out = append(out, "-"+fl.Name+"="+fl.Value.String()) })
	return append(append(out, "--"), args...)
}

// checkPrivateMountNS checks that this process is in a mount namespace that is not its
// parent's and that has no shared mount: what it mounts reaches no other namespace.
func checkPrivateMountNS() error {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return fmt.Errorf("mount namespace: %w", err)
	}
	parent, err := os.Readlink("/proc/" + strconv.Itoa(os.Getppid()) + "/ns/mnt")
	if err != nil {
		return fmt.Errorf("parent's mount namespace: %w", err)
	}
	if self == parent {
		return fmt.Errorf("%s runs in its parent's mount namespace (%s): it is started by lazypull profile --runtime chroot in one of its own", profileChrootName, self)
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
