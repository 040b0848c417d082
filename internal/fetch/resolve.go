package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"runtime"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/internal/jsonlimit"
)

// maxManifestSize is the largest manifest or index Resolve reads (containerd's limit).
const maxManifestSize = 4 << 20

// manifestAccept is what Resolve accepts, image manifests and indexes of both kinds.
var manifestAccept = strings.Join([]string{
	string(types.OCIManifestSchema1), string(types.OCIImageIndex),
	string(types.DockerManifestSchema2), string(types.DockerManifestList),
}, ", ")

// Image is an image manifest a reference resolved to.
type Image struct {
	// Name is the canonical reference of the image manifest: host/repository@digest.
	Name string
	// Descriptor describes the image manifest: digest, size and media type, plus the
	// platform and annotations its index entry had when it was picked from an index.
	Descriptor v1.Descriptor
	// Manifest is the parsed manifest: Config and Layers are the descriptors of the
	// config and the layers (digest, size, media type, annotations), in order.
	Manifest *v1.Manifest
	// RawManifest is the manifest as the registry sent it (Descriptor.Digest is its hash).
	RawManifest []byte
	// Index describes the index the manifest was picked from; nil when the reference
	// named an image manifest.
	Index *v1.Descriptor
}

// DefaultPlatform is the platform Resolve picks from an index when given none: this
// process's OS and architecture.
func DefaultPlatform() v1.Platform {
	return v1.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
}

// Resolve fetches the manifest ref names and returns the image manifest: the manifest
// itself, or, when ref names an index, the first entry of the index for platform (nil for
// DefaultPlatform; an empty variant matches any). ref is a tag, a digest ("sha256:..."),
// a full reference to this repository, or "" for the tag or digest given to New (latest
// if none). Manifests are checked against their digest: the one asked for, the one the
// index lists, or (for a tag) the registry's Docker-Content-Digest when it sends one.
// Tags are resolved through endpoints with the resolve capability, digests through those
// with pull.
func (r *Registry) Resolve(ctx context.Context, ref string, platform *v1.Platform) (*Image, error) {
	id, byDigest, err := r.parseRef(ref)
	if err != nil {
		return nil, err
	}
	desc, raw, err := r.getManifest(ctx, id, byDigest, false)
	if err != nil {
		return nil, err
	}
	img := &Image{}
	switch mt := desc.MediaType; {
	case mt.IsIndex():
		idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return nil, r.manifestErr(desc.Digest.String(), fmt.Errorf("parse index: %w", err))
		}
		want := DefaultPlatform()
		if platform != nil {
			want = *platform
		}
		child, err := pickPlatform(idx, want)
		if err != nil {
			return nil, r.manifestErr(desc.Digest.String(), err)
		}
		cdesc, craw, err := r.getManifest(ctx, child.Digest.String(), true, false)
		if err != nil {
			return nil, err
		}
		if cdesc.Size != child.Size {
			return nil, r.manifestErr(child.Digest.String(), fmt.Errorf("manifest of %d bytes, the index says %d", cdesc.Size, child.Size))
		}
		if !cdesc.MediaType.IsImage() {
			return nil, r.manifestErr(child.Digest.String(), fmt.Errorf("index entry for %s is a %s, not an image manifest", want.String(), cdesc.MediaType))
		}
		d := child
		d.MediaType = cdesc.MediaType
		img.Index, img.Descriptor, raw = &desc, d, craw
	case mt.IsImage():
		img.Descriptor = desc
	case mt.IsSchema1():
		return nil, r.manifestErr(desc.Digest.String(), fmt.Errorf("a Docker schema 1 manifest (%s): not supported", mt))
	default:
		return nil, r.manifestErr(desc.Digest.String(), fmt.Errorf("media type %q is neither an image manifest nor an index", mt))
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, r.manifestErr(img.Descriptor.Digest.String(), fmt.Errorf("parse manifest: %w", err))
	}
	img.Manifest, img.RawManifest = m, raw
	img.Name = r.host + "/" + r.repo + "@" + img.Descriptor.Digest.String()
	return img, nil
}

// FetchManifest fetches the manifest or index ref names (as Resolve takes it) in one request and
// returns it as the registry sent it, checked against its digest as Resolve checks, with
// its descriptor: an index is not looked into. A caller that picks the platform itself
// (containerd's pull does) uses it instead of Resolve.
func (r *Registry) FetchManifest(ctx context.Context, ref string) (v1.Descriptor, []byte, error) {
	id, byDigest, err := r.parseRef(ref)
	if err != nil {
		return v1.Descriptor{}, nil, err
	}
	return r.getManifest(ctx, id, byDigest, false)
}

func (r *Registry) manifestErr(digest string, err error) *Error {
	return &Error{Registry: r.host, Repo: r.repo, Digest: digest, Err: err}
}

// parseRef turns Resolve's argument into a tag or digest and says which.
func (r *Registry) parseRef(ref string) (string, bool, error) {
	var nref name.Reference
	var err error
	switch {
	case ref == "":
		nref = r.ref
	case strings.HasPrefix(ref, "@"):
		nref, err = name.NewDigest(r.host + "/" + r.repo + ref)
	case strings.Contains(ref, "/"):
		nref, err = name.ParseReference(ref)
		if err == nil && (nref.Context().RegistryStr() != r.host || nref.Context().RepositoryStr() != r.repo) {
			return "", false, fmt.Errorf("fetch: reference %q is not in %s/%s", ref, r.host, r.repo)
		}
	case strings.Contains(ref, ":"):
		nref, err = name.NewDigest(r.host + "/" + r.repo + "@" + ref)
	default:
		nref, err = name.NewTag(r.host + "/" + r.repo + ":" + ref)
	}
	if err != nil {
		return "", false, fmt.Errorf("fetch: reference %q: %w", ref, err)
	}
	_, byDigest := nref.(name.Digest)
	return nref.Identifier(), byDigest, nil
}

// pickPlatform returns the first image manifest of an index that serves platform.
func pickPlatform(idx *v1.IndexManifest, want v1.Platform) (v1.Descriptor, error) {
	var have []string
	for _, d := range idx.Manifests {
		if !d.MediaType.IsImage() {
			continue
		}
		if d.Platform == nil {
			have = append(have, "(no platform)")
			continue
		}
		if d.Platform.Satisfies(want) {
			return d, nil
		}
		have = append(have, d.Platform.String())
	}
	sort.Strings(have)
	return v1.Descriptor{}, fmt.Errorf("no image for platform %s in the index (it has: %s)", want.String(), strings.Join(have, ", "))
}

// getManifest fetches a manifest by tag or digest, trying each endpoint in order and
// retrying failures that may pass, and checks it against its digest.
// getManifest fetches the manifest id, a tag or (byDigest) a digest. With lookup, the
// manifest may well not be there (a referrers tag): a 404 is then an answer, not a failed
// request, and is counted as such (outcome not_found, not in Stats.Errors).
func (r *Registry) getManifest(ctx context.Context, id string, byDigest, lookup bool) (v1.Descriptor, []byte, error) {
	caps, what := capResolve, ":"+id
	if byDigest {
		caps, what = capPull, id
	}
	eps := r.endpointsFor(caps)
	if len(eps) == 0 {
		return v1.Descriptor{}, nil, r.toError(&reqErr{host: r.host, err: errNoEndpoint}, what, Range{})
	}
	var desc v1.Descriptor
	var raw []byte
	err := r.retry(ctx, "manifest", func() []any { return []any{"manifest", id} }, func() *reqErr {
		return r.inTurn(ctx, eps, []any{"manifest", id}, func(e *endpoint) *reqErr {
			d, b, err := r.manifestFrom(ctx, e, id, byDigest, lookup)
			if err == nil {
				desc, raw = d, b
			}
			return err
		})
	})
	if err != nil {
		return v1.Descriptor{}, nil, r.toError(err, what, Range{})
	}
	return desc, raw, nil
}

// readDocument reads the JSON document an answer from host carries (a manifest, a
// referrers index; what names it in errors): at most maxManifestSize bytes, and checked
// with jsonlimit before anything decodes it, which could take a thousand times its size.
func readDocument(host string, resp *http.Response, body io.Reader, what string) ([]byte, *reqErr) {
	raw, err := io.ReadAll(io.LimitReader(body, maxManifestSize+1))
	if err != nil {
		re := classify(host, unexpected(err))
		re.status = resp.StatusCode
		return nil, re
	}
	if len(raw) > maxManifestSize {
		return nil, &reqErr{host: host, status: resp.StatusCode, err: malformed("%s larger than %d bytes", what, maxManifestSize)}
	}
	if err := jsonlimit.Check(raw, what); err != nil {
		return nil, &reqErr{host: host, status: resp.StatusCode, err: malformed("%v", err)}
	}
	return raw, nil
}

// manifestFrom sends one manifest request to one endpoint.
func (r *Registry) manifestFrom(ctx context.Context, e *endpoint, id string, byDigest, lookup bool) (desc v1.Descriptor, raw []byte, rerr *reqErr) {
	tr, rerr := r.begin(ctx, e, kindManifest)
	if rerr != nil {
		return desc, nil, rerr
	}
	defer func() { tr.end(rerr) }()

	resp, err := r.do(ctx, e, "manifests/"+id, func(req *http.Request) {
		req.Header.Set("Accept", manifestAccept)
	})
	if err != nil {
		return desc, nil, classify(e.host, err)
	}
	defer resp.Body.Close()
	body := tr.read(resp.Body)
	if resp.StatusCode != http.StatusOK {
		rerr = statusErr(e.host, resp)
		rerr.absent = lookup && resp.StatusCode == http.StatusNotFound
		return desc, nil, rerr
	}
	if raw, rerr = readDocument(e.host, resp, body, "manifest"); rerr != nil {
		return desc, nil, rerr
	}
	fail := func(format string, args ...any) (v1.Descriptor, []byte, *reqErr) {
		return v1.Descriptor{}, nil, &reqErr{host: e.host, status: resp.StatusCode, err: malformed(format, args...)}
	}
	if resp.ContentLength >= 0 && resp.ContentLength != int64(len(raw)) {
		return fail("manifest of %d bytes, Content-Length %d", len(raw), resp.ContentLength)
	}
	sum := sha256.Sum256(raw)
	digest := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	if byDigest {
		if digest.String() != id {
			return fail("manifest has digest %s, asked for %s", digest, id)
		}
	} else if h, err := v1.NewHash(resp.Header.Get("Docker-Content-Digest")); err == nil && h.Algorithm == "sha256" && h != digest {
		return fail("manifest has digest %s, the registry says %s", digest, h)
	}
	// The media type inside the manifest is covered by its digest; the header is not.
	var probe struct {
		MediaType types.MediaType `json:"mediaType"`
	}
	if err := json.Unmarshal(raw, &probe); err != nil {
		return fail("manifest is not JSON: %v", err)
	}
	mt := probe.MediaType
	if mt == "" {
		ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		mt = types.MediaType(ct)
	}
	return v1.Descriptor{MediaType: mt, Size: int64(len(raw)), Digest: digest}, raw, nil
}
