package bench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// The stargz-snapshotter modes: the original image converted by ctr-remote, pulled with
// `ctr-remote image rpull` (which leaves the layers in the registry, for the stargz
// snapshotter to mount lazily) and run with `ctr run --snapshotter stargz`.
const (
	// ModeEstargz: eStargz as `ctr-remote image convert --estargz --oci` makes it.
	ModeEstargz Mode = "estargz"
	// ModeEstargzOpt: eStargz optimized for the workload by `ctr-remote image optimize --oci`,
	// which runs the image's command and puts the files it read first in each layer, marked
	// for prefetch at mount.
	ModeEstargzOpt Mode = "estargz-opt"
)

const (
	// stargzBinary is the daemon the stargz modes need; scripts/deps.sh builds it into
	// bin/tools from tools/stargz-grpc.
	stargzBinary = "containerd-stargz-grpc"
	// stargzSnapshotter is the proxy plugin's name: the one ctr-remote rpull asks for.
	stargzSnapshotter = "stargz"
)

// isStargz reports whether m runs on the stargz snapshotter.
func isStargz(m Mode) bool { return m == ModeEstargz || m == ModeEstargzOpt }

// stargzTag is the tag of m's image in the bench registry.
func stargzTag(m Mode) string {
	if m == ModeEstargzOpt {
		return "esgz-opt"
	}
	return "esgz"
}

// FindStargz returns the containerd-stargz-grpc to run: the repository's bin/tools (next to
// the scripts directory, where scripts/deps.sh builds it), else the one on PATH; "" if none.
func FindStargz(scripts string) string {
	p := filepath.Join(filepath.Dir(scripts), "bin", "tools", stargzBinary)
	if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		return p
	}
	if p, err := exec.LookPath(stargzBinary); err == nil {
		return p
	}
	return ""
}

// stargzMissing says what the stargz modes lack on this machine, "" when nothing.
func stargzMissing(bin string) string {
	var missing []string
	if bin == "" {
		missing = append(missing, stargzBinary+" (neither in bin/tools nor on PATH: `make deps` builds it from tools/stargz-grpc)")
	}
	if _, err := exec.LookPath("ctr-remote"); err != nil {
		missing = append(missing, "ctr-remote (Debian package stargz-snapshotter: `make deps`)")
	}
	return strings.Join(missing, "; ")
}

// StargzNote says which containerd-stargz-grpc the stargz modes (estargz, estargz-opt) run,
// or, loudly, that they are skipped and why: only when what they need is truly missing.
func StargzNote(bin string) string {
	if m := stargzMissing(bin); m != "" {
		return "WARNING: stargz modes (estargz, estargz-opt) SKIPPED: missing " + m
	}
	return "stargz modes (estargz, estargz-opt) run " + bin + " (tools/stargz-grpc) with ctr-remote"
}

// stargzSkip drops the stargz modes from cfg.Modes when what they need is missing, and
// returns the note that says so ("" when nothing is dropped), or an error when no mode is left.
func stargzSkip(cfg *Config) (string, error) {
	m := stargzMissing(cfg.Stargz)
	if m == "" {
		return "", nil
	}
	var kept []Mode
	for _, x := range cfg.Modes {
		if !isStargz(x) {
			kept = append(kept, x)
		}
	}
	if len(kept) == 0 {
		return "", fmt.Errorf("only stargz modes asked for, and they cannot run: missing %s", m)
	}
	cfg.Modes = kept
	return StargzNote(cfg.Stargz), nil
}

// stargzConfig is the configuration file of the bench's stargz snapshotter: its own, so that
// a node's /etc/containerd-stargz-grpc/config.toml never changes a run. It keeps the
// library's defaults, as the daemon ships: prefetch of the landmarked files at mount (what
// optimized eStargz is made for, up to 10 s), then the background fetch of whole layers once
// no layer has been mounted for 5 s: the link counts it after ready, unless the start takes
// longer than that.
func stargzConfig() []byte {
	return []byte(`# Written by lazypull-bench e2e for containerd-stargz-grpc (tools/stargz-grpc): the library's
# defaults, stated. Registries on loopback speak plain HTTP without a resolver entry.
prefetch_timeout_sec = 10
noprefetch = false
no_background_fetch = false
`)
}

// startStargzNode starts a cold node for a stargz mode: containerd-stargz-grpc on a fresh
// root under a new directory in cfg.WorkDir, then containerd with it as proxy plugin
// "stargz". node.stop stops both (the daemon by its PID, with SIGTERM: it unmounts its
// layers' FUSE mounts on the way out) and unmounts whatever is left under the directory.
func startStargzNode(ctx context.Context, cfg Config) (*node, error) {
	return startProxyNode(ctx, cfg, proxyPlugin{name: stargzSnapshotter, stem: "sgz", bin: cfg.Stargz,
		binary: stargzBinary, config: stargzConfig(), args: func(sock, root, config string) []string {
			return []string{"--address", sock, "--root", root, "--config", config, "--log-level", "info"}
		}})
}

// proxyPlugin is a snapshotter other than lazypull's that a node runs as containerd's
// proxy plugin.
type proxyPlugin struct {
	name   string // the plugin's name
	stem   string // of its socket, root and config file in the node's directory
	bin    string // the program run
	binary string // its name in errors
	config []byte // its configuration file
	// args returns the program's arguments: serve on sock, keep its state under root,
	// read config.
	args func(sock, root, config string) []string
}

// startProxyNode starts a cold node for p: p on a fresh root under a new directory in
// cfg.WorkDir (its log in snapshotter.log), then containerd with it as proxy plugin
// p.name. node.stop stops containerd, then p by its PID with SIGTERM (it unmounts its
// layers' FUSE mounts), and unmounts whatever is left under the directory.
func startProxyNode(ctx context.Context, cfg Config, p proxyPlugin) (n *node, err error) {
	dir, err := os.MkdirTemp(cfg.WorkDir, "n") // short: unix socket paths are limited to 108 bytes
	if err != nil {
		return nil, err
	}
	n = &node{scripts: cfg.Scripts, lazypull: cfg.Lazypull, dir: dir, ctd: filepath.Join(dir, "ctd")}
	defer func() {
		if err != nil {
			n.stop()
		}
	}()
	n.snSock = filepath.Join(dir, p.stem+".sock")
	n.snRoot = filepath.Join(dir, p.stem)
	config := filepath.Join(dir, p.stem+".toml")
	if err := os.WriteFile(config, p.config, 0o644); err != nil {
		return n, fmt.Errorf("%s config: %w", p.name, err)
	}
	log, err := os.Create(filepath.Join(dir, "snapshotter.log"))
	if err != nil {
		return n, err
	}
	n.snLog = log
	n.sn = exec.Command(p.bin, p.args(n.snSock, n.snRoot, config)...)
	n.sn.Stdout, n.sn.Stderr = log, log
	if err := n.sn.Start(); err != nil {
		return n, fmt.Errorf("start %s: %w", p.bin, err)
	}
	done := make(chan error, 1)
	n.snDone = done
	go func() { done <- n.sn.Wait() }()
	if err := waitSocket(n.snSock, done, 30*time.Second, n.snapshotterLog); err != nil {
		return n, fmt.Errorf("%s: %w", p.binary, err)
	}
	env := []string{"CONTAINERD_PROXY_SNAPSHOTTER=" + n.snSock, "CONTAINERD_PROXY_SNAPSHOTTER_NAME=" + p.name}
	if _, err := command(ctx, env, filepath.Join(cfg.Scripts, "containerd.sh"), "start", n.ctd); err != nil {
		return n, fmt.Errorf("start containerd: %w", err)
	}
	return n, nil
}

// waitSocket waits until the daemon whose Wait result arrives on done serves on sock. On
// failure the error carries the daemon's log tail; done keeps the exit for node.stop.
func waitSocket(sock string, done chan error, limit time.Duration, logTail func() string) error {
	deadline := time.Now().Add(limit)
	for {
		if _, err := os.Stat(sock); err == nil {
			return nil
		}
		select {
		case err := <-done:
			done <- err
			return fmt.Errorf("exited at start (%v):\n%s", err, logTail())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no socket %s after %v:\n%s", sock, limit, logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stargzPull pulls ref for the stargz snapshotter: ctr-remote resolves the image and prepares
// its layers' snapshots with the labels that let the snapshotter mount each layer from the
// registry (the prioritized files of an optimized image are prefetched then).
func stargzPull(ctx context.Context, n *node, ref string) error {
	_, err := command(ctx, nil, "ctr-remote", n.ctr("image", "rpull", "--plain-http", "--snapshotter", stargzSnapshotter, ref)...)
	return err
}

// stargzArgs are the `ctr run` flags of a stargz mode.
func stargzArgs() []string { return []string{"--snapshotter", stargzSnapshotter} }

// pushStargz makes im's eStargz images from REG/bench/NAME:orig and pushes them as
// REG/bench/NAME:esgz and :esgz-opt (the tags of modes), each from the cache when it holds
// a conversion of this very original by this very ctr-remote, else converted (and cached).
// It fills info's eStargz sizes. Conversion needs a containerd: conv starts one on first use
// and returns it; the caller stops it. Nothing here runs through a link: no run counts it.
func pushStargz(ctx context.Context, cfg Config, reg string, info *ImageInfo, modes []Mode, conv func() (*node, error)) error {
	orig := reg + "/bench/" + info.Name + ":orig"
	origDigest, err := manifestDigest(ctx, orig)
	if err != nil {
		return err
	}
	// The binary's own digest: `ctr-remote --version` names the containerd it was built
	// with, not the stargz-snapshotter release that converts.
	ctrRemote, err := fileDigest("ctr-remote")
	if err != nil {
		return err
	}
	pulled := false
	for _, m := range modes {
		tag := stargzTag(m)
		dst := reg + "/bench/" + info.Name + ":" + tag
		args := stargzConvertArgs(m)
		if m == ModeEstargzOpt {
			args = append(args, optimizeCmdArgs(info.Cmd)...)
		}
		key := stargzCacheKey(origDigest, ctrRemote, args)
		cache := filepath.Join(cfg.ImagesDir, "stargz", info.Name+"-"+tag)
		hit, err := pushCached(ctx, cache, key, tag, dst)
		if err != nil {
			return err
		}
		if !hit {
			n, err := conv()
			if err != nil {
				return fmt.Errorf("converter containerd: %w", err)
			}
			if !pulled {
				if _, err := command(ctx, nil, "ctr", n.ctr("image", "pull", "--plain-http", orig)...); err != nil {
					return err
				}
				pulled = true
			}
			if _, err := command(ctx, nil, "ctr-remote", n.ctr(append(append([]string{"image"}, args...), orig, dst)...)...); err != nil {
				return err
			}
			if _, err := command(ctx, nil, "ctr", n.ctr("image", "push", "--plain-http", dst)...); err != nil {
				return err
			}
			if err := saveCache(ctx, cache, key, tag, dst); err != nil {
				cfg.Log.Warn("cache the eStargz image", "image", dst, "err", err)
			}
		}
		size, err := imageBytes(ctx, dst)
		if err != nil {
			return err
		}
		if m == ModeEstargzOpt {
			info.EstargzOptBytes = size
		} else {
			info.EstargzBytes = size
		}
	}
	return nil
}

// stargzConvertArgs is the ctr-remote image subcommand making m's image: eStargz with
// ctr-remote's defaults, OCI media types (eStargz needs them for its annotations).
// optimize runs the image's own Cmd, the workload, in a container to learn what it reads.
func stargzConvertArgs(m Mode) []string {
	if m == ModeEstargzOpt {
		return []string{"optimize", "--oci"}
	}
	return []string{"convert", "--estargz", "--oci"}
}

// optimizeCmdArgs are the `ctr-remote image optimize` flags running cmd (a user's command)
// instead of the image's own; none when cmd is empty.
func optimizeCmdArgs(cmd []string) []string {
	if len(cmd) == 0 {
		return nil
	}
	entry, _ := json.Marshal(cmd[:1])
	rest, _ := json.Marshal(append([]string{}, cmd[1:]...))
	return []string{"--entrypoint", string(entry), "--args", string(rest)}
}

// stargzCacheKey names a conversion: of which original manifest, by which ctr-remote (its
// binary's digest), how.
func stargzCacheKey(origDigest, ctrRemote string, args []string) string {
	h := sha256.Sum256([]byte(origDigest + "\n" + ctrRemote + "\n" + strings.Join(args, " ")))
	return hex.EncodeToString(h[:8])
}

// fileDigest is the sha256 of the executable cmd found on PATH.
func fileDigest(cmd string) (string, error) {
	p, err := exec.LookPath(cmd)
	if err != nil {
		return "", err
	}
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// stargzCacheFile is the cache entry's record: the key, then the converted manifest's
// digest, which pushing from the cache must reproduce.
const stargzCacheFile = ".stargz-key"

// pushCached pushes the cached conversion in dir (an OCI layout, tag) to dst when its key
// matches, checking that the registry then has the very manifest that was cached.
func pushCached(ctx context.Context, dir, key, tag, dst string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(dir, stargzCacheFile))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("eStargz cache: %w", err)
	}
	k, want, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	if k != key {
		return false, nil
	}
	if _, err := command(ctx, nil, "skopeo", "copy", "--quiet", "--dest-tls-verify=false", "oci:"+dir+":"+tag, "docker://"+dst); err != nil {
		return false, fmt.Errorf("push the cached eStargz image: %w", err)
	}
	got, err := manifestDigest(ctx, dst)
	if err != nil {
		return false, err
	}
	if got != want {
		return false, fmt.Errorf("eStargz cache %s: pushed as %s, cached as %s (remove the directory to convert again)", dir, got, want)
	}
	return true, nil
}

// saveCache copies dst into the cache as an OCI layout in dir, written aside and renamed, so
// that a concurrent bench never reads half an entry.
func saveCache(ctx context.Context, dir, key, tag, dst string) error {
	digest, err := manifestDigest(ctx, dst)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".tmp-"+filepath.Base(dir))
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if _, err := command(ctx, nil, "skopeo", "copy", "--quiet", "--src-tls-verify=false", "docker://"+dst, "oci:"+tmp+":"+tag); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, stargzCacheFile), []byte(key+"\n"+digest+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o755); err != nil { // MkdirTemp's 0700, as the layouts beside it
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return os.Rename(tmp, dir)
}

// manifestDigest is the digest of ref's manifest in the (plain-HTTP, loopback) registry.
func manifestDigest(ctx context.Context, ref string) (string, error) {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return "", err
	}
	d, err := remote.Head(r, remote.WithContext(ctx))
	if err != nil {
		return "", fmt.Errorf("head %s: %w", ref, err)
	}
	return d.Digest.String(), nil
}

// imageBytes is the total size of ref's layers.
func imageBytes(ctx context.Context, ref string) (int64, error) {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return 0, err
	}
	img, err := remote.Image(r, remote.WithContext(ctx))
	if err != nil {
		return 0, fmt.Errorf("read back %s: %w", ref, err)
	}
	m, err := img.Manifest()
	if err != nil {
		return 0, fmt.Errorf("read back %s: %w", ref, err)
	}
	var sum int64
	for _, l := range m.Layers {
		sum += l.Size
	}
	return sum, nil
}

// pushStargzImages runs pushStargz for every image when a stargz mode is asked for, with one
// converter containerd for all of them, started only on a cache miss and stopped at the end.
func pushStargzImages(ctx context.Context, cfg Config, reg string, infos []ImageInfo, pg *progress) (err error) {
	var modes []Mode
	for _, m := range cfg.Modes {
		if isStargz(m) {
			modes = append(modes, m)
		}
	}
	if len(modes) == 0 {
		return nil
	}
	var conv *node
	defer func() {
		if conv != nil {
			if e := conv.stop(); e != nil && err == nil {
				err = fmt.Errorf("stop the converter containerd: %w", e)
			}
		}
	}()
	start := func() (*node, error) {
		if conv == nil {
			n, err := startNode(ctx, cfg.Scripts, cfg.Lazypull, cfg.WorkDir, ModePlain)
			if err != nil {
				return nil, err
			}
			conv = n
		}
		return conv, nil
	}
	for i := range infos {
		pg.step("eStargz images of " + infos[i].Name + " (ctr-remote; cached after the first time)")
		if err := pushStargz(ctx, cfg, reg, &infos[i], modes, start); err != nil {
			return &StepError{Image: infos[i].Name, Step: "eStargz convert and push", Err: err, Msg: err.Error()}
		}
	}
	return nil
}

// stargzRef is the summary every mode of one image and link is compared with as "stargz":
// optimized eStargz, stargz-snapshotter at its best, when it ran, else eStargz; nil if neither.
func stargzRef(group []Summary) *Summary {
	var ref *Summary
	for i := range group {
		switch group[i].Mode {
		case ModeEstargzOpt:
			return &group[i]
		case ModeEstargz:
			ref = &group[i]
		}
	}
	return ref
}

// stargzRatios sets VsStargz and RequestsVsStargz of the summaries of one image and link.
func stargzRatios(group []Summary) {
	ref := stargzRef(group)
	if ref == nil {
		return
	}
	total, reqs := ref.Total.Median, ref.Requests.Median
	for i := range group {
		if total > 0 && group[i].Total.Median > 0 {
			group[i].VsStargz = total / group[i].Total.Median
		}
		if reqs > 0 {
			group[i].RequestsVsStargz = group[i].Requests.Median / reqs
		}
	}
}

// stargzFootnote explains the stargz columns of the tables.
const stargzFootnote = "stargz = stargz-snapshotter with optimized eStargz (estargz-opt) where it ran, else with eStargz: x faster than stargz = its median total / this one's; requests / stargz = this one's median requests / its. Modes estargz and estargz-opt: ctr-remote image rpull + ctr run --snapshotter stargz, images made by ctr-remote image convert --estargz and image optimize (conversions not timed)."
