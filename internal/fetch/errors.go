package fetch

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Error is a request that failed for good: after the retries, or at once when retrying
// could not help. It names the registry (the host that answered last, a mirror or the
// server), the repository, the blob or manifest and the byte range, never credentials or
// signed URLs.
type Error struct {
	Registry   string // host[:port]
	Repo       string
	Digest     string // of the blob or manifest; for a manifest asked for by tag, ":tag"
	Range      Range  // the range asked for; zero for a whole manifest
	StatusCode int    // the last HTTP status, 0 if none came
	Err        error

	temporary bool
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "fetch %s/%s", e.Registry, e.Repo)
	if strings.HasPrefix(e.Digest, ":") {
		b.WriteString(e.Digest)
	} else if e.Digest != "" {
		b.WriteString("@" + e.Digest)
	}
	if e.Range.Len > 0 {
		fmt.Fprintf(&b, " bytes %d-%d", e.Range.Off, e.Range.End()-1)
	}
	if e.StatusCode != 0 && !strings.Contains(errString(e.Err), strconv.Itoa(e.StatusCode)) {
		fmt.Fprintf(&b, ": HTTP %d", e.StatusCode)
	}
	if e.Err != nil {
		b.WriteString(": " + e.Err.Error())
	}
	return b.String()
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Temporary reports whether the failure may pass: the registry failed (5xx), throttled
// (429), could not be reached or cut a body short, and trying again later may work. A 404,
// 401 or 403, or an answer that makes no sense, is not temporary.
func (e *Error) Temporary() bool { return e.temporary }

// errMalformed marks an answer that does not make sense: a Content-Range that covers
// nothing asked for, a broken multipart body, a body longer than it says.
var errMalformed = errors.New("malformed response")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errMalformed, fmt.Sprintf(format, args...))
}

// reqErr is the outcome of one failed request, before it becomes an *Error.
type reqErr struct {
	host       string
	status     int
	err        error
	temporary  bool
	fallback   bool          // the endpoint refused a multi-range request: ask range by range
	absent     bool          // a 404 to a look-up that may find nothing: an answer, not a failure
	retryAfter time.Duration // from a 429 or 503
}

// classify turns an error from sending a request or reading its body into a reqErr.
func classify(host string, err error) *reqErr {
	e := &reqErr{host: host, err: redactURLError(err)}
	var ae *authError
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
	case errors.Is(err, errMalformed):
	case errors.As(err, &ae):
		e.temporary = ae.temporary()
		var te *transport.Error
		if errors.As(err, &te) {
			e.status = te.StatusCode
		}
	default:
		e.temporary = isNetError(err)
	}
	return e
}

// isNetError reports errors of the network or of a body cut short, which a retry may cure.
// TLS failures (a certificate nobody signed, a handshake the server refused) are not.
func isNetError(err error) bool {
	var cve *tls.CertificateVerificationError
	var uae x509.UnknownAuthorityError
	var hne x509.HostnameError
	var cie x509.CertificateInvalidError
	var rhe tls.RecordHeaderError
	var ae tls.AlertError
	if errors.As(err, &cve) || errors.As(err, &uae) || errors.As(err, &hne) || errors.As(err, &cie) ||
		errors.As(err, &rhe) || errors.As(err, &ae) {
		return false
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNABORTED) {
		return true
	}
	// *url.Error is a net.Error itself, whatever it wraps: look inside.
	for {
		var ue *url.Error
		if !errors.As(err, &ue) {
			break
		}
		err = ue.Err
	}
	var ne net.Error
	return errors.As(err, &ne) // *net.OpError, *net.DNSError, timeouts
}

// statusErr reads what a registry says about a failed request (its JSON error document, or
// the start of the body) and classifies the status.
func statusErr(host string, resp *http.Response) *reqErr {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	msg := http.StatusText(resp.StatusCode)
	var doc struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if json.Unmarshal(body, &doc) == nil && len(doc.Errors) > 0 {
		var parts []string
		for _, d := range doc.Errors {
			parts = append(parts, strings.TrimSpace(d.Code+": "+d.Message))
		}
		msg = strings.Join(parts, "; ")
	}
	e := &reqErr{host: host, status: resp.StatusCode, err: fmt.Errorf("%d %s", resp.StatusCode, msg)}
	switch s := resp.StatusCode; {
	case s == http.StatusTooManyRequests, s >= 500 && s != http.StatusNotImplemented && s != http.StatusHTTPVersionNotSupported:
		e.temporary = true
		e.retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"))
	}
	return e
}

// parseRetryAfter reads a Retry-After of delay seconds or an HTTP date; 0 if none.
func parseRetryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil && n >= 0 {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return d
		}
	}
	return 0
}

// redactURLError drops the query (signed object storage URLs carry their signature
// there) and any user info from the URL a *url.Error names.
func redactURLError(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	return &url.Error{Op: ue.Op, URL: redactURL(ue.URL), Err: ue.Err}
}

func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparseable URL)"
	}
	u.User = nil
	u.RawQuery, u.ForceQuery, u.Fragment = "", false, ""
	return u.String()
}
