package daemon

import (
	"errors"
	"strings"
	"testing"

	"lazypull/format"
)

func TestSnapshotLabelsAndLayerOf(t *testing.T) {
	ann := map[string]string{
		format.AnnotationIndexDigest:      "sha256:1111111111111111111111111111111111111111111111111111111111111111",
		"dev.lazypull.layer.index.offset": "10",
		"other":                           "x",
	}
	const (
		ref      = "127.0.0.1:5000/app:v1"
		manifest = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
		layer    = "sha256:3333333333333333333333333333333333333333333333333333333333333333"
	)
	labels := pulledLabels(ref, manifest, layer, ann)
	if labels[LabelIndexDigest] != ann[format.AnnotationIndexDigest] || labels[LabelPrefix+"dev.lazypull.layer.index.offset"] != "10" {
		t.Errorf("index annotations not carried: %v", labels)
	}
	if _, ok := labels[LabelPrefix+"other"]; ok {
		t.Errorf("unrelated annotation carried: %v", labels)
	}
	gotRef, gotLayer, err := layerOf(labels)
	if err != nil || gotRef != "127.0.0.1:5000/app@"+manifest || gotLayer != layer {
		t.Errorf("layerOf = %q %q %v; want the image by manifest digest and the layer", gotRef, gotLayer, err)
	}
	if l := SnapshotLabels(ref, manifest, layer, map[string]string{"other": "x"}); l != nil {
		t.Errorf("labels for a layer that is not lazy: %v", l)
	}
	// CRI's labels alone.
	gotRef, gotLayer, err = layerOf(map[string]string{LabelCRIImageRef: ref, LabelCRILayerDigest: layer})
	if err != nil || gotRef != ref || gotLayer != layer {
		t.Errorf("layerOf(CRI labels) = %q %q %v", gotRef, gotLayer, err)
	}
	gotRef, gotLayer, err = layerOf(map[string]string{LabelCRIImageRef: ref, LabelCRILayerDigest: layer, LabelCRIManifestDigest: manifest})
	if err != nil || gotRef != "127.0.0.1:5000/app@"+manifest || gotLayer != layer {
		t.Errorf("layerOf(CRI labels with the manifest) = %q %q %v; want the image by manifest digest", gotRef, gotLayer, err)
	}
	if _, _, err := layerOf(map[string]string{"containerd.io/snapshot.ref": "x"}); !errors.Is(err, ErrNotLazy) {
		t.Errorf("layerOf(no labels) = %v, want ErrNotLazy", err)
	}
}

// pulledLabels are the labels `lazypull pull` gives a layer: lazypull's (SnapshotLabels)
// and CRI's, which snapshotters.AppendInfoHandlerWrapper sets.
func pulledLabels(ref, manifestDigest, layerDigest string, annotations map[string]string) map[string]string {
	labels := SnapshotLabels(ref, manifestDigest, layerDigest, annotations)
	if labels == nil {
		return nil
	}
	labels[LabelCRIImageRef], labels[LabelCRILayerDigest], labels[LabelCRIManifestDigest] = ref, layerDigest, manifestDigest
	return labels
}

// TestLayerOfForgedLabels: lazypull's labels that an image's manifest put on its layers
// (containerd passes them on) and that name another repository, manifest or layer than
// the pull's (CRI's labels), or that come without CRI's, are not trusted.
func TestLayerOfForgedLabels(t *testing.T) {
	const (
		ref      = "127.0.0.1:5000/app:v1"
		manifest = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
		layer    = "sha256:3333333333333333333333333333333333333333333333333333333333333333"
		other    = "sha256:4444444444444444444444444444444444444444444444444444444444444444"
	)
	ann := map[string]string{format.AnnotationIndexDigest: other}
	for _, c := range []struct {
		name string
		edit func(map[string]string)
		want string
	}{
		{"another repository", func(l map[string]string) { l[LabelImageRef] = "127.0.0.1:5000/private:v1" }, "repository"},
		{"another registry", func(l map[string]string) { l[LabelImageRef] = "registry.test/app:v1" }, "repository"},
		{"another layer", func(l map[string]string) { l[LabelLayerDigest] = other }, LabelLayerDigest},
		{"another manifest", func(l map[string]string) { l[LabelManifestDigest] = other }, LabelManifestDigest},
		{"without CRI's labels", func(l map[string]string) { delete(l, LabelCRIImageRef) }, LabelCRIImageRef},
	} {
		l := pulledLabels(ref, manifest, layer, ann)
		c.edit(l)
		if r, _, err := layerOf(l); err == nil || !strings.Contains(err.Error(), c.want) || errors.Is(err, ErrNotLazy) {
			t.Errorf("%s: layerOf = %q, %v; want a refusal naming %s, warned of (not ErrNotLazy)", c.name, r, err, c.want)
		}
	}
	// Another tag of the same repository is the same repository.
	l := pulledLabels(ref, manifest, layer, ann)
	l[LabelCRIImageRef] = "127.0.0.1:5000/app@" + manifest
	if _, _, err := layerOf(l); err != nil {
		t.Errorf("the pull by digest of the same repository: %v", err)
	}
}
