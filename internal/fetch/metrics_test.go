package fetch

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"lazypull/internal/testutil"

	"github.com/prometheus/client_golang/prometheus"
)

func TestMetrics(t *testing.T) {
	f, blob, d, reg, _ := blobRegistry(t, 60, 100000)
	f.hook = failFirst(1, http.StatusBadGateway)

	pr := prometheus.NewRegistry()
	for _, c := range reg.Collectors() {
		if err := pr.Register(c); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := reg.Blob(d, int64(len(blob))).ReadAt(make([]byte, 1000), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Resolve(t.Context(), "missing", nil); err == nil {
		t.Fatal("no error")
	}
	s := reg.Stats()
	if s.Requests != 3 || s.Retries != 1 || s.Errors != 2 || s.Delivered != 1000 || s.Bytes < 1000 {
		t.Fatalf("stats %+v", s)
	}

	// A request is recorded once its body is done with, which may be just after the
	// caller has its bytes.
	var got map[string]float64
	testutil.WaitFor(t, 10*time.Second, "the blob request's metrics", func() bool {
		got = gather(t, pr)
		return got["lazypull_fetch_requests_total kind=blob outcome=ok"] == 1
	})
	want := map[string]float64{
		"lazypull_fetch_requests_total kind=blob outcome=ok":        1,
		"lazypull_fetch_requests_total kind=blob outcome=error":     1,
		"lazypull_fetch_requests_total kind=manifest outcome=error": 1,
		"lazypull_fetch_bytes_total kind=blob outcome=ok":           1000,
		"lazypull_fetch_seconds kind=blob outcome=ok":               1,
		"lazypull_fetch_seconds kind=blob outcome=error":            1,
		"lazypull_fetch_retries_total":                              1,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if t.Failed() {
		t.Logf("gathered %v", got)
	}

	// Shared metrics: two registries count into one set.
	m := NewMetrics()
	r1, _ := newReg(t, reg.Host(), "r", WithMetrics(m))
	r2, _ := newReg(t, reg.Host(), "r", WithMetrics(m))
	if r1.Collectors()[0] != r2.Collectors()[0] {
		t.Fatal("collectors not shared")
	}
}

// gather reads counters and histogram counts by name and labels.
func gather(t *testing.T, pr *prometheus.Registry) map[string]float64 {
	families, err := pr.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range families {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += " " + l.GetName() + "=" + l.GetValue()
			}
			switch {
			case m.Counter != nil:
				got[key] = m.GetCounter().GetValue()
			case m.Histogram != nil:
				got[key] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return got
}

// TestReferrersNotFoundIsNoError: a registry without the referrers API and without the
// referrers tag answers a profile look-up with two 404s. That is "no profile", not two
// failed requests: neither Stats.Errors nor the error outcome counts them.
func TestReferrersNotFoundIsNoError(t *testing.T) {
	f := newFake("r")
	_, host := serve(t, f)
	reg, _ := newReg(t, host, "r")
	pr := prometheus.NewRegistry()
	for _, c := range reg.Collectors() {
		if err := pr.Register(c); err != nil {
			t.Fatal(err)
		}
	}
	subject := sha([]byte("an image manifest"))
	got, err := reg.Referrers(t.Context(), subject, "")
	if err != nil || len(got) != 0 {
		t.Fatalf("referrers: %v, %v", got, err)
	}
	if s := reg.Stats(); s.Errors != 0 || s.Requests != 2 {
		t.Errorf("stats %+v: want 2 requests, no errors", s)
	}
	m := gather(t, pr)
	for k, v := range m {
		if strings.Contains(k, "requests_total") && strings.Contains(k, "outcome=error") && v != 0 {
			t.Errorf("%s = %v, want 0", k, v)
		}
	}
	if m["lazypull_fetch_requests_total kind=manifest outcome=not_found"] != 1 {
		t.Errorf("the tag schema's 404 is not counted as not_found: %v", m)
	}
}
