package record

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// TestCheckPrivateMountNS: profile-chroot runs only in a mount namespace of its own with no
// shared mount, as mountinfo tells: the test binary is started again in a new namespace,
// all private, then with a tmpfs made shared in it.
func TestCheckPrivateMountNS(t *testing.T) {
	if mode := os.Getenv("LAZYPULL_TEST_MOUNTNS"); mode != "" {
		mountNSChild(mode, os.Getenv("LAZYPULL_TEST_MOUNTNS_DIR"))
		return
	}
	if err := CheckPrivateMountNS(); err == nil || !strings.Contains(err.Error(), "parent's mount namespace") {
		t.Errorf("in its parent's mount namespace: %v", err)
	}
	if os.Getuid() != 0 {
		t.Skip("SKIP: a mount namespace needs root")
	}
	for mode, want := range map[string]string{"private": "check: <nil>", "shared": "is shared (shared:"} {
		t.Run(mode, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestCheckPrivateMountNS$")
			cmd.Env = append(os.Environ(), "LAZYPULL_TEST_MOUNTNS="+mode, "LAZYPULL_TEST_MOUNTNS_DIR="+t.TempDir()+"/with space")
			cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), want) {
				t.Fatalf("%v: %s; want %q", err, out, want)
			}
			if mode == "shared" && !strings.Contains(string(out), "/with space is shared") {
				t.Errorf("the shared mount is not named as it is: %s", out)
			}
		})
	}
}

// mountNSChild runs in a new mount namespace: it makes every mount private, in mode
// "shared" mounts a shared tmpfs on dir, and prints what CheckPrivateMountNS says.
func mountNSChild(mode, dir string) {
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		fmt.Println("setup:", err)
		os.Exit(2)
	}
	if mode == "shared" {
		if err := os.Mkdir(dir, 0o755); err != nil {
			fmt.Println("setup:", err)
			os.Exit(2)
		}
		if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
			fmt.Println("setup:", err)
			os.Exit(2)
		}
		if err := syscall.Mount("", dir, "", syscall.MS_SHARED, ""); err != nil {
			fmt.Println("setup:", err)
			os.Exit(2)
		}
	}
	fmt.Println("check:", CheckPrivateMountNS())
	os.Exit(0)
}
