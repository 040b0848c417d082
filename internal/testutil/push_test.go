package testutil

import (
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"
)

func TestRegistryPush(t *testing.T) {
	r := NewRegistry(t)
	img, err := random.Image(100, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref := r.Push(t, "a/b:v1", img)
	if want := r.Host + "/a/b:v1"; ref != want {
		t.Errorf("reference %q, want %q", ref, want)
	}
	wd, _ := img.Digest()
	if gd := Head(t, ref).Digest; gd != wd {
		t.Errorf("the tag names %s, pushed %s", gd, wd)
	}
}
