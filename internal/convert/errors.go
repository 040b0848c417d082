package convert

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// describeRemoteError puts a plain cause in front of what ggcr reports for a registry
// request, so the one line a user sees starts with what went wrong rather than a URL.
func describeRemoteError(err error) error {
	if err == nil {
		return nil
	}
	var te *transport.Error
	if errors.As(err, &te) {
		err = &remoteError{msg: strings.Replace(err.Error(), te.Error(), transportMessage(te), 1), err: err}
		switch te.StatusCode {
		case http.StatusUnauthorized:
			return fmt.Errorf("authentication refused (401): registry %s refused the credentials or has none it accepts; "+
				"log in with 'docker login %s' or set up a credential helper in the Docker config (DOCKER_CONFIG, ~/.docker/config.json): %w",
				transportHost(te), transportHost(te), err)
		case http.StatusForbidden:
			return fmt.Errorf("access denied (403): %w", err)
		case http.StatusNotFound:
			return fmt.Errorf("not found (404): %w", err)
		}
		if te.StatusCode >= 500 {
			return fmt.Errorf("registry failed (%d %s): %w", te.StatusCode, http.StatusText(te.StatusCode), err)
		}
		return err
	}
	if strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
		return fmt.Errorf("registry speaks plain http (use --plain-http): %w", err)
	}
	var dnsErr *net.DNSError
	var opErr *net.OpError
	if errors.As(err, &dnsErr) || (errors.As(err, &opErr) && opErr.Op == "dial") {
		return fmt.Errorf("registry unreachable: %w", err)
	}
	return err
}

// remoteError is a registry's error as the user sees it: ggcr's words, but for what
// transportMessage leaves out; it unwraps to ggcr's error.
type remoteError struct {
	msg string
	err error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.err }

// transportMessage is what ggcr says of a failed request, less the errors' "detail",
// which ggcr prints as a Go value (docker-registry's 401 carries
// [map[Action:pull Class: Name:... Type:repository]]): the request, then each error's code
// and message.
func transportMessage(te *transport.Error) string {
	var b strings.Builder
	if te.Request != nil && te.Request.URL != nil {
		u := *te.Request.URL
		u.User, u.RawQuery, u.Fragment = nil, "", ""
		fmt.Fprintf(&b, "%s %s: ", te.Request.Method, u.String())
	}
	if len(te.Errors) == 0 {
		fmt.Fprintf(&b, "%d %s", te.StatusCode, http.StatusText(te.StatusCode))
		return b.String()
	}
	for i, d := range te.Errors {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s: %s", d.Code, d.Message)
	}
	return b.String()
}

// transportHost names the registry a failed request went to.
func transportHost(te *transport.Error) string {
	if te.Request != nil && te.Request.URL != nil {
		return te.Request.URL.Host
	}
	return "the registry"
}
