package fetch

import (
	"net/http"
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
