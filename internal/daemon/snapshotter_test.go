package daemon

import (
	"errors"
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
	labels := SnapshotLabels(ref, manifest, layer, ann)
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
	if _, _, err := layerOf(map[string]string{"containerd.io/snapshot.ref": "x"}); !errors.Is(err, ErrNotLazy) {
		t.Errorf("layerOf(no labels) = %v, want ErrNotLazy", err)
	}
}
