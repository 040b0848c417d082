package convert

import (
	"strings"
	"testing"
)

// TestLocationPathWithoutPrefix: a directory path without oci: is refused, with the
// spelling that names a layout, rather than taken for a Docker Hub repository.
func TestLocationPathWithoutPrefix(t *testing.T) {
	for _, s := range []string{"/srv/images/app:v1", "/srv/images/app", "./app:v1", "../app"} {
		_, err := parseLocation(s, false)
		if err == nil || !strings.Contains(err.Error(), "an OCI image layout wants oci:/abs/path[:tag] (here oci:"+s+")") {
			t.Errorf("%q: %v", s, err)
		}
	}
	for _, s := range []string{"oci:/srv/images/app:v1", "registry.example:5000/app:v1", "app"} {
		if _, err := parseLocation(s, false); err != nil {
			t.Errorf("%q: %v", s, err)
		}
	}
}
