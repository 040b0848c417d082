package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestBadLabels: containerd hands the snapshotter the labels of lazypull layers whose index
// is wrong (a digest it does not have), at garbage (its offset inside the tar stream) or
// missing (the layer blob is a plain one). Each such layer is downloaded and unpacked the
// ordinary way with one warning that names it, the image's good layers are still mounted
// lazily, and the container runs and prints what it should. `lazypull stats` lists the image
// as partly lazy (or not lazy) with why, and lazypull_fallback_layers_total{reason="index"}
// counts each such layer.
func TestBadLabels(t *testing.T) {
	e := setup(t)
	lazy := e.lazyImage(t, "python")
	m := remoteManifest(t, lazy)
	s := e.startSnapshotterWith(t, "metrics_addr = \"127.0.0.1:0\"\n")
	fallbacks := 0
	for i, c := range []struct {
		name    string
		tampers []tamper
		bad     []int // the layers that must take the ordinary path
	}{
		{"wrong index digest", []tamper{wrongIndexDigest(1)}, []int{1}},
		{"index at garbage", []tamper{indexAtGarbage(0)}, []int{0}},
		{"every layer: index at garbage, index missing", []tamper{indexAtGarbage(0), indexMissing(1)}, []int{0, 1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ref := e.tamperedImage(t, lazy, c.tampers...)
			tm := remoteManifest(t, ref)
			ns := fmt.Sprintf("lazypull-e2e-bad-%d", i)
			from := len(s.log.String())
			s.pull(t, e.bin, ns, ref)
			out := s.ctr(t, ns, "run", "--rm", "--snapshotter", "lazypull", ref, fmt.Sprintf("bad-%d-%d", i, os.Getpid()))
			if strings.TrimSpace(out) != pythonOutput {
				t.Fatalf("container printed %q, want %q", out, pythonOutput)
			}
			if remote, all := s.remoteSnapshots(t, ns); remote != len(m.Layers)-len(c.bad) || all != len(m.Layers) {
				t.Errorf("%d remote snapshots of %d; want %d of %d", remote, all, len(m.Layers)-len(c.bad), len(m.Layers))
			}
			w := warnings(s.log.String()[from:])
			if len(w) != len(c.bad) {
				t.Fatalf("%d warnings, want %d (one per bad layer):\n%s", len(w), len(c.bad), strings.Join(w, "\n"))
			}
			for _, l := range c.bad {
				d := tm.Layers[l].Digest.String()
				n := 0
				for _, line := range w {
					if strings.Contains(line, "layer "+d) {
						n++
					}
				}
				if n != 1 {
					t.Errorf("layer %d (%s) named in %d warnings, want 1:\n%s", l, d, n, strings.Join(w, "\n"))
				}
			}
			for _, line := range w {
				t.Logf("warning: %s", line)
			}
			state := "partly lazy"
			if len(c.bad) == len(m.Layers) {
				state = "not lazy"
			}
			want := fmt.Sprintf("%s, %d of %d layers; %d downloaded whole (index)", state, len(m.Layers)-len(c.bad), len(m.Layers), len(c.bad))
			st := e.lazypull(t, "stats", "--store", s.store)
			if st.code != 0 || !strings.Contains(st.stdout, want) {
				t.Errorf("lazypull stats: exit %d, want a line saying %q:\n%s%s", st.code, want, st.stdout, st.stderr)
			}
			fallbacks += len(c.bad)
			if want := fmt.Sprintf(`lazypull_fallback_layers_total{reason="index"} %d`, fallbacks); !strings.Contains(metricsOf(t, s.log.String()), want+"\n") {
				t.Errorf("metrics lack %s:\n%s", want, grepLines(metricsOf(t, s.log.String()), "lazypull_fallback"))
			}
		})
	}
}

// warnings returns the warning lines of a lazypull log.
func warnings(log string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "level=WARN") {
			out = append(out, l)
		}
	}
	return out
}
