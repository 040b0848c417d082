package daemon

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Outcomes of a profile look-up, as ProfileMetrics counts them.
const (
	OutcomePinned   = "pinned"   // the operator's pinned profile is used
	OutcomeReferrer = "referrer" // a profile found among the referrers is used
	OutcomeNone     = "none"     // no profile: none found, none pinned, or policy off
	OutcomeRefused  = "refused"  // the profile chosen does not refer to the image
	OutcomeError    = "error"    // the profile chosen could not be read, or was not a profile
)

// outcomeOf names the outcome of a look-up.
func outcomeOf(f Found, err error) string {
	switch {
	case errors.Is(err, ErrProfileSubject):
		return OutcomeRefused
	case err != nil:
		return OutcomeError
	case f.Profile == nil:
		return OutcomeNone
	case f.Source == SourcePin:
		return OutcomePinned
	}
	return OutcomeReferrer
}

// ProfileMetrics are the Prometheus metrics of profile choice:
//
//   - lazypull_profile_lookups_total{policy, outcome}, the look-ups by policy and
//     outcome (both bounded sets);
//   - lazypull_profile_images{profile, source}, per profile digest, how many of the images
//     open now use it. A digest is a label here, but only of the profiles the open images
//     use (a series per profile in use, gone when no open image uses it), so the series
//     are no more than the images open: taken at scrape time from the images, as
//     `lazypull stats` takes them.
type ProfileMetrics struct {
	lookups *prometheus.CounterVec
	inUse   *prometheus.Desc
	images  func() []*Image
}

// NewProfileMetrics returns the metrics; images lists the images open now (nil: none).
func NewProfileMetrics(images func() []*Image) *ProfileMetrics {
	return &ProfileMetrics{
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lazypull_profile_lookups_total",
			Help: "Prefetch profile look-ups, by profile policy and outcome (pinned, referrer, none, refused, error).",
		}, []string{"policy", "outcome"}),
		inUse: prometheus.NewDesc("lazypull_profile_images",
			"Images open now whose prefetch used the profile, by the profile's manifest digest and where it came from (pin, referrers).",
			[]string{"profile", "source"}, nil),
		images: images,
	}
}

// SetImages sets the function that lists the images open now.
func (m *ProfileMetrics) SetImages(images func() []*Image) { m.images = images }

func (m *ProfileMetrics) observe(policy ProfilePolicy, outcome string) {
	if m == nil {
		return
	}
	m.lookups.WithLabelValues(string(policy), outcome).Inc()
}

// Collectors returns the collectors to register.
func (m *ProfileMetrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.lookups, inUseCollector{m}}
}

// inUseCollector collects lazypull_profile_images at scrape time.
type inUseCollector struct{ m *ProfileMetrics }

func (c inUseCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.m.inUse }

func (c inUseCollector) Collect(ch chan<- prometheus.Metric) {
	if c.m.images == nil {
		return
	}
	type key struct{ profile, source string }
	n := map[key]int{}
	for _, im := range c.m.images() {
		if ps, ok := im.PrefetchStats(); ok && ps.Profile != "" {
			n[key{ps.Profile, ps.Source}]++
		}
	}
	for k, v := range n {
		ch <- prometheus.MustNewConstMetric(c.m.inUse, prometheus.GaugeValue, float64(v), k.profile, k.source)
	}
}
