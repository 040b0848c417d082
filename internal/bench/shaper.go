package bench

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Link is an emulated network link between the node and the registry.
type Link struct {
	// Name is how tables and files call the link, e.g. "100M/20ms".
	Name string `json:"name"`
	// Rate is the bandwidth in bits per second, in each direction.
	Rate int64 `json:"rate_bits"`
	// RTT is the round-trip time the link adds.
	RTT time.Duration `json:"rtt_ns"`
}

// ParseLink parses "RATE/RTT": RATE a number of bits per second with an optional K, M or G
// (powers of 1000), RTT a Go duration. "100M/20ms" is 100 Mbit/s with a 20 ms round trip.
func ParseLink(s string) (Link, error) {
	rate, rtt, ok := strings.Cut(s, "/")
	if !ok {
		return Link{}, fmt.Errorf("link %q: want RATE/RTT, e.g. 100M/20ms", s)
	}
	mult := int64(1)
	switch {
	case strings.HasSuffix(rate, "K"):
		mult, rate = 1e3, strings.TrimSuffix(rate, "K")
	case strings.HasSuffix(rate, "M"):
		mult, rate = 1e6, strings.TrimSuffix(rate, "M")
	case strings.HasSuffix(rate, "G"):
		mult, rate = 1e9, strings.TrimSuffix(rate, "G")
	}
	n, err := strconv.ParseFloat(rate, 64)
	if err != nil || n <= 0 {
		return Link{}, fmt.Errorf("link %q: rate %q: want a positive number of bits/s with K, M or G", s, rate)
	}
	d, err := time.ParseDuration(rtt)
	if err != nil || d < 0 {
		return Link{}, fmt.Errorf("link %q: round trip %q: want a duration like 20ms", s, rtt)
	}
	return Link{Name: s, Rate: int64(n * float64(mult)), RTT: d}, nil
}

// bytesPerSecond is the link's rate in bytes per second.
func (l Link) bytesPerSecond() float64 { return float64(l.Rate) / 8 }

// Counters are what a Proxy forwarded since it started.
type Counters struct {
	// Down is the bytes sent from the registry to the node, Up the other way.
	Down, Up int64
	// Requests is the HTTP requests seen from the node; Conns the connections accepted.
	Requests, Conns int64
}

// Sub returns c - o, the traffic between two readings.
func (c Counters) Sub(o Counters) Counters {
	return Counters{Down: c.Down - o.Down, Up: c.Up - o.Up, Requests: c.Requests - o.Requests, Conns: c.Conns - o.Conns}
}

// chunkSize is the most a pipe reads and forwards at once. Small enough that one chunk is
// 6.6 ms at 20 Mbit/s (pacing stays smooth), large enough to cost little CPU at 1 Gbit/s.
const chunkSize = 16 << 10

// Proxy forwards TCP connections from a loopback port to a target address through an
// emulated link. The bandwidth of each direction is shared by all connections, as on a real
// link (a per-connection limit would hand a client that opens three connections three times
// the link); each connection pays one RTT to set up (the TCP handshake the proxy's accept
// skips) and half the RTT each way on every byte.
type Proxy struct {
	link   Link
	target string
	dial   func() (net.Conn, error) // connects to target
	ln     net.Listener
	log    *slog.Logger
	// up carries requests (node -> registry), down responses.
	up, down *pacer

	bytesDown, bytesUp, requests, conns atomic.Int64

	mu     sync.Mutex
	open   map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
	// seen is the requests seen, in order, for RequestLog; at most maxSeen are kept.
	seen []seenRequest
}

// seenRequest is one request the proxy forwarded, for the run's request log.
type seenRequest struct {
	at                time.Time
	method, path, rng string
}

const maxSeen = 100000

// NewProxy starts a Proxy on a random loopback port forwarding to target through link.
func NewProxy(target string, link Link, log *slog.Logger) (*Proxy, error) {
	if link.Rate <= 0 {
		return nil, fmt.Errorf("proxy for link %s: rate must be positive", link.Name)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("proxy for link %s: %w", link.Name, err)
	}
	return newProxy(ln, target, func() (net.Conn, error) { return net.Dial("tcp", target) }, link, log), nil
}

// newProxy starts a Proxy that accepts on ln and dials target with dial. Its tests give it
// in-memory connections (net.Pipe), so that they run on a fake clock (testing/synctest):
// the link's timing is all time.Now and time.Sleep.
func newProxy(ln net.Listener, target string, dial func() (net.Conn, error), link Link, log *slog.Logger) *Proxy {
	p := &Proxy{link: link, target: target, dial: dial, ln: ln, log: log,
		up: &pacer{rate: link.bytesPerSecond()}, down: &pacer{rate: link.bytesPerSecond()},
		open: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Link is the link the proxy emulates.
func (p *Proxy) Link() Link { return p.link }

// Counters returns what the proxy forwarded so far.
func (p *Proxy) Counters() Counters {
	return Counters{Down: p.bytesDown.Load(), Up: p.bytesUp.Load(), Requests: p.requests.Load(), Conns: p.conns.Load()}
}

// RequestLog returns the requests seen from since on, one line each: the time after since
// (when the proxy parsed the request: after the node sent it, before the link delayed it),
// the method, the path and the Range header.
func (p *Proxy) RequestLog(since time.Time) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, r := range p.seen {
		if r.at.Before(since) {
			continue
		}
		line := fmt.Sprintf("+%.3fs %s %s", r.at.Sub(since).Seconds(), r.method, r.path)
		if r.rng != "" {
			line += " Range: " + r.rng
		}
		out = append(out, line)
	}
	return out
}

// Close stops accepting, closes every open connection and waits for their goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	for c := range p.open {
		c.Close()
	}
	p.mu.Unlock()
	err := p.ln.Close()
	p.wg.Wait()
	return err
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.open[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.open, c)
	p.mu.Unlock()
	c.Close()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		p.conns.Add(1)
		p.wg.Add(1)
		go p.serve(c, time.Now())
	}
}

func (p *Proxy) serve(client net.Conn, accepted time.Time) {
	defer p.wg.Done()
	if !p.track(client) {
		return
	}
	defer p.untrack(client)
	server, err := p.dial()
	if err != nil {
		p.log.Warn("proxy: dial the target", "target", p.target, "err", err)
		return
	}
	if !p.track(server) {
		return
	}
	defer p.untrack(server)

	// Requests are counted by parsing a copy of the node's bytes; the forwarding never waits
	// for the parser (it gets the bytes after they are forwarded, and stops at its first
	// error: a byte stream that is not HTTP is still forwarded, only not counted).
	pr, pw := io.Pipe()
	go p.countRequests(pr)

	oneWay := p.link.RTT / 2
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		// The proxy accepts at once, so the node sends its first bytes right away; on the
		// link they would leave after the handshake (one RTT) and arrive half an RTT later.
		p.pipe(server, client, p.up, oneWay, accepted.Add(p.link.RTT+oneWay), &p.bytesUp, pw)
		pw.Close()
		closeWrite(server)
	}()
	go func() {
		defer wg.Done()
		p.pipe(client, server, p.down, oneWay, time.Time{}, &p.bytesDown, nil)
		closeWrite(client)
	}()
	wg.Wait()
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}

func (p *Proxy) countRequests(r *io.PipeReader) {
	br := bufio.NewReader(r)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			r.CloseWithError(err) // unblocks the forwarder's copies; they are ignored from now on
			return
		}
		p.requests.Add(1)
		p.mu.Lock()
		if len(p.seen) < maxSeen {
			p.seen = append(p.seen, seenRequest{at: time.Now(), method: req.Method, path: req.URL.Path, rng: req.Header.Get("Range")})
		}
		p.mu.Unlock()
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			r.CloseWithError(err)
			return
		}
	}
}

// chunk is a piece of a byte stream in flight on the link.
type chunk struct {
	b   []byte
	at  time.Time // when it entered the link
	err error     // the read error that ends the stream (with b empty)
}

// pipe copies src to dst through the link: each chunk is delivered oneWay after it was read,
// and then no faster than the direction's pacer allows. notBefore holds the first delivery
// back (the handshake). Written bytes are added to count and copied to tee (if not nil).
func (p *Proxy) pipe(dst io.Writer, src io.Reader, pc *pacer, oneWay time.Duration, notBefore time.Time, count *atomic.Int64, tee *io.PipeWriter) {
	// Enough chunks in flight to fill the link for one one-way delay twice over: a smaller
	// queue would cap the throughput below the rate (the bandwidth-delay product).
	depth := int(2*pc.rate*oneWay.Seconds()/chunkSize) + 8
	q := make(chan chunk, depth)
	stop := make(chan struct{})
	go func() {
		defer close(q)
		for {
			b := make([]byte, chunkSize)
			n, err := src.Read(b)
			if n > 0 {
				select {
				case q <- chunk{b: b[:n], at: time.Now()}:
				case <-stop:
					return
				}
			}
			if err != nil {
				select {
				case q <- chunk{err: err}:
				case <-stop:
				}
				return
			}
		}
	}()
	defer close(stop)
	teeOK := tee != nil
	for c := range q {
		if c.err != nil {
			return
		}
		due := c.at.Add(oneWay)
		if due.Before(notBefore) {
			due = notBefore
		}
		sleepUntil(due)
		sleepUntil(pc.reserve(len(c.b)))
		// Counted as they go out, so that a reader of the counters who already has the
		// bytes never sees fewer.
		count.Add(int64(len(c.b)))
		if _, err := dst.Write(c.b); err != nil {
			return
		}
		if teeOK {
			if _, err := tee.Write(c.b); err != nil {
				teeOK = false
			}
		}
	}
}

func sleepUntil(t time.Time) {
	if d := time.Until(t); d > 0 {
		time.Sleep(d)
	}
}

// catchUp is how far behind the clock a pacer may run to catch up.
const catchUp = 10 * time.Millisecond

// pacer serializes the bytes of one direction of the link: each reservation of n bytes
// occupies the link for n/rate after the previous one, and returns when it is done.
type pacer struct {
	rate float64 // bytes per second

	mu   sync.Mutex
	free time.Time // when the link is free again
}

// reserve books n bytes on the link and returns when they have left it.
func (pc *pacer) reserve(n int) time.Time {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	// A link idle for a while banks at most catchUp of unused time: enough to make up for a
	// sender that overslept (sleeps overshoot by a millisecond or more on a loaded machine,
	// the time of a whole chunk at 100 Mbit/s), too little to send a burst above the rate.
	earliest := time.Now().Add(-catchUp)
	start := pc.free
	if start.Before(earliest) {
		start = earliest
	}
	pc.free = start.Add(time.Duration(float64(n) / pc.rate * float64(time.Second)))
	return pc.free
}
