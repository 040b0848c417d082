package fetch

import (
	"sync"
	"time"
)

// rttSamples is how many of a registry's latest answers RoundTrip looks at.
const rttSamples = 32

// roundTrips keeps the times to response headers of a registry's latest requests.
type roundTrips struct {
	mu   sync.Mutex
	ring [rttSamples]time.Duration
	n    int // answers so far
}

func (t *roundTrips) add(d time.Duration) {
	t.mu.Lock()
	t.ring[t.n%rttSamples] = d
	t.n++
	t.mu.Unlock()
}

func (t *roundTrips) min() (time.Duration, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == 0 {
		return 0, false
	}
	m := t.ring[0]
	for _, d := range t.ring[1:min(t.n, rttSamples)] {
		m = min(m, d)
	}
	return m, true
}

// RoundTrip estimates the round trip to the registry: the shortest time to response
// headers among its latest requests (rttSamples). A request's time to its headers is a
// round trip plus the registry's own time, plus another round trip on a connection it
// had to dial and one more for a token: the shortest of a few is the link's. ok is false
// until a request was answered.
func (r *Registry) RoundTrip() (d time.Duration, ok bool) { return r.rtts.min() }
