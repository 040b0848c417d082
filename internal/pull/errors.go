package pull

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"

	"lazypull/internal/fetch"
)

// pullError words the failure of `lazypull pull` of ref from registry. A registry that
// refuses the credentials is named with its 401 and where the credentials come from:
// the pull's own manifest request says it as a fetch.Error with the status; containerd's
// resolver either as an unexpected status (credentials sent and refused) or as
// "authorization failed" (none to send).
func pullError(ref, registry string, err error) error {
	const where = "credentials come from the Docker config (DOCKER_CONFIG, ~/.docker/config.json) and its credential helpers"
	var us remoteerrors.ErrUnexpectedStatus
	var fe *fetch.Error
	switch {
	case errors.As(err, &fe) && (fe.StatusCode == http.StatusUnauthorized || fe.StatusCode == http.StatusForbidden):
		// The pull's own manifest request (fetch): sent with the same credentials.
		return fmt.Errorf("pull %s: registry %s refused the credentials or has none it accepts (%d %s; %s): %w",
			ref, registry, fe.StatusCode, http.StatusText(fe.StatusCode), where, err)
	case errors.As(err, &us) && (us.StatusCode == http.StatusUnauthorized || us.StatusCode == http.StatusForbidden):
		return fmt.Errorf("pull %s: registry %s refused the credentials (%d %s; %s): %w",
			ref, registry, us.StatusCode, http.StatusText(us.StatusCode), where, err)
	case errors.Is(err, docker.ErrInvalidAuthorization):
		return fmt.Errorf("pull %s: registry %s asks for credentials (401 %s) and has none it accepts (%s): %w",
			ref, registry, http.StatusText(http.StatusUnauthorized), where, err)
	}
	return fmt.Errorf("pull %s: %w", ref, err)
}
