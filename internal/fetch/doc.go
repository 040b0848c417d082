// Package fetch reads images from OCI distribution registries for the lazy mount: manifests
// whole, blobs by byte ranges. Data flows registry -> fetch -> store -> filesystem; this
// package knows nothing of chunks or caches, only of ranges of blobs.
//
// # Use
//
//	c, err := fetch.NewClient(fetch.WithHostsDir(dir)) // once, by the composition root
//	reg, err := c.Open("127.0.0.1:5000/python:3.12")   // per image
//	img, err := reg.Resolve(ctx, "", nil)               // the tag given to Open, this platform
//	layer := reg.Layer(img.Manifest.Layers[0])
//	loc, err := format.LocationFromAnnotations(img.Manifest.Layers[0].Annotations)
//	rc, err := layer.OpenRange(ctx, loc.Offset, loc.Size) // one request, read as it comes
//	ix, payload, err := format.ReadIndexFrom(rc, layer.Size(), loc)
//	err = layer.Fetch(ctx, ranges, func(r fetch.Range, b []byte) error { ... })
//
// # The client
//
// A Client is made once per process, by whoever composes it (a command, the snapshotter),
// and every image's Registry is opened from it (Client.Open). It owns what they share: the
// HTTP transport and its connections, connections dialed ahead (Client.Predial), the bound
// on requests in flight (WithMaxConcurrency, across all its Registries), credentials
// (WithCredentials, asked before the Docker config: the seam for credentials handed over in
// memory, see Credentials), metrics, logger, the hosts directory and the plain-HTTP rule
// (Client.PlainHTTP: http with WithPlainHTTP; else https, a registry on loopback that
// answers TLS with plain HTTP being spoken to over http). Code that speaks to registries
// through go-containerregistry's remote uses Client.Transport and Client.Keychain, and so
// reaches them the same way. The package has no globals.
//
// # Requests
//
// A Registry serves one repository. Its endpoints are the mirrors of a containerd hosts
// directory (WithHostsDir), tried in the order the file lists them, then the server; an
// endpoint is used for blobs and manifests by digest if it has the pull capability, for
// tags if it has resolve. Every request (blob or manifest, any endpoint, any Registry of
// the Client) takes a place among at most WithMaxConcurrency in flight.
//
// Blob.ReadAt and Blob.OpenRange are one Range GET each: no HEAD, no probe of the blob, no ping of the registry.
// Authentication happens on demand: a request goes out without credentials, and only when
// the endpoint answers 401 with a challenge do the credentials get looked up, the token get
// fetched (ggcr's token exchange), and the request get sent again. A 401 to a request sent
// with them (the token expired, or the credentials changed at their source) has them
// looked up again and a new token fetched, once per request, shared by the requests that
// ran into it together: tokens that live seconds serve reads hours later.
// Credentials go only to the endpoint's own origin (scheme, host, port), never to where a
// redirect leads (object storage, or the same host over plain http): the endpoint's
// transport checks the origin of every request before ggcr's adds a header (ggcr checks
// the host only; Go's client copies headers to the same domain whatever the scheme, but
// the header is never on the client's request). A redirect from https to anything else is
// refused. Over plain http, credentials go only to a registry on loopback (localhost,
// 127.0.0.0/8, ::1, by name, never by resolving) or one a hosts.toml names with http://;
// --plain-http alone makes a registry that asks for credentials fail with an error that
// says so. Anonymous access is not affected.
//
// A registry that stops sending cannot hold a request for ever: every request (manifest,
// referrers, blob range, multipart answer, whole-blob stream) is cancelled when no byte of
// its answer comes for WithIdleTimeout (30 s by default), while its headers are awaited or
// while a Read of its body waits; that failure is temporary, retried, then reported as
// "no bytes for 30s" with the registry, digest and range.
//
// Blob.Fetch takes many ranges. It sorts them, merges those that touch or overlap, reads
// through small holes while they stay under an eighth of the bytes asked for (so the bytes
// fetched stay near those needed), and packs what is left into multi-range requests
// ("Range: bytes=a-b,c-d", answered with multipart/byteranges) of at most 64 ranges and,
// by default, 16 MiB. An endpoint that answers one of those otherwise (200 with the whole
// blob, 206 with the first range only, 416, 400, or a multipart body that does not hold
// together) is asked range by range from then on, for good; what the answer did serve is
// kept. A 200 to a Range request is served from the start of the body when the bytes asked
// for lie within the first 16 MiB (WithCoalescing), else it is an error: no byte is handed
// out that did not come from a part whose Content-Range covers it.
//
// Identical ranges asked for at the same time, by any callers through any Blob of the same
// digest, share one request; the request goes on while anyone still waits on it, whoever
// started it. (Ranges that merely overlap are not shared: that is the store's business.)
//
// # Failures
//
// Failures that may pass — 5xx but 501 and 505, 429 (honouring Retry-After up to a
// minute), connection errors, bodies cut short — are retried with exponential backoff and
// jitter (WithRetry), for what is still missing only. Then, or at once for the others
// (404, 401, 403, answers that make no sense), the caller gets an *Error naming the
// registry, repository, digest and range, with the HTTP status and Temporary. Errors and
// log lines carry neither credentials nor the query of signed redirect URLs.
//
// # Counting
//
// Stats returns running totals (requests, bytes read, bytes delivered, retries, failed
// requests, fallbacks); Collectors returns Prometheus collectors
// (lazypull_fetch_requests_total, lazypull_fetch_bytes_total, lazypull_fetch_seconds,
// lazypull_fetch_retries_total) for the caller to register; nothing is registered
// globally.
package fetch
