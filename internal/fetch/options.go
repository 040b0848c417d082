package fetch

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
)

// Defaults for the options below.
const (
	DefaultConcurrency = 16
	DefaultAttempts    = 4 // one try and three retries
	DefaultBackoff     = 250 * time.Millisecond
	// DefaultIdleTimeout is how long a request may go without a byte of its answer
	// (headers, or body while it is read) before it is cancelled and retried.
	DefaultIdleTimeout = 30 * time.Second
	// DefaultMaxGap is the largest hole between two ranges that Fetch reads through to save a
	// range of its own, as long as the holes stay under an eighth of the bytes asked for.
	DefaultMaxGap = 16 << 10
	// DefaultMaxRequest caps the bytes one request covers when Fetch packs ranges together. A
	// single range larger than this is still fetched whole, in one request.
	DefaultMaxRequest = 16 << 20
	// maxRangesPerRequest caps the ranges of one multi-range request, which keeps the Range
	// header short (a few KiB at most) for servers and proxies that limit header size.
	maxRangesPerRequest = 64
	// userAgent is sent with every request.
	userAgent = "lazypull"
)

// Option configures a Client, and so every Registry it opens. Options check their
// arguments and NewClient reports the first that is wrong.
type Option func(*options) error

type options struct {
	plainHTTP   bool
	keychain    authn.Keychain
	credentials Credentials
	hostsDir    string
	concurrency int
	attempts    int
	backoff     time.Duration
	logger      *slog.Logger
	transport   http.RoundTripper
	maxGap      int64
	maxRequest  int64
	metrics     *Metrics
	idle        time.Duration
}

func defaultOptions() options {
	return options{
		keychain:    authn.DefaultKeychain,
		concurrency: DefaultConcurrency,
		attempts:    DefaultAttempts,
		backoff:     DefaultBackoff,
		maxGap:      DefaultMaxGap,
		maxRequest:  DefaultMaxRequest,
		idle:        DefaultIdleTimeout,
	}
}

// WithPlainHTTP talks plain http to the registries named in references instead of https
// (see Client.PlainHTTP for the rule without it: loopback registries that answer TLS
// with plain HTTP are spoken to over http anyway). Mirrors and servers from a hosts
// directory use the scheme their URL gives. Credentials
// go over such plain http only to a registry on loopback (localhost, 127.0.0.0/8, ::1):
// for any other host the operator names http://HOST in HOST's hosts.toml (WithHostsDir),
// else a registry that asks for credentials gets an error instead of them.
func WithPlainHTTP() Option {
	return func(o *options) error {
		o.plainHTTP = true
		return nil
	}
}

// WithKeychain sets where credentials come from. The default, authn.DefaultKeychain, reads
// the Docker config (DOCKER_CONFIG, ~/.docker/config.json) and runs its credential helpers.
// Credentials are asked for only when a registry answers 401.
func WithKeychain(kc authn.Keychain) Option {
	return func(o *options) error {
		if kc == nil {
			return errors.New("fetch: nil keychain")
		}
		o.keychain = kc
		return nil
	}
}

// WithCredentials has credentials asked of cr before the keychain (WithKeychain, the
// Docker config by default): see Credentials.
func WithCredentials(cr Credentials) Option {
	return func(o *options) error {
		if cr == nil {
			return errors.New("fetch: nil credentials")
		}
		o.credentials = cr
		return nil
	}
}

// WithHostsDir reads mirrors and the upstream server from a directory laid out as
// containerd's registry hosts configuration: DIR/<host[:port]>/hosts.toml, else
// DIR/_default/hosts.toml. The directory must exist; a host without a file of its own
// is used as named in the reference.
func WithHostsDir(dir string) Option {
	return func(o *options) error {
		if dir == "" {
			return errors.New("fetch: empty hosts directory")
		}
		o.hostsDir = dir
		return nil
	}
}

// WithMaxConcurrency bounds the requests a Client has in flight at once, for all the
// images (Registries) it opened together, blobs and manifests alike; default 8.
func WithMaxConcurrency(n int) Option {
	return func(o *options) error {
		if n < 1 {
			return fmt.Errorf("fetch: max concurrency %d: must be at least 1", n)
		}
		o.concurrency = n
		return nil
	}
}

// WithRetry sets how often a request is tried in all (attempts >= 1; 1 means no retry) and
// the backoff before the first retry, which doubles with each further retry up to 32 times
// the base, each wait drawn within ±50% of that. Only failures that may pass are retried: 5xx but 501, 429,
// connection errors and bodies cut short.
func WithRetry(attempts int, backoff time.Duration) Option {
	return func(o *options) error {
		if attempts < 1 {
			return fmt.Errorf("fetch: %d attempts: must be at least 1", attempts)
		}
		if backoff < 0 {
			return fmt.Errorf("fetch: negative backoff %v", backoff)
		}
		o.attempts, o.backoff = attempts, backoff
		return nil
	}
}

// WithLogger sets the logger, one line per event (retries, fallbacks, failovers at warn or
// info; each request at debug). Nothing logged carries credentials or signed URLs.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) error {
		if l == nil {
			return errors.New("fetch: nil logger")
		}
		o.logger = l
		return nil
	}
}

// WithTransport sets the HTTP transport every request goes through (tests use it to put
// faults in between). The default is the Client's own, a clone of http.DefaultTransport
// shared by all its Registries, dialing through its Predial.
func WithTransport(rt http.RoundTripper) Option {
	return func(o *options) error {
		if rt == nil {
			return errors.New("fetch: nil transport")
		}
		o.transport = rt
		return nil
	}
}

// WithCoalescing sets how Fetch packs ranges into requests: it reads through a hole of at
// most maxGap bytes between two ranges rather than asking for them apart (while the holes
// stay under an eighth of the bytes asked for), and packs ranges into one request up to
// maxRequest bytes. maxGap 0 reads through no hole; ranges that touch or overlap are always
// merged.
func WithCoalescing(maxGap, maxRequest int64) Option {
	return func(o *options) error {
		if maxGap < 0 {
			return fmt.Errorf("fetch: negative max gap %d", maxGap)
		}
		if maxRequest < 1 {
			return fmt.Errorf("fetch: max request size %d: must be at least 1", maxRequest)
		}
		o.maxGap, o.maxRequest = maxGap, maxRequest
		return nil
	}
}

// WithMetrics makes the Client's registries count into m. By default the Client has a set
// of its own (see Client.Collectors).
func WithMetrics(m *Metrics) Option {
	return func(o *options) error {
		if m == nil {
			return errors.New("fetch: nil metrics")
		}
		o.metrics = m
		return nil
	}
}

// WithIdleTimeout bounds how long a request may wait for a byte of its answer: for the
// headers (authentication round trips included), then for each read of the body that
// waits on the registry (a caller that reads slowly is not the registry's fault). A
// request idle that long is cancelled and fails as temporary, so it is retried
// (WithRetry), then reported naming the registry, the blob, the range and "no bytes for
// D". Default DefaultIdleTimeout.
func WithIdleTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("fetch: idle timeout %v: must be positive", d)
		}
		o.idle = d
		return nil
	}
}
