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
		switch te.StatusCode {
		case http.StatusUnauthorized:
			return fmt.Errorf("authentication refused (401; check docker login or credential helper): %w", err)
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
