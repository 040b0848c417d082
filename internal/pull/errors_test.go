package pull

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"

	"lazypull/internal/fetch"
)

func TestPullErrorNamesRegistryAnd401(t *testing.T) {
	const ref, reg = "127.0.0.1:5000/app:v1", "127.0.0.1:5000"
	refused := fmt.Errorf("failed to resolve reference %q: %w", ref, remoteerrors.ErrUnexpectedStatus{
		Status: "401 Unauthorized", StatusCode: 401, RequestMethod: "HEAD", RequestURL: "http://" + reg + "/v2/app/manifests/v1"})
	none := fmt.Errorf("failed to resolve reference %q: pull access denied: %w", ref, fmt.Errorf("%w: no basic auth credentials", docker.ErrInvalidAuthorization))
	other := errors.New("connection refused")
	fetched := &fetch.Error{Registry: reg, Repo: "app", Digest: ":v1", StatusCode: 401, Err: errors.New("UNAUTHORIZED: authentication required")}
	for _, tc := range []struct {
		err  error
		want []string
	}{
		{refused, []string{"pull " + ref + ": registry " + reg + " refused the credentials (401 Unauthorized;", "DOCKER_CONFIG", "HEAD request"}},
		{none, []string{"registry " + reg + " asks for credentials (401 Unauthorized)", "no basic auth credentials"}},
		{other, []string{"pull " + ref + ": connection refused"}},
		{fetched, []string{"pull " + ref + ": registry " + reg + " refused the credentials or has none it accepts (401 Unauthorized;", "DOCKER_CONFIG", "app:v1"}},
	} {
		got := pullError(ref, reg, tc.err)
		if !errors.Is(got, tc.err) {
			t.Errorf("%v does not wrap %v", got, tc.err)
		}
		for _, w := range tc.want {
			if !strings.Contains(got.Error(), w) {
				t.Errorf("%q does not say %q", got, w)
			}
		}
	}
}
