package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// The SOCI mode: AWS's SOCI snapshotter, which lazily loads the original gzip layers through
// a separate index of zTOCs (one per layer of 10 MiB or more, checkpoints every 4 MiB of
// uncompressed data). The image is the SOCI-enabled image `soci-grpc create` makes from the
// original's OCI layout (SOCI index manifest v2: an OCI index of the original manifest,
// annotated with the SOCI index digest, and the SOCI index; the layers are the original's
// blobs), pushed as REG/bench/NAME:soci, pulled with `soci-grpc rpull` and run with
// `ctr run --snapshotter soci`, on `soci-grpc serve` as proxy plugin "soci".
const (
	// ModeSoci: the SOCI snapshotter with SOCI's defaults (v0.16).
	ModeSoci Mode = "soci"

	// sociBinary is the runner the mode needs; scripts/deps.sh builds it into bin/tools from
	// tools/soci-grpc.
	sociBinary = "soci-grpc"
	// sociSnapshotter is the proxy plugin's name, the one soci-grpc rpull asks for.
	sociSnapshotter = "soci"
	sociTag         = "soci"
)

// isSoci reports whether m runs on the SOCI snapshotter.
func isSoci(m Mode) bool { return m == ModeSoci }

// findSoci returns the soci-grpc to run: the repository's bin/tools (next to the scripts
// directory, where scripts/deps.sh builds it), else the one on PATH; "" if none.
func findSoci(scripts string) string {
	p := filepath.Join(filepath.Dir(scripts), "bin", "tools", sociBinary)
	if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		return p
	}
	if p, err := exec.LookPath(sociBinary); err == nil {
		return p
	}
	return ""
}

// sociSkip drops the soci mode from cfg.Modes when soci-grpc is missing, and returns the note
// that says so loudly ("" when nothing is dropped), or an error when no mode is left.
func sociSkip(cfg *Config) (string, error) {
	if !slices.Contains(cfg.Modes, ModeSoci) || findSoci(cfg.Scripts) != "" {
		return "", nil
	}
	var kept []Mode
	for _, m := range cfg.Modes {
		if !isSoci(m) {
			kept = append(kept, m)
		}
	}
	missing := sociBinary + " (neither in bin/tools nor on PATH: `make deps` builds it from tools/soci-grpc)"
	if len(kept) == 0 {
		return "", fmt.Errorf("only the soci mode asked for, and it cannot run: missing %s", missing)
	}
	cfg.Modes = kept
	return "WARNING: soci mode SKIPPED: missing " + missing, nil
}

// sociConfig is the configuration file of the bench's SOCI snapshotter: its own, so that a
// node's /etc/soci-snapshotter-grpc/config.toml never changes a run. It keeps SOCI's defaults:
// SOCI index manifest v2, no prefetch, the background fetch of whole layers 30 s after the
// last layer mount (after ready in every run so far), the artifacts in its own store.
func sociConfig() []byte {
	return []byte(`# Written by lazypull-bench e2e for soci-grpc serve (tools/soci-grpc): SOCI's defaults,
# stated. Registries on loopback speak plain HTTP without a resolver entry.
[pull_modes.soci_v2]
  enable = true
[content_store]
  type = "soci"
`)
}

// startSociNode starts a cold node for the soci mode: soci-grpc serve on a fresh root under a
// new directory in cfg.WorkDir (SOCI's defaults, its artifacts in its own store), then
// containerd with it as proxy plugin "soci". node.stop stops containerd, then the runner by
// its PID with SIGTERM (it unmounts its layers' FUSE mounts), and unmounts what is left.
func startSociNode(ctx context.Context, cfg Config) (*node, error) {
	return startProxyNode(ctx, cfg, proxyPlugin{name: sociSnapshotter, stem: "soci", bin: findSoci(cfg.Scripts),
		binary: sociBinary, config: sociConfig(), args: func(sock, root, config string) []string {
			return []string{"serve", "--address", sock, "--root", root, "--config", config,
				"--namespace", namespace, "--log-level", "info"}
		}})
}

// sociPull pulls ref for the SOCI snapshotter: soci-grpc rpull prepares the layers' snapshots
// with the labels that let the snapshotter mount each from the registry.
func sociPull(ctx context.Context, cfg Config, n *node, ref string) error {
	_, err := command(ctx, nil, findSoci(cfg.Scripts), "rpull", "--address", n.sock(), "--namespace", namespace,
		"--snapshotter", sociSnapshotter, "--plain-http", ref)
	return err
}

// sociArgs are the `ctr run` flags of the soci mode.
func sociArgs() []string { return []string{"--snapshotter", sociSnapshotter} }

// pushSociImages makes and pushes REG/bench/NAME:soci for every image when the soci mode is
// asked for: soci-grpc create on a copy of the original's OCI layout (its blobs hard-linked:
// create adds files and rewrites index.json, never a blob). Nothing here runs through a link.
func pushSociImages(ctx context.Context, cfg Config, reg string, infos []ImageInfo, pg *progress) error {
	if !slices.Contains(cfg.Modes, ModeSoci) {
		return nil
	}
	for _, info := range infos {
		pg.step("SOCI index of " + info.Name + " (soci-grpc create)")
		if err := pushSoci(ctx, cfg, reg, info.Name); err != nil {
			return &StepError{Image: info.Name, Mode: ModeSoci, Step: "SOCI create and push", Err: err, Msg: err.Error()}
		}
	}
	return nil
}

func pushSoci(ctx context.Context, cfg Config, reg, name string) error {
	src := filepath.Join(cfg.ImagesDir, name)
	tmp, err := os.MkdirTemp(cfg.WorkDir, "soci-layout")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	lay := filepath.Join(tmp, name)
	if _, err := command(ctx, nil, "cp", "-al", src, lay); err != nil {
		return err
	}
	for _, f := range []string{"index.json", "oci-layout"} { // files create may rewrite: copies
		if err := os.Remove(filepath.Join(lay, f)); err != nil {
			return err
		}
		if err := copyFile(filepath.Join(src, f), filepath.Join(lay, f)); err != nil {
			return err
		}
	}
	out, err := command(ctx, nil, findSoci(cfg.Scripts), "create", "--layout", lay, "--tag", name,
		"--plain-http", "--push", reg+"/bench/"+name+":"+sociTag)
	if err != nil {
		return err
	}
	if !strings.Contains(out, "soci-index sha256:") {
		return errors.New("soci-grpc create printed no SOCI index: " + out)
	}
	return nil
}
