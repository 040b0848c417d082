package daemon

import (
	"errors"
	"testing"

	"lazypull/internal/snapshot"
)

// A layer's failure, once Mount has logged and counted it: still the failure, and quiet.
func TestFallbackErrorIsQuiet(t *testing.T) {
	cause := errors.New("401 Unauthorized")
	err := error(&fallbackError{reason: ReasonAuth, err: cause})
	if !errors.Is(err, cause) || !errors.Is(err, snapshot.ErrNotRemote) {
		t.Errorf("%v: want it to wrap both the cause and snapshot.ErrNotRemote", err)
	}
}
