package fetch

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
)

// predialTTL is how long a connection dialed ahead waits to be taken before it is closed.
const predialTTL = 10 * time.Second

// predialer holds TCP connections dialed ahead of the requests that will use them. A
// snapshotter told that a pull is starting (Predial) dials the registry while the pull
// fetches the manifest, so that the profile look-up that follows finds connections open
// instead of paying a round trip to set each up. A Client's own transport dials through
// its predialer, whatever Registry the connections were dialed for.
type predialer struct {
	mu    sync.Mutex
	conns map[string][]predialed // by host:port
}

type predialed struct {
	c  net.Conn
	at time.Time
}

func newPredialer() *predialer { return &predialer{conns: map[string][]predialed{}} }

// closeAll closes the connections dialed ahead and not taken.
func (p *predialer) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for addr, cs := range p.conns {
		for _, pc := range cs {
			pc.c.Close()
		}
		delete(p.conns, addr)
	}
}

// dialContext wraps next: a TCP dial to an address with a connection dialed ahead takes
// that connection.
func (p *predialer) dialContext(next func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if network == "tcp" {
			if c := p.take(addr); c != nil {
				return c, nil
			}
		}
		return next(ctx, network, addr)
	}
}

// take returns a connection dialed ahead to addr that has not expired, or nil.
func (p *predialer) take(addr string) net.Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	for cs := p.conns[addr]; len(cs) > 0; cs = p.conns[addr] {
		pc := cs[len(cs)-1]
		p.conns[addr] = cs[:len(cs)-1]
		if time.Since(pc.at) < predialTTL {
			return pc.c
		}
		pc.c.Close()
	}
	delete(p.conns, addr)
	return nil
}

// put keeps c for a dial to addr, and closes it if nothing takes it within predialTTL.
func (p *predialer) put(addr string, c net.Conn) {
	p.mu.Lock()
	p.conns[addr] = append(p.conns[addr], predialed{c: c, at: time.Now()})
	p.mu.Unlock()
	time.AfterFunc(predialTTL, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		cs := p.conns[addr]
		for i, pc := range cs {
			if pc.c == c {
				p.conns[addr] = append(cs[:i:i], cs[i+1:]...)
				c.Close()
				break
			}
		}
		if len(p.conns[addr]) == 0 {
			delete(p.conns, addr)
		}
	})
}

// Predial dials n TCP connections, in the background, to each endpoint the registry of
// ref is reached at (its hosts.toml mirrors included, as Open finds them), for the
// Registries of c to use: a caller that knows a pull of ref is about to start has the
// connection round trips done while the pull fetches the manifest. No request is sent.
// Nothing is dialed for endpoints reached through an HTTP proxy, or by a client with a
// transport of the caller's (WithTransport). The error is about ref or the hosts
// configuration; a dial that fails is forgotten.
func (c *Client) Predial(ref string, n int) error {
	if c.predial == nil || n <= 0 {
		return nil
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return fmt.Errorf("fetch: reference %q: %w", ref, err)
	}
	hosts, err := c.endpoints(r.Context().RegistryStr(), slog.New(slog.DiscardHandler))
	if err != nil {
		return fmt.Errorf("fetch: %w", err)
	}
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	for _, h := range hosts {
		if proxy, err := http.ProxyFromEnvironment(&http.Request{URL: h.url}); err != nil || proxy != nil {
			continue
		}
		addr := h.url.Host
		if h.url.Port() == "" {
			port := "443"
			if h.url.Scheme == "http" {
				port = "80"
			}
			addr = net.JoinHostPort(h.url.Hostname(), port)
		}
		for range n {
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), d.Timeout)
				defer cancel()
				if conn, err := d.DialContext(ctx, "tcp", addr); err == nil {
					c.predial.put(addr, conn)
				}
			}()
		}
	}
	return nil
}
