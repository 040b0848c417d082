package service

import (
	"errors"
	"fmt"
	"net/http"

	"lazypull/internal/fetch"
)

// credentialsHint adds to a registry's refusal (401, 403) what the user can do about it:
// where lazypull's credentials come from.
func credentialsHint(err error) error {
	var fe *fetch.Error
	if !errors.As(err, &fe) || (fe.StatusCode != http.StatusUnauthorized && fe.StatusCode != http.StatusForbidden) {
		return err
	}
	return fmt.Errorf("%w; registry %s refused the credentials or has none it accepts: they come from the Docker config "+
		"(DOCKER_CONFIG, ~/.docker/config.json) and its credential helpers ('docker login %s')", err, fe.Registry, fe.Registry)
}
