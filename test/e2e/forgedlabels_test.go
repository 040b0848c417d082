package e2e

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"lazypull/internal/daemon"
)

// TestForgedLabelsNotTrusted: containerd passes an image's own containerd.io/snapshot/
// layer annotations on to the snapshotter as labels, CRI's pull too. An image whose
// manifest puts lazypull's labels on its (plain) layer, naming a lazypull image of
// another repository, must not get that image's layer mounted as its own (fetched with
// the node's credentials): the layer is unpacked the ordinary way, with a warning.
func TestForgedLabelsNotTrusted(t *testing.T) {
	e := setup(t)
	tool(t, "crictl")
	private := e.lazyImage(t, "python")
	pm := remoteManifest(t, private)
	pd, err := remoteImage(t, private).Digest()
	if err != nil {
		t.Fatal(err)
	}

	// The attacker's image: one plain layer, annotated with lazypull's labels naming the
	// private image's first layer.
	random1, err := random.Image(2048, 1)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := random1.Layers()
	if err != nil {
		t.Fatal(err)
	}
	forged := map[string]string{
		daemon.LabelImageRef:       private,
		daemon.LabelManifestDigest: pd.String(),
		daemon.LabelLayerDigest:    pm.Layers[0].Digest.String(),
	}
	for k, v := range pm.Layers[0].Annotations {
		forged[daemon.LabelPrefix+k] = v
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{Layer: ls[0], Annotations: forged})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", runtime.GOARCH
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		t.Fatal(err)
	}
	ref := fmt.Sprintf("%s/e2e/forged-%d:1", e.registry, os.Getpid())
	pushImage(t, ref, img)

	s := e.startSnapshotter(t, withCRI(e.registry, e.registry+"/e2e/no-pause:1"))
	s.crictl(t, "pull", ref)
	if remote, all := s.remoteSnapshots(t, criNamespace); remote != 0 || all != 1 {
		t.Errorf("after crictl pull of the forged image: %d remote snapshots of %d; want its one layer unpacked the ordinary way\n%s", remote, all, s.log)
	}
	if !strings.Contains(s.log.String(), "not trusted") {
		t.Errorf("the snapshotter does not say why the labels were refused:\n%s", s.log)
	}
}
