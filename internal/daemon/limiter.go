package daemon

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// limiter is a token bucket of bytes: tokens accrue at rate bytes per second up to burst,
// and Wait(n) takes n of them, waiting until there are. Over any stretch of time T from a
// full bucket, what Wait grants is at most burst + rate*T. The clock and the sleep are
// fields so that a test checks the bound on counts, not on wall-clock timing.
type limiter struct {
	rate  float64 // bytes per second
	burst int64

	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration) error

	mu     sync.Mutex
	tokens float64
	last   time.Time
}

// newLimiter returns a limiter of rate bytes/s and a bucket of burst bytes, full.
func newLimiter(rate, burst int64) (*limiter, error) {
	if rate <= 0 {
		return nil, fmt.Errorf("rate limit: %d bytes/s: want more than 0", rate)
	}
	if burst <= 0 {
		return nil, fmt.Errorf("rate limit: burst of %d bytes: want more than 0", burst)
	}
	l := &limiter{rate: float64(rate), burst: burst, now: time.Now, sleep: sleepCtx, tokens: float64(burst)}
	l.last = l.now()
	return l, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Wait takes n tokens, waiting until the bucket holds them; n larger than the burst is
// taken as the burst (one batch never waits forever). It returns ctx's error if ctx ends
// first, and then takes nothing.
func (l *limiter) Wait(ctx context.Context, n int64) error {
	n = min(n, l.burst)
	for {
		l.mu.Lock()
		now := l.now()
		if el := now.Sub(l.last); el > 0 {
			l.tokens = min(float64(l.burst), l.tokens+el.Seconds()*l.rate)
		}
		l.last = now
		if l.tokens >= float64(n) {
			l.tokens -= float64(n)
			l.mu.Unlock()
			return nil
		}
		need := (float64(n) - l.tokens) / l.rate
		l.mu.Unlock()
		// At least a millisecond: a wait shorter than the clock's grain would spin.
		d := max(time.Duration(need*float64(time.Second)), time.Millisecond)
		if err := l.sleep(ctx, d); err != nil {
			return err
		}
	}
}
