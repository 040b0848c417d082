package daemon

import (
	"context"
	"fmt"
	"time"

	"golang.org/x/time/rate"

	"lazypull/internal/fetch"
)

// limiter is a token bucket of bytes (x/time/rate's): tokens accrue at rate bytes per
// second up to burst, and Wait(n) takes n of them, waiting until there are. Over any
// stretch of time T from a full bucket, what Wait grants is at most burst + rate*T. The
// clock and the sleep are fields so that a test checks the bound on counts, not on
// wall-clock timing.
type limiter struct {
	lim *rate.Limiter

	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration) error
}

// newLimiter returns a limiter of rate bytes/s and a bucket of burst bytes, full.
func newLimiter(bps, burst int64) (*limiter, error) {
	if bps <= 0 {
		return nil, fmt.Errorf("rate limit: %d bytes/s: want more than 0", bps)
	}
	if burst <= 0 || int64(int(burst)) != burst {
		return nil, fmt.Errorf("rate limit: burst of %d bytes: want more than 0", burst)
	}
	return &limiter{lim: rate.NewLimiter(rate.Limit(bps), int(burst)), now: time.Now, sleep: fetch.Sleep}, nil
}

// rate is the limiter's rate in bytes per second.
func (l *limiter) rate() int64 { return int64(l.lim.Limit()) }

// Wait takes n tokens, waiting until the bucket holds them; n larger than the burst is
// taken as the burst (one batch never waits forever). A full bucket grants at once, even
// to an ended ctx; otherwise Wait returns ctx's error if ctx ends first, and then gives
// back what it reserved. (rate.Limiter.WaitN refuses an ended ctx, and a ctx whose
// deadline comes before the wait ends, with an error of its own.)
func (l *limiter) Wait(ctx context.Context, n int64) error {
	n = min(n, int64(l.lim.Burst()))
	now := l.now()
	r := l.lim.ReserveN(now, int(n)) // always OK: n is at most the burst, the rate finite
	d := r.DelayFrom(now)
	if d <= 0 {
		return nil
	}
	// A microsecond more: rate truncates the delay to the nanosecond, which would let n
	// through a hair before the rate allows.
	if err := l.sleep(ctx, d+time.Microsecond); err != nil {
		r.CancelAt(l.now())
		return err
	}
	return nil
}
