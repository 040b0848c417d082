package pull

import (
	"context"
	"maps"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"lazypull/format"
	"lazypull/internal/daemon"
)

// TestLabelLayersProfile: the pull's --profile goes on every lazypull layer as the
// lazypull.profile label; lazypull labels the image's manifest put on a layer itself
// (lazypull.profile, lazypull.image-ref) are removed, pinned or not, lazypull layer or not.
func TestLabelLayersProfile(t *testing.T) {
	lazy := map[string]string{format.AnnotationIndexDigest: "sha256:" + strings.Repeat("3", 64), daemon.LabelProfile: "sha256:" + strings.Repeat("6", 64)}
	layers := func() []ocispec.Descriptor {
		return []ocispec.Descriptor{
			{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.Digest("sha256:" + strings.Repeat("4", 64)), Annotations: maps.Clone(lazy)},
			{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.Digest("sha256:" + strings.Repeat("5", 64)), Annotations: map[string]string{daemon.LabelProfile: "x", daemon.LabelImageRef: "registry.test/private:1"}},
		}
	}
	manifest := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.Digest("sha256:" + strings.Repeat("7", 64))}
	profDigest := "sha256:" + strings.Repeat("2", 64)
	for _, pin := range []string{profDigest, ""} {
		h := labelLayers("registry.test/app:1", pin, images.HandlerFunc(func(context.Context, ocispec.Descriptor) ([]ocispec.Descriptor, error) {
			return layers(), nil
		}))
		got, err := h.Handle(context.Background(), manifest)
		if err != nil {
			t.Fatal(err)
		}
		if v, ok := got[0].Annotations[daemon.LabelProfile]; pin != "" && v != pin || pin == "" && ok {
			t.Errorf("pin %q: lazy layer's %s = %q; want %q", pin, daemon.LabelProfile, v, pin)
		}
		if got[0].Annotations[daemon.LabelImageRef] == "" {
			t.Errorf("lazy layer not labelled: %v", got[0].Annotations)
		}
		if len(got[1].Annotations) != 0 {
			t.Errorf("pin %q: a layer that is not lazypull's keeps the image's own lazypull labels %v", pin, got[1].Annotations)
		}
	}
}
