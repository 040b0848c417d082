package testutil

import (
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Push writes img to the registry as repoTag ("repo:tag") and returns its reference,
// host included.
func (r *Registry) Push(t testing.TB, repoTag string, img v1.Image) string {
	t.Helper()
	ref := r.Host + "/" + repoTag
	Push(t, ref, img)
	return ref
}

// Head returns the descriptor of the image ref ("host/repo:tag" or "@digest") in its
// registry, over plain HTTP.
func Head(t testing.TB, ref string) v1.Descriptor {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	d, err := remote.Head(r)
	if err != nil {
		t.Fatalf("head %s: %v", ref, err)
	}
	return *d
}

// Push writes img to a registry as the tag ref ("host/repo:tag"), over plain HTTP where
// the host is local.
func Push(t testing.TB, ref string, img v1.Image) {
	t.Helper()
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}
