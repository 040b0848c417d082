package fetch

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Stats are a Registry's running totals since New.
type Stats struct {
	// Requests is the HTTP requests sent for blobs and manifests, each try counted
	// (token requests are not).
	Requests int64
	// Bytes is the response body bytes read: what was asked for, plus the holes read
	// through, multipart headers and any prefix of a 200 answer read past.
	Bytes int64
	// Delivered is the bytes handed to callers, each range once however many callers
	// waited on it.
	Delivered int64
	// Retries is the retries made after a failure that may pass.
	Retries int64
	// Errors is the requests that failed (status, connection or body), retried or not; a
	// look-up that found nothing (a referrers tag's 404) is an answer, not an error.
	Errors int64
	// Fallbacks is the endpoints found to refuse multi-range requests.
	Fallbacks int64
}

type counters struct {
	requests, bytes, delivered, retries, errors, fallbacks atomic.Int64
}

func (c *counters) snapshot() Stats {
	return Stats{
		Requests:  c.requests.Load(),
		Bytes:     c.bytes.Load(),
		Delivered: c.delivered.Load(),
		Retries:   c.retries.Load(),
		Errors:    c.errors.Load(),
		Fallbacks: c.fallbacks.Load(),
	}
}

// Request kinds and outcomes, the values of the kind and outcome labels.
const (
	kindBlob     = "blob"
	kindManifest = "manifest"

	outcomeOK       = "ok"        // everything asked for came
	outcomeFallback = "fallback"  // the endpoint refused several ranges in one request
	outcomeError    = "error"     // status, connection or body failure (retried or not)
	outcomeNotFound = "not_found" // a look-up that may find nothing found nothing (a referrers tag's 404)
)

// Metrics are Prometheus collectors for fetch requests. Register them with
// Registry.Collectors (or Metrics.Collectors when shared through WithMetrics) in a registry
// of your own; nothing is registered globally.
type Metrics struct {
	requests *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	seconds  *prometheus.HistogramVec
	retries  prometheus.Counter
}

// NewMetrics makes a set of collectors:
//
//	lazypull_fetch_requests_total{kind,outcome}  HTTP requests sent
//	lazypull_fetch_bytes_total{kind,outcome}     response body bytes read
//	lazypull_fetch_seconds{kind,outcome}         request duration, body included
//	lazypull_fetch_retries_total                 retries after failures that may pass
//
// kind is blob or manifest; outcome is ok, fallback (multi-range refused), not_found (a
// look-up that may find nothing, such as a profile's referrers tag, found nothing) or error.
func NewMetrics() *Metrics {
	labels := []string{"kind", "outcome"}
	return &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lazypull_fetch_requests_total",
			Help: "HTTP requests sent to registries for blobs and manifests, by outcome.",
		}, labels),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lazypull_fetch_bytes_total",
			Help: "Response body bytes read from registries, by request outcome.",
		}, labels),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lazypull_fetch_seconds",
			Help:    "Duration of registry requests, body included, by outcome.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 9), // 1ms .. 65s
		}, labels),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lazypull_fetch_retries_total",
			Help: "Registry requests retried after a failure that may pass.",
		}),
	}
}

// Collectors returns the collectors to register.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.requests, m.bytes, m.seconds, m.retries}
}

func (m *Metrics) observe(kind, outcome string, bytes int64, d time.Duration) {
	m.requests.WithLabelValues(kind, outcome).Inc()
	m.bytes.WithLabelValues(kind, outcome).Add(float64(bytes))
	m.seconds.WithLabelValues(kind, outcome).Observe(d.Seconds())
}
