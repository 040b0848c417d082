package service

import (
	"context"
	"errors"
	"log/slog"

	"lazypull/internal/criproxy"
)

// serveCRIProxy serves CRI's image service at cfg.CRIProxyAddress, forwarding to
// containerd's at cfg.CRIProxyUpstream, and keeps each pull's credentials in creds (the
// registry client's credentials: see Serve) until stop is called.
func serveCRIProxy(cfg CRIProxy, creds *criproxy.Store, log *slog.Logger) (stop func(), err error) {
	if cfg.CRIProxyUpstream == "" {
		return nil, errors.New("-cri-proxy-address needs -cri-proxy-upstream (containerd's CRI socket)")
	}
	if err := CheckSocketPath(cfg.CRIProxyAddress); err != nil {
		return nil, err
	}
	plog := log.With("component", "cri-proxy")
	p, err := criproxy.New(cfg.CRIProxyUpstream, creds, plog)
	if err != nil {
		return nil, err
	}
	l, err := criproxy.Listen(cfg.CRIProxyAddress)
	if err != nil {
		p.Close()
		return nil, err
	}
	served := make(chan error, 1)
	go func() { served <- p.Serve(l) }()
	log.Info("serving CRI image service proxy", "address", cfg.CRIProxyAddress, "upstream", cfg.CRIProxyUpstream)
	return func() {
		p.Close()
		if err := <-served; err != nil {
			plog.Warn("CRI proxy stopped", "err", err)
		}
	}, nil
}

// criCredentials is a CRI proxy's Store as the registry client's credentials
// (fetch.Credentials): what the last pull of an image's repository came with. A
// registry token given alone has no such form: the Docker config is asked instead.
type criCredentials struct{ store *criproxy.Store }

func (c criCredentials) Credentials(_ context.Context, host, repo string) (user, secret string, ok bool, err error) {
	a, ok := c.store.Auth(host, repo)
	switch {
	case !ok:
		return "", "", false, nil
	case a.IdentityToken != "":
		return "", a.IdentityToken, true, nil // fetch's form of an identity token
	case a.Username != "":
		return a.Username, a.Password, true, nil
	}
	return "", "", false, nil
}
