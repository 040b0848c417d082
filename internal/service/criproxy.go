package service

import (
	"context"
	"errors"
	"iter"
	"log/slog"

	"lazypull/internal/criproxy"
	"lazypull/internal/keeper"
)

// serveCRICredentials serves the CRI proxy of cfg, which keeps kubelet's credentials in
// creds. With a keeper (kc not nil), the credentials survive a restart of the snapshotter
// in the keeper's memory: those it holds for an earlier snapshotter go back into creds
// first, and each change of creds is handed to it until close. A keeper of an older
// lazypull keeps none: that is logged, and the snapshotter goes on without.
func serveCRICredentials(n *node, cfg CRIProxy, creds *criproxy.Store, kc *keeper.Client, log *slog.Logger) error {
	if kc != nil {
		plog := log.With("component", "cri-proxy")
		m := criproxy.NewMirror(creds, kc, plog)
		vs, err := kc.ListValues()
		switch {
		case errors.Is(err, errors.ErrUnsupported): // the mirror says so
		case err != nil:
			plog.Warn("cannot take back the CRI credentials the keeper holds", "err", err)
		default:
			if k := m.Restore(keeperValues(vs)); k > 0 {
				plog.Info("CRI credentials restored from the keeper", "repositories", k)
			}
		}
		// Registered before the proxy's stop, so run after it: the last pulls are handed over.
		n.goUntilClose(m.Run)
	}
	stop, err := serveCRIProxy(cfg, creds, log)
	if err != nil {
		return err
	}
	n.onClose(stop)
	return nil
}

func keeperValues(vs []keeper.Value) iter.Seq2[string, []byte] {
	return func(yield func(string, []byte) bool) {
		for _, v := range vs {
			if !yield(v.Key, v.Value) {
				return
			}
		}
	}
}

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
