package fetch

import (
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// TestRoundTrip: no estimate before an answer; then the shortest time to headers among
// the latest answers, so that one slow answer (a dial, a busy registry) does not count,
// and a registry that became slow is seen as slow once its fast answers are rttSamples
// requests old.
func TestRoundTrip(t *testing.T) {
	f := newFake("r")
	h := f.addManifest("v1", "application/vnd.oci.image.manifest.v1+json", []byte(`{"schemaVersion":2}`))
	var delay atomic.Int64 // nanoseconds
	_, host := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(time.Duration(delay.Load()))
		f.ServeHTTP(w, r)
	}))
	reg, _ := newReg(t, host, "r")
	if d, ok := reg.RoundTrip(); ok {
		t.Fatalf("a round trip of %v before any request", d)
	}
	get := func() {
		t.Helper()
		if _, _, err := reg.Manifest(t.Context(), h); err != nil {
			t.Fatal(err)
		}
	}
	get()
	fast, ok := reg.RoundTrip()
	if !ok || fast <= 0 || fast > time.Second {
		t.Fatalf("round trip %v, %v after one loopback request", fast, ok)
	}
	const slow = 30 * time.Millisecond
	delay.Store(int64(slow))
	get()
	if d, _ := reg.RoundTrip(); d != fast {
		t.Errorf("one slow answer moved the estimate from %v to %v", fast, d)
	}
	for range rttSamples {
		get()
	}
	if d, _ := reg.RoundTrip(); d < slow {
		t.Errorf("after %d slow answers the estimate is %v, less than the registry's %v", rttSamples, d, slow)
	}
}
