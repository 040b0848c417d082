package daemon

import (
	"errors"
	"testing"

	"lazypull/internal/snapshot"
)

// An image's failure, as its next layers get it: still the failure, and quiet.
func TestReportedErrorIsQuiet(t *testing.T) {
	cause := errors.New("401 Unauthorized")
	err := error(&reportedError{cause})
	if !errors.Is(err, cause) || !errors.Is(err, snapshot.ErrNotRemote) {
		t.Errorf("%v: want it to wrap both the cause and snapshot.ErrNotRemote", err)
	}
}
