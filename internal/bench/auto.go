package bench

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"
)

// autoRepo is the repository of ModeAuto's images, tagged by image name: one repository,
// so that an update's v2 finds the profile a node keeps of v1 (the daemon's "related").
const autoRepo = "bench/auto"

// pushAuto converts im's original image into autoRepo and, when im starts cold in this run
// (cfg.Images), runs it once on a first node whose snapshotter records and pushes its
// start (auto_profile_push), straight from the registry, before the runs: what a node that
// ran the image before leaves for the others. An update's v2 gets no profile of its own.
func pushAuto(ctx context.Context, cfg Config, reg string, im Image) (_ *ProfileInfo, err error) {
	ref := reg + "/" + autoRepo + ":" + im.Name
	if _, err := command(ctx, nil, cfg.Lazypull, "convert", reg+"/bench/"+im.Name+":orig", ref); err != nil {
		return nil, err
	}
	if !slices.Contains(cfg.Images, im.Name) {
		return nil, nil
	}
	n, err := startNodeWith(ctx, cfg.Scripts, cfg.Lazypull, cfg.WorkDir, ModeAuto, "prefetch = true\nauto_profile_push = true\n")
	if err != nil {
		return nil, fmt.Errorf("start a node to record on: %w", err)
	}
	defer func() {
		if e := n.stop(); e != nil && err == nil {
			err = fmt.Errorf("stop the node recorded on: %w", e)
		}
	}()
	if _, err := command(ctx, nil, cfg.Lazypull, "pull", "--address", n.sock(), "--snapshotter-address", n.snSock, "--namespace", namespace, "--plain-http", ref); err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, cfg.StepTimeout)
	_, err = n.runToReadyThen(sctx, "auto-"+im.Name, im, func() {}, "--snapshotter", "lazypull", ref)
	cancel()
	if err != nil {
		return nil, err
	}
	// The recording ends once the start has read nothing new for a while (auto_profile_quiet).
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(n.snapshotterLogAll(), "automatic profile pushed") {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no automatic profile pushed 2 minutes after the start:\n%s", n.snapshotterLog())
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	b, err := os.ReadFile(n.snLog.Name())
	if err != nil {
		return nil, err
	}
	info := &ProfileInfo{}
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.Contains(line, "automatic profile kept") {
			_, _ = fmt.Sscanf(field(line, "files="), "%d", &info.Files)
			_, _ = fmt.Sscanf(field(line, "bytes="), "%d", &info.Bytes)
		}
	}
	return info, nil
}

// field is the value of key (as "key=") in a log line; "" if absent.
func field(line, key string) string {
	_, v, ok := strings.Cut(line, " "+key)
	if !ok {
		return ""
	}
	v, _, _ = strings.Cut(v, " ")
	return v
}

// snapshotterLogAll is the snapshotter's whole log.
func (n *node) snapshotterLogAll() string {
	if n.snLog == nil {
		return ""
	}
	b, _ := os.ReadFile(n.snLog.Name())
	return string(b)
}
