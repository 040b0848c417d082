package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	versionapi "github.com/containerd/containerd/api/services/version/v1"
	ptypes "github.com/containerd/containerd/v2/pkg/protobuf/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// A snapshotter that containerd never calls does nothing and says nothing: the pods run on
// overlayfs, every layer downloaded. The usual cause is containerd's config, whose format
// changed with containerd 2 (config version 3: CRI's snapshotter moved to
// [plugins.'io.containerd.cri.v1.images']); containerd 2 migrates a version 2 config, but
// drops its CRI snapshotter when the config has no containerd.runtimes table, as README's
// version 2 snippet has not. So the snapshotter reads containerd's config and, once
// containerd answers at the address the config names, asks its version and says in one
// warning why containerd will not call it (or, at info, that it will). The files a config
// imports are not read.

// containerdCheckEvery is how often the snapshotter looks again for containerd's config and
// containerd itself until both are there (containerd starts after the snapshotter).
const containerdCheckEvery = 2 * time.Second

// watchContainerd checks containerd's config at path against the snapshotter serving on
// address, once containerd answers: it logs one line, then returns. Until then it looks
// again every `every`, and returns with ctx.
func watchContainerd(ctx context.Context, log *slog.Logger, path, address string, every time.Duration) {
	for {
		if checkContainerd(ctx, log, path, address) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}

// checkContainerd makes one attempt; it reports whether it logged its verdict.
func checkContainerd(ctx context.Context, log *slog.Logger, path, address string) bool {
	c, err := readContainerdConfig(path)
	if errors.Is(err, os.ErrNotExist) {
		return false // not written yet, or containerd not installed yet
	}
	if err != nil {
		log.Warn("containerd's config: cannot check whether containerd calls this snapshotter", "config", path, "err", err)
		return true
	}
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	v, err := containerdVersion(qctx, c.address())
	if err != nil {
		return false // containerd not up (yet)
	}
	if problems := c.problems(v, address); len(problems) > 0 {
		log.Warn("containerd will not use this snapshotter as configured", "config", path, "containerd", v,
			"problems", strings.Join(problems, "; "))
	} else {
		log.Info("containerd's config uses this snapshotter", "config", path, "containerd", v, "plugin", c.proxyName(address))
	}
	return true
}

// containerdVersion asks containerd at sock for its version ("2.4.2+unknown", "1.6.20~ds1").
func containerdVersion(ctx context.Context, sock string) (string, error) {
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	r, err := versionapi.NewVersionClient(conn).Version(ctx, &ptypes.Empty{})
	if err != nil {
		return "", fmt.Errorf("containerd at %s: version: %w", sock, err)
	}
	return r.Version, nil
}

// containerdConfig is containerd's config.toml, as a tree.
type containerdConfig struct {
	version int // 1 when the file does not say, as containerd takes it
	tree    map[string]any
}

func readContainerdConfig(path string) (*containerdConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseContainerdConfig(string(b))
}

func parseContainerdConfig(text string) (*containerdConfig, error) {
	c := &containerdConfig{version: 1, tree: map[string]any{}}
	if _, err := toml.Decode(text, &c.tree); err != nil {
		return nil, err
	}
	if v, ok := c.tree["version"].(int64); ok {
		c.version = int(v)
	}
	return c, nil
}

// get returns the value at the path of keys, or nil.
func (c *containerdConfig) get(keys ...string) any {
	var v any = c.tree
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func (c *containerdConfig) str(keys ...string) (string, bool) {
	s, ok := c.get(keys...).(string)
	return s, ok
}

// address is the socket containerd serves its API on.
func (c *containerdConfig) address() string {
	if a, ok := c.str("grpc", "address"); ok && a != "" {
		return a
	}
	if a, ok := c.str("plugins", "io.containerd.server.v1.grpc", "address"); ok && a != "" { // version 4
		return a
	}
	return "/run/containerd/containerd.sock"
}

// proxyName is the name of the snapshot proxy plugin at address, or "".
func (c *containerdConfig) proxyName(address string) string {
	plugins, _ := c.get("proxy_plugins").(map[string]any)
	for name, p := range plugins {
		p, _ := p.(map[string]any)
		typ, _ := p["type"].(string)
		addr, _ := p["address"].(string)
		if typ == "snapshot" && addr != "" && filepath.Clean(addr) == filepath.Clean(address) {
			return name
		}
	}
	return ""
}

// criDisabled reports whether the config turns containerd's CRI plugin off.
func (c *containerdConfig) criDisabled() bool {
	off, _ := c.get("disabled_plugins").([]any)
	return slices.ContainsFunc(off, func(p any) bool {
		return p == "cri" || p == "io.containerd.grpc.v1.cri" || p == "io.containerd.cri.v1.images"
	})
}

// criV2 is the [plugins."io.containerd.grpc.v1.cri"] table of a version 2 config (plugins.cri
// in version 1).
func (c *containerdConfig) criV2() []string {
	if c.version <= 1 {
		return []string{"plugins", "cri"}
	}
	return []string{"plugins", "io.containerd.grpc.v1.cri"}
}

// criSnapshotter returns the snapshotter containerd major's CRI pulls images with, and
// whether it passes the layers' annotations to it (disable_snapshot_annotations = false),
// as that containerd reads this config. Both default as in containerd: overlayfs, no labels.
func (c *containerdConfig) criSnapshotter(major int) (snapshotter string, labels bool) {
	snapshotter, labels = "overlayfs", false
	take := func(keys ...string) {
		if s, ok := c.str(append(keys, "snapshotter")...); ok && s != "" {
			snapshotter = s
		}
		if d, ok := c.get(append(keys, "disable_snapshot_annotations")...).(bool); ok {
			labels = !d
		}
	}
	v2 := append(c.criV2(), "containerd")
	switch {
	case major < 2:
		take(v2...)
	case c.version >= 3:
		take("plugins", "io.containerd.cri.v1.images")
	default:
		// containerd 2 migrating a version 1 or 2 config: the CRI images plugin's own table,
		// then the old CRI table's snapshotter settings, which the migration moves only
		// when that table has containerd.runtimes (plugins/cri/images/plugin.go,
		// migrateConfig, as of 2.4).
		take("plugins", "io.containerd.cri.v1.images")
		if c.get(append(v2, "runtimes")...) != nil {
			take(v2...)
		}
	}
	return snapshotter, labels
}

// problems lists why containerd (version v) will not call the snapshotter serving on
// address, as this config has it: no proxy plugin there, or a CRI that names the plugin
// somewhere but will not use it, or use it without the layers' labels.
func (c *containerdConfig) problems(v string, address string) []string {
	major := 1
	if strings.HasPrefix(strings.TrimPrefix(v, "v"), "2.") {
		major = 2
	}
	if major < 2 && c.version >= 3 {
		return []string{fmt.Sprintf("config version %d is the format of containerd 2.x, not of containerd %s", c.version, v)}
	}
	name := c.proxyName(address)
	if name == "" {
		p := fmt.Sprintf("no [proxy_plugins] entry of type \"snapshot\" at %s: containerd never calls this snapshotter", address)
		if c.get("imports") != nil {
			p += " (the files this config imports are not read)"
		}
		return []string{p}
	}
	if c.criDisabled() {
		return nil
	}
	// CRI is meant to use the plugin when either format's CRI table names it.
	meant := false
	for _, keys := range [][]string{append(c.criV2(), "containerd"), {"plugins", "io.containerd.cri.v1.images"}} {
		if s, _ := c.str(append(keys, "snapshotter")...); s == name {
			meant = true
		}
	}
	if !meant {
		return nil
	}
	var problems []string
	snapshotter, labels := c.criSnapshotter(major)
	if snapshotter != name {
		problems = append(problems, fmt.Sprintf("containerd's CRI pulls with snapshotter %q, not %q", snapshotter, name))
	}
	if !labels {
		problems = append(problems, "CRI passes no layer annotations to snapshotters (disable_snapshot_annotations is not false): no layer is mounted lazily")
	}
	if len(problems) > 0 {
		if major >= 2 {
			problems = append(problems, fmt.Sprintf("on containerd 2.x write a version = 3 config with [plugins.'io.containerd.cri.v1.images'] snapshotter = %q and disable_snapshot_annotations = false (config version %d here)", name, c.version))
		} else {
			problems = append(problems, fmt.Sprintf("on containerd 1.x set snapshotter = %q and disable_snapshot_annotations = false under [plugins.\"io.containerd.grpc.v1.cri\".containerd]", name))
		}
	}
	return problems
}
