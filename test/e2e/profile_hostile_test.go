package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sys/unix"

	"lazypull/internal/testutil"
)

// hostileImage builds an image of one layer, a static program (/pause, from tools/pause)
// plus what craft puts in its root directory, converts it into the registry and returns its
// reference.
func (e *env) hostileImage(t *testing.T, tag string, craft func(root string)) string {
	t.Helper()
	layout := pauseLayout(t, tag, craft)
	ref := fmt.Sprintf("%s/e2e/hostile-%d:%s", e.registry, os.Getpid(), tag)
	e.convert(t, "oci:"+layout+":"+tag, ref)
	return ref
}

// mounts reads this process's mount table (the namespace the tests, and the host, are in)
// from f, /proc/self/mountinfo kept open.
func mounts(t *testing.T, f *os.File) []mount {
	t.Helper()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return parseMounts(string(b))
}

// watchedRun runs cmd until it exits or ctx ends (then it is killed), and meanwhile looks at
// the mount table of this namespace at each of its changes (the kernel flags a change to
// pollers of /proc/self/mountinfo). It returns the output, whether ctx ended first, and every
// mount seen, at any time, for which bad says true.
func watchedRun(t *testing.T, ctx context.Context, cmd *exec.Cmd, bad func(mount) bool) (r result, hung bool, seen []mount) {
	t.Helper()
	mi, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer mi.Close()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	known := map[mount]bool{}
	look := func() {
		for _, m := range mounts(t, mi) {
			if bad(m) && !known[m] {
				known[m] = true
				seen = append(seen, m)
			}
		}
	}
	look()
	var werr error
wait:
	for {
		select {
		case werr = <-done:
			break wait
		case <-ctx.Done():
			hung = true
			_ = cmd.Process.Kill()
			werr = <-done
			break wait
		default:
		}
		// The timeout only lets the loop see the exit: a change wakes it at once.
		fds := []unix.PollFd{{Fd: int32(mi.Fd()), Events: unix.POLLPRI}}
		if n, err := unix.Poll(fds, 100); err == nil && n > 0 {
			look()
		}
	}
	look()
	r = result{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := werr.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if werr != nil {
		r.code = -1
	}
	return r, hung, seen
}

// checkClean: a recording that failed failed with one error line of lazypull's own, not a
// crash.
func checkClean(t *testing.T, r result) {
	t.Helper()
	if r.code != 0 && (r.code != 1 || !strings.Contains(r.stderr, "lazypull: ") || strings.Contains(r.stderr, "panic")) {
		t.Errorf("lazypull profile: exit %d, not a clean failure:\n%s", r.code, r.stderr)
	}
}

// TestProfileChrootHostileImage: recording with --runtime chroot an image whose /dev or
// /proc is a symlink to a directory of the host mounts nothing on that directory, neither
// while it runs nor after, as the host's mount table shows at each of its changes; and no
// mount the recording makes (the lazy view, the overlay) is ever in the host's namespace.
// The recording fails cleanly, naming the symlink.
func TestProfileChrootHostileImage(t *testing.T) {
	e := setup(t)
	for _, dir := range []string{"dev", "proc"} {
		t.Run(dir, func(t *testing.T) {
			host := t.TempDir()
			if err := os.WriteFile(filepath.Join(host, "marker"), []byte("host\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			ref := e.hostileImage(t, dir+"-symlink", func(root string) {
				if err := os.Symlink(host, filepath.Join(root, dir)); err != nil {
					t.Fatal(err)
				}
			})
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			cmd := e.command(e.bin, "profile", "--plain-http", "--runtime", "chroot", "--no-push", "--duration", "5s", ref, "--", "/pause")
			r, hung, seen := watchedRun(t, ctx, cmd, func(m mount) bool {
				// The lazy view is named after the image: other tests' mounts are not.
				return m.point == host || strings.HasPrefix(m.point, host+"/") || m.source == "lazypull:"+ref
			})
			t.Logf("lazypull profile: exit %d\n%s", r.code, r.stderr)
			if hung {
				t.Fatalf("lazypull profile did not finish")
			}
			for _, m := range seen {
				t.Errorf("in the host's mount namespace: %s on %s (%s)", m.source, m.point, m.fstype)
			}
			checkClean(t, r)
			if r.code != 0 && !strings.Contains(r.stderr, "/"+dir+" in the image: it is a symlink to") {
				t.Errorf("the error does not name the image's /%s as a symlink out of it:\n%s", dir, r.stderr)
			}
			if b, err := os.ReadFile(filepath.Join(host, "marker")); err != nil || string(b) != "host\n" {
				t.Errorf("the host directory's file: %q, %v", b, err)
			}
		})
	}
}

// TestProfileHostileRuntimeFiles: an image whose /etc/passwd or /etc/group is a fifo or a
// symlink to /dev/zero (which, chrooted, is the host's /dev/zero) does not hang the recorder,
// chrooted or through containerd: it ends, within the test's deadline, with a profile or
// a clean error. Chrooted, the recorder does not read them (no regular file), and the
// profile it writes with --output is readable by its owner only, even over a file that was
// not.
func TestProfileHostileRuntimeFiles(t *testing.T) {
	e := setup(t)
	for _, tc := range []struct {
		name    string
		passwd  string // "fifo", or a symlink target
		group   string
		runtime string
	}{
		{"chroot passwd fifo group zero", "fifo", "/dev/zero", "chroot"},
		{"chroot passwd zero", "/dev/zero", "", "chroot"},
		{"containerd group fifo", "", "fifo", "containerd"},
		{"containerd passwd zero", "/dev/zero", "", "containerd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ref := e.hostileImage(t, strings.ReplaceAll(tc.name, " ", "-"), func(root string) {
				if err := os.Mkdir(filepath.Join(root, "etc"), 0o755); err != nil {
					t.Fatal(err)
				}
				for file, what := range map[string]string{"passwd": tc.passwd, "group": tc.group} {
					p := filepath.Join(root, "etc", file)
					var err error
					switch what {
					case "":
						err = os.WriteFile(p, []byte("root:x:0:\n"), 0o644)
					case "fifo":
						err = unix.Mkfifo(p, 0o644)
					default:
						err = os.Symlink(what, p)
					}
					if err != nil {
						t.Fatal(err)
					}
				}
			})
			out := filepath.Join(t.TempDir(), "profile.json")
			if err := os.WriteFile(out, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			cmd := e.command(e.bin, "profile", "--plain-http", "--runtime", tc.runtime, "--address", e.containerd,
				"--no-push", "--output", out, "--duration", "3s", ref, "--", "/pause")
			r, hung, _ := watchedRun(t, ctx, cmd, func(mount) bool { return false })
			t.Logf("lazypull profile: exit %d\n%s", r.code, r.stderr)
			if hung {
				t.Fatalf("lazypull profile hangs on the image's /etc/passwd (%s) and /etc/group (%s)", tc.passwd, tc.group)
			}
			checkClean(t, r)
			if tc.runtime == "chroot" {
				if r.code != 0 {
					t.Fatalf("lazypull profile --runtime chroot: exit %d; want a profile", r.code)
				}
				fi, err := os.Stat(out)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode().Perm() != 0o600 || fi.Size() == 0 {
					t.Errorf("--output %s: mode %v, %d bytes; want 0600 and the profile", out, fi.Mode(), fi.Size())
				}
			}
		})
	}
}

// TestProfileKeepsArgumentsLocal: the profile pushed to the registry (and the one written
// with --output, and what `profile show` prints) names the program that ran, not its
// arguments, which here hold a secret; nor does lazypull's log name them.
func TestProfileKeepsArgumentsLocal(t *testing.T) {
	e := setup(t)
	ref := e.profileRepoImage(t, "profile-args")
	secret := fmt.Sprintf("--token=s3cret-%d-%d", os.Getpid(), time.Now().UnixNano())
	script := fmt.Sprintf("print(%q)", profileLine)
	// The secret is in the script, an argument of python3.
	digest, doc := e.recordProfile(t, ref, script+" # "+secret)
	if strings.Contains(string(doc), secret) || strings.Contains(string(doc), "s3cret") {
		t.Errorf("--output carries the argument:\n%s", firstLines(string(doc), 3))
	}
	if !strings.Contains(string(doc), `"command":["python3"]`) {
		t.Errorf("--output does not name the program:\n%.300s", doc)
	}

	// Every blob of the artifact in the registry: its manifest, config, document and pack.
	repo, err := name.NewRepository(strings.SplitN(ref, ":lazy", 2)[0], name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(repo.Digest(digest))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	blobs := map[string][]byte{"manifest": raw}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range layers {
		blobs[fmt.Sprintf("layer %d", i)] = testutil.Compressed(t, l)
	}
	if len(blobs) < 2 {
		t.Fatalf("the profile artifact %s has no layer", digest)
	}
	for what, b := range blobs {
		if bytes.Contains(b, []byte("s3cret")) {
			t.Errorf("the pushed profile's %s carries the argument %s", what, secret)
		}
	}
	show := e.lazypull(t, "profile", "show", "--plain-http", ref)
	if show.code != 0 || strings.Contains(show.stdout, "s3cret") || !strings.Contains(show.stdout, `["python3"]`) {
		t.Errorf("profile show: exit %d; want the program, not its arguments:\n%s", show.code, firstLines(show.stdout, 6))
	}
}
