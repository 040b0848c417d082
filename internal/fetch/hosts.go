package fetch

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
)

// capability is what an endpoint may be used for (containerd's hosts.toml capabilities).
type capability uint8

const (
	capPull    capability = 1 << iota // blobs, and manifests by digest
	capResolve                        // manifests by tag
)

// hostConfig is one endpoint as configured: a mirror or the upstream server.
type hostConfig struct {
	url        *url.URL // scheme://host[:port]/api-root, the root ending in /v2
	caps       capability
	skipVerify bool
	mirror     bool
	named      bool // the URL, scheme included, is written in a hosts.toml
	fallback   bool // https, falling back to plain http when TLS is answered so (httpFallback)
}

// hostsFile is the part of containerd's hosts.toml that lazypull reads. (containerd's own
// reader, docker/config, gives only whole http.Clients with the TLS settings built in, and
// falls back to defaults, logging, on a file it cannot parse: lazypull's transport needs
// the settings, and an error.)
type hostsFile struct {
	Server       string               `toml:"server"`
	Capabilities []string             `toml:"capabilities"`
	SkipVerify   bool                 `toml:"skip_verify"`
	OverridePath bool                 `toml:"override_path"`
	Host         map[string]hostEntry `toml:"host"`
}

type hostEntry struct {
	Capabilities []string `toml:"capabilities"`
	SkipVerify   bool     `toml:"skip_verify"`
	OverridePath bool     `toml:"override_path"`
}

// hostsFileName is the file containerd reads in each host's directory.
const hostsFileName = "hosts.toml"

// loadHosts returns the endpoints for a registry host, in the order they are tried: the
// mirrors of DIR/<host>/hosts.toml (for host:port, DIR/host_port_ or else DIR/host:port;
// else DIR/_default/hosts.toml) as listed, then the server. Without a directory, or
// without a file for the host, the server alone is returned: scheme://host/v2, falling
// back to plain http if fallback (the plain-HTTP rule, Client.PlainHTTP, says which).
// aliases are other directory names for the same host (the default registry is known by
// two names). warn is told about settings the file has that lazypull ignores.
func loadHosts(dir, host string, aliases []string, scheme string, fallback bool, warn func(file string, keys []string)) ([]hostConfig, error) {
	def := hostConfig{url: &url.URL{Scheme: scheme, Host: host, Path: "/v2"}, caps: capPull | capResolve, fallback: fallback}
	if dir == "" {
		return []hostConfig{def}, nil
	}
	if fi, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("hosts directory: %w", err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("hosts directory %s: not a directory", dir)
	}
	// As containerd (docker/config's hostPaths), host:port is looked for as host_port_
	// first, a name every file system takes, then as it is.
	var names []string
	for _, h := range append([]string{host}, aliases...) {
		if i := strings.LastIndex(h, ":"); i > 0 {
			names = append(names, h[:i]+"_"+h[i+1:]+"_")
		}
		names = append(names, h)
	}
	var file string
	for _, name := range append(names, "_default") {
		if strings.ContainsAny(name, `/\`) || name == "." || name == ".." {
			continue
		}
		p := filepath.Join(dir, name, hostsFileName)
		if _, err := os.Stat(p); err == nil {
			file = p
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("hosts directory: %w", err)
		}
	}
	if file == "" {
		return []hostConfig{def}, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("hosts file: %w", err)
	}
	hosts, ignored, err := parseHosts(b, def)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if len(ignored) > 0 && warn != nil {
		warn(file, ignored)
	}
	return hosts, nil
}

// parseHosts parses a hosts.toml. def is the server when the file names none. It returns the
// endpoints in order (mirrors as the file lists them, then the server) and the keys it
// ignored (ca, client, header and the like).
func parseHosts(b []byte, def hostConfig) ([]hostConfig, []string, error) {
	var f hostsFile
	md, err := toml.Decode(string(b), &f)
	if err != nil {
		return nil, nil, err
	}
	var ignored []string
	for _, k := range md.Undecoded() {
		ignored = append(ignored, k.String())
	}
	sort.Strings(ignored)

	// The order of the [host."..."] tables is the order mirrors are tried in; a map loses
	// it, the metadata keeps it.
	var order []string
	seen := map[string]bool{}
	for _, k := range md.Keys() {
		if len(k) == 2 && k[0] == "host" && !seen[k[1]] {
			seen[k[1]] = true
			order = append(order, k[1])
		}
	}

	var out []hostConfig
	for _, raw := range order {
		e := f.Host[raw]
		u, err := endpointURL(raw, e.OverridePath)
		if err != nil {
			return nil, nil, fmt.Errorf("host %q: %w", raw, err)
		}
		caps, err := parseCaps(e.Capabilities)
		if err != nil {
			return nil, nil, fmt.Errorf("host %q: %w", raw, err)
		}
		if caps == 0 {
			continue // push-only
		}
		out = append(out, hostConfig{url: u, caps: caps, skipVerify: e.SkipVerify, mirror: true, named: true})
	}

	server := def
	if f.Server != "" {
		u, err := endpointURL(f.Server, f.OverridePath)
		if err != nil {
			return nil, nil, fmt.Errorf("server %q: %w", f.Server, err)
		}
		server.url = u
		server.named = true
		server.fallback = false // the file says which scheme
	}
	if f.Capabilities != nil {
		caps, err := parseCaps(f.Capabilities)
		if err != nil {
			return nil, nil, fmt.Errorf("server: %w", err)
		}
		server.caps = caps
	}
	server.skipVerify = f.SkipVerify
	if server.caps != 0 {
		out = append(out, server)
	}
	if len(out) == 0 {
		return nil, nil, errors.New("no host with the pull or resolve capability")
	}
	return out, ignored, nil
}

// endpointURL turns a hosts.toml URL into the registry API root. As containerd does, a URL
// without a path gets /v2, one with a path gets /v2 appended unless override_path is set
// (the path is then the API root itself).
func endpointURL(raw string, overridePath bool) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("scheme %q: want http or https", u.Scheme)
	}
	if u.Host == "" {
		return nil, errors.New("no host")
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, errors.New("credentials, query or fragment in a host URL")
	}
	p := strings.TrimSuffix(path.Clean("/"+u.Path), "/")
	switch {
	case p == "":
		p = "/v2"
	case overridePath:
	case !strings.HasSuffix(p, "/v2"):
		p += "/v2"
	}
	return &url.URL{Scheme: u.Scheme, Host: u.Host, Path: p}, nil
}

// parseCaps reads a capabilities list; push is accepted and ignored. A nil list is every
// capability, as in containerd.
func parseCaps(list []string) (capability, error) {
	if list == nil {
		return capPull | capResolve, nil
	}
	var c capability
	for _, s := range list {
		switch s {
		case "pull":
			c |= capPull
		case "resolve":
			c |= capResolve
		case "push":
		default:
			return 0, fmt.Errorf("unknown capability %q (want pull, resolve or push)", s)
		}
	}
	return c, nil
}

// cleartextAllowed reports whether credentials may go to endpoint h over its scheme: https
// always; plain http only to a host on loopback or one a hosts.toml names with http:// (the
// operator said so for that host). --plain-http alone (WithPlainHTTP) is not enough: it
// says how to reach a registry, not that its secrets may cross the network in the clear.
func cleartextAllowed(h hostConfig) bool {
	return h.url.Scheme == "https" || h.named || onLoopback(h.url.Host)
}

// onLoopback reports whether host (host[:port]) names the loopback interface by itself:
// "localhost" or a loopback IP literal (127.0.0.0/8, ::1). Other names are not resolved:
// what a name resolves to is up to whoever answers DNS.
func onLoopback(host string) bool {
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	h = strings.TrimSuffix(strings.Trim(h, "[]"), ".")
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(h)
	return err == nil && ip.Unmap().IsLoopback()
}
