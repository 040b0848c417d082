package fetch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Referrers lists the manifests whose subject is the manifest with digest subject (OCI
// 1.1), of the given artifactType (all when ""). It asks the referrers API
// (GET /v2/REPO/referrers/DIGEST); a registry without it (404, 400, 405, 406, or an
// answer that is not an image index: Debian's docker-registry 2.8, for one) is read
// through the referrers tag schema instead: the index tagged sha256-HEX, which pushers
// keep for such registries. No referrers is an empty list and no error.
//
// Concurrent look-ups of one subject share one listing, whatever type each filters by: an
// image's profile look-up and its index look-up, which start together as it opens, cost
// one round trip and two requests, not two of each. A caller that gives up (ctx) leaves
// the listing to the others; a listing that ended is not kept.
func (r *Registry) Referrers(ctx context.Context, subject v1.Hash, artifactType string) ([]v1.Descriptor, error) {
	if subject.Algorithm != "sha256" || len(subject.Hex) != 64 {
		return nil, fmt.Errorf("fetch: referrers of %q: want a sha256 digest", subject)
	}
	r.mu.Lock()
	c := r.listings[subject]
	if c == nil {
		c = &listing{done: make(chan struct{})}
		if r.listings == nil {
			r.listings = map[v1.Hash]*listing{}
		}
		r.listings[subject] = c
		go func() {
			c.refs, c.err = r.referrers(context.WithoutCancel(ctx), subject)
			r.mu.Lock()
			delete(r.listings, subject)
			r.mu.Unlock()
			close(c.done)
		}()
	}
	c.callers++
	r.mu.Unlock()
	select {
	case <-c.done:
	case <-ctx.Done():
		return nil, fmt.Errorf("referrers of %s: %w", subject, context.Cause(ctx))
	}
	if c.err != nil {
		return nil, c.err
	}
	var out []v1.Descriptor
	for _, d := range c.refs {
		// The API may ignore a filter (it says so in OCI-Filters-Applied); the tag schema
		// has none; and the listing is shared by look-ups of every type.
		if artifactType == "" || d.ArtifactType == artifactType {
			out = append(out, d)
		}
	}
	return out, nil
}

// listing is a referrers listing in progress, shared by the look-ups of its subject.
type listing struct {
	done    chan struct{}
	callers int             // the look-ups it served or serves (under Registry.mu)
	refs    []v1.Descriptor // every referrer, of any type
	err     error
}

// referrers lists every referrer of subject, of any type (Referrers).
func (r *Registry) referrers(ctx context.Context, subject v1.Hash) ([]v1.Descriptor, error) {
	// The tag schema is asked at the same time as the API, not after it says it has none:
	// registries without the API (docker-registry 2.8) answer in one round trip instead of
	// two, for one small request wasted where the API answers. That round trip is on the
	// way to every prefetch.
	type tagAnswer struct {
		raw []byte
		err error
	}
	tctx, cancel := context.WithCancel(ctx)
	defer cancel()
	tagCh := make(chan tagAnswer, 1)
	go func() {
		_, raw, err := r.getManifest(tctx, subject.Algorithm+"-"+subject.Hex, false, true)
		tagCh <- tagAnswer{raw, err}
	}()
	raw, api, err := r.referrersAPI(ctx, subject)
	if err != nil {
		return nil, err
	}
	if api {
		cancel()
	} else {
		t := <-tagCh
		var fe *Error
		if errors.As(t.err, &fe) && fe.StatusCode == http.StatusNotFound {
			return nil, nil
		}
		if t.err != nil {
			return nil, fmt.Errorf("referrers of %s (tag schema): %w", subject, t.err)
		}
		raw = t.raw
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("referrers of %s: not an image index: %w", subject, err)
	}
	if idx.MediaType != "" && idx.MediaType != types.OCIImageIndex {
		return nil, fmt.Errorf("referrers of %s: a %q, not an OCI image index", subject, idx.MediaType)
	}
	return idx.Manifests, nil
}

// referrersAPI asks the endpoints' referrers API. api is false when the registry has none.
func (r *Registry) referrersAPI(ctx context.Context, subject v1.Hash) (raw []byte, api bool, err error) {
	eps := r.endpointsFor(capPull)
	if len(eps) == 0 {
		return nil, false, r.toError(&reqErr{host: r.host, err: errNoEndpoint}, subject.String(), Range{})
	}
	rerr := r.retry(ctx, "referrers", func() []any { return []any{"subject", subject.String()} }, func() *reqErr {
		var errs []*reqErr
		for _, e := range eps {
			b, ok, rerr := r.referrersFrom(ctx, e, subject)
			if rerr == nil {
				if ok {
					raw, api = b, true
					return nil
				}
				continue // this endpoint has no API: ask the next, then the tag schema
			}
			errs = append(errs, rerr)
			if ctx.Err() != nil {
				break
			}
		}
		return joinErrs(errs) // nil when no endpoint failed: none has the API
	})
	if rerr != nil {
		return nil, false, fmt.Errorf("referrers: %w", r.toError(rerr, subject.String(), Range{}))
	}
	return raw, api, nil
}

// referrersFrom sends one referrers request to one endpoint.
func (r *Registry) referrersFrom(ctx context.Context, e *endpoint, subject v1.Hash) (raw []byte, api bool, rerr *reqErr) {
	tr, rerr := r.begin(ctx, e, kindManifest)
	if rerr != nil {
		return nil, false, rerr
	}
	defer func() { tr.end(rerr) }()
	// Unfiltered: the listing serves look-ups of every type (Referrers).
	p := "referrers/" + subject.String()
	resp, err := r.do(ctx, e, p, func(req *http.Request) {
		req.Header.Set("Accept", string(types.OCIImageIndex))
	})
	if err != nil {
		return nil, false, classify(e.host, err)
	}
	defer resp.Body.Close()
	body := tr.read(resp.Body)
	ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	switch {
	case resp.StatusCode == http.StatusNotFound, resp.StatusCode == http.StatusBadRequest,
		resp.StatusCode == http.StatusMethodNotAllowed, resp.StatusCode == http.StatusNotAcceptable,
		resp.StatusCode == http.StatusOK && ct != string(types.OCIImageIndex):
		_, _ = io.Copy(io.Discard, io.LimitReader(body, 64<<10))
		return nil, false, nil
	case resp.StatusCode != http.StatusOK:
		return nil, false, statusErr(e.host, resp)
	}
	if raw, rerr = readDocument(e.host, resp, body, "referrers index"); rerr != nil {
		return nil, false, rerr
	}
	return raw, true, nil
}

// Manifest fetches a manifest of the repository by digest, checked against it, with its
// media type (at most 4 MiB, as any manifest).
func (r *Registry) Manifest(ctx context.Context, digest v1.Hash) (v1.Descriptor, []byte, error) {
	if digest.Algorithm != "sha256" || len(digest.Hex) != 64 {
		return v1.Descriptor{}, nil, fmt.Errorf("fetch: manifest %q: want a sha256 digest", digest)
	}
	if strings.ContainsAny(digest.Hex, "/?#") {
		return v1.Descriptor{}, nil, fmt.Errorf("fetch: manifest %q: not a digest", digest)
	}
	return r.getManifest(ctx, digest.String(), true, false)
}
