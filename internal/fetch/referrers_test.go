package fetch

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// TestReferrersShared: an image's profile look-up and index look-up, started together,
// share one listing (one referrers API request, one tag schema request), each gets the
// referrers of its own type, and a listing that ended is not kept: the next look-up asks
// again.
func TestReferrersShared(t *testing.T) {
	f := newFake("r")
	subject := sha([]byte("an image manifest"))
	const typA, typB = "application/vnd.example.a", "application/vnd.example.b"
	da, db := sha([]byte("a")), sha([]byte("b"))
	idx, err := json.Marshal(v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{
		{MediaType: types.OCIManifestSchema1, ArtifactType: typA, Digest: da, Size: 1},
		{MediaType: types.OCIManifestSchema1, ArtifactType: typB, Digest: db, Size: 1},
	}})
	if err != nil {
		t.Fatal(err)
	}
	tag := subject.Algorithm + "-" + subject.Hex
	f.addManifest(tag, string(types.OCIImageIndex), idx)
	arrived, release := make(chan struct{}, 4), make(chan struct{})
	var apiReqs, tagReqs atomic.Int64
	_, host := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.Contains(r.URL.Path, "/referrers/"):
			apiReqs.Add(1)
		case strings.HasSuffix(r.URL.Path, "/manifests/"+tag):
			tagReqs.Add(1)
			arrived <- struct{}{}
			<-release
		}
		f.ServeHTTP(w, r)
	}))
	reg, _ := newReg(t, host, "r")

	type answer struct {
		refs []v1.Descriptor
		err  error
	}
	lookup := func(typ string) chan answer {
		ch := make(chan answer, 1)
		go func() {
			refs, err := reg.Referrers(t.Context(), subject, typ)
			ch <- answer{refs, err}
		}()
		return ch
	}
	a := lookup(typA)
	<-arrived // a's listing is on its way
	b := lookup(typB)
	for deadline := time.Now().Add(10 * time.Second); ; {
		reg.mu.Lock()
		n := 0
		if c := reg.listings[subject]; c != nil {
			n = c.callers
		}
		reg.mu.Unlock()
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the second look-up did not join the listing in progress (%d callers)", n)
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	for _, c := range []struct {
		ch   chan answer
		want v1.Hash
	}{{a, da}, {b, db}} {
		got := <-c.ch
		if got.err != nil || len(got.refs) != 1 || got.refs[0].Digest != c.want {
			t.Errorf("look-up: %+v, %v; want only %s", got.refs, got.err, c.want)
		}
	}
	if apiReqs.Load() != 1 || tagReqs.Load() != 1 {
		t.Errorf("%d referrers API requests and %d tag schema requests for two look-ups together, want 1 and 1", apiReqs.Load(), tagReqs.Load())
	}

	if refs, err := reg.Referrers(t.Context(), subject, ""); err != nil || len(refs) != 2 {
		t.Fatalf("a later look-up of every type: %+v, %v", refs, err)
	}
	if apiReqs.Load() != 2 || tagReqs.Load() != 2 {
		t.Errorf("a later look-up: %d API requests and %d tag schema requests in all, want 2 and 2 (a listing is not kept)", apiReqs.Load(), tagReqs.Load())
	}
}
