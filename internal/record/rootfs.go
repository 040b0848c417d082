package record

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"

	"lazypull/internal/fusefs"
)

// profileRootfs mounts the recording view and, over it, the root file system the workload
// runs in: overlayfs with a tmpfs upper directory (the lazy view is read-only), and with
// procDev /proc and /dev. cleanup undoes what was done, in reverse, also after an error.
func profileRootfs(tmp string, root *fusefs.Root, ref string, procDev bool, log *slog.Logger) (string, func(), error) {
	var undo []func()
	cleanup := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	umount := func(dir string) func() {
		return func() {
			if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
				log.Warn("unmount", "dir", dir, "err", err)
			}
		}
	}
	lower, rw, rootfs := filepath.Join(tmp, "lower"), filepath.Join(tmp, "rw"), filepath.Join(tmp, "root")
	for _, d := range []string{rw, rootfs} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return "", cleanup, err
		}
	}
	srv, err := mountView(lower, root, ref, log)
	if err != nil {
		return "", cleanup, err
	}
	undo = append(undo, func() {
		if err := srv.Unmount(); err != nil {
			log.Warn("unmount", "dir", lower, "err", err)
		}
	})
	if err := syscall.Mount("tmpfs", rw, "tmpfs", 0, "mode=0755"); err != nil {
		return "", cleanup, fmt.Errorf("mount tmpfs at %s: %w", rw, err)
	}
	undo = append(undo, umount(rw))
	upper, work := filepath.Join(rw, "upper"), filepath.Join(rw, "work")
	for _, d := range []string{upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return "", cleanup, err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work)
	if err := syscall.Mount("overlay", rootfs, "overlay", 0, opts); err != nil {
		return "", cleanup, fmt.Errorf("mount overlay at %s: %w", rootfs, err)
	}
	undo = append(undo, umount(rootfs)) // with what is mounted in it: MNT_DETACH takes the tree
	if !procDev {
		return rootfs, cleanup, nil
	}
	// The image's /proc and /dev, resolved in the image, whatever symlinks it has there.
	rd, err := openRoot(rootfs)
	if err != nil {
		return "", cleanup, err
	}
	defer rd.Close()
	for _, m := range []struct {
		src, dir, fstype string
		flags            uintptr
	}{{"proc", "proc", "proc", 0}, {"/dev", "dev", "", syscall.MS_BIND | syscall.MS_REC}} {
		if err := rd.mountOn(m.dir, m.src, m.fstype, m.flags); err != nil {
			return "", cleanup, fmt.Errorf("image %s: %w", ref, err)
		}
	}
	return rootfs, cleanup, nil
}

// mountView makes the directory dir (of the recorder's own) and mounts the recording view
// root of the image ref on it.
func mountView(dir string, root *fusefs.Root, ref string, log *slog.Logger) (*fusefs.Server, error) {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, err
	}
	srv, err := fusefs.Mount(dir, root, fusefs.MountOptions{FSName: "lazypull:" + ref, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", ref, err)
	}
	return srv, nil
}

// runtimeFiles are what the container runtime reads in the rootfs to create a container,
// before the workload starts: containerd resolves the user and, by default, its additional
// groups (oci.WithAdditionalGIDs) from these. A profile recorded with chroot would miss
// them, and each would cost a round trip at every container create.
var runtimeFiles = []string{"etc/passwd", "etc/group"}

// runtimeReads reads runtimeFiles through rootfs, so that the recording has them first.
// A file the image lacks is no error: the runtime does without it too; nor is one that is
// no regular file (a fifo, a symlink to /dev/zero), which is not read, nor more than
// maxRuntimeFile of one.
func runtimeReads(rootfs string, log *slog.Logger) {
	rd, err := openRoot(rootfs)
	if err != nil {
		log.Warn("read what the runtime reads at create", "err", err)
		return
	}
	defer rd.Close()
	for _, f := range runtimeFiles {
		if err := rd.readAll(f, maxRuntimeFile); err != nil {
			log.Warn("read what the runtime reads at create", "file", "/"+f, "err", err)
		}
	}
}

// checkRuntimeFiles checks, before containerd builds the container's spec, that the files
// it and runc read in rootfs to look the user and groups up are absent or plain (see
// rootDir.checkRuntimeFile): neither bounds its reads of them.
func checkRuntimeFiles(rootfs string) error {
	rd, err := openRoot(rootfs)
	if err != nil {
		return err
	}
	defer rd.Close()
	for _, f := range runtimeFiles {
		if err := rd.checkRuntimeFile(f, maxRuntimeFile); err != nil {
			return fmt.Errorf("the runtime looks the user up in it: %w", err)
		}
	}
	return nil
}

// writePrivate writes data to file, readable by its owner only (0600, whatever was there):
// a new file beside it, renamed over it.
func writePrivate(file string, data []byte) error {
	t, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(t.Name()) // after the rename: nothing
	if _, err := t.Write(data); err != nil {
		t.Close()
		return err
	}
	if err := t.Chmod(0o600); err != nil {
		t.Close()
		return err
	}
	if err := t.Close(); err != nil {
		return err
	}
	return os.Rename(t.Name(), file)
}
