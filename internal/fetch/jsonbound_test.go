package fetch

import (
	"errors"
	"lazypull/internal/testutil"
	"net/http"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// emptyObjects is a JSON document of about 4 MiB (the largest a registry may send): the
// given prefix, empty objects, the suffix. Each "{}" decodes into a whole descriptor.
func emptyObjects(prefix, suffix string) []byte {
	n := (maxManifestSize - len(prefix) - len(suffix)) / 3
	return []byte(prefix + strings.Repeat("{},", n-1) + "{}" + suffix)
}

// TestJSONFromRegistryBounded: an index, a manifest or a referrers index of 4 MiB of
// empty descriptors decoded into about 1 GiB; each is refused as malformed before it is
// decoded, naming what it is, and reading it allocates a few times its size.
func TestJSONFromRegistryBounded(t *testing.T) {
	f := newFake("r")
	const subject = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	f.addManifest("idx", "application/vnd.oci.image.index.v1+json", emptyObjects(`{"schemaVersion":2,"manifests":[`, `]}`))
	f.addManifest("img", "application/vnd.oci.image.manifest.v1+json", emptyObjects(`{"schemaVersion":2,"config":{},"layers":[`, `]}`))
	f.addManifest("sha256-"+subject[7:], "application/vnd.oci.image.index.v1+json", emptyObjects(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`, `]}`))
	_, host := serve(t, f)
	reg, _ := newReg(t, host, "r")
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/referrers/") {
			w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
			w.Write(emptyObjects(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`, `]}`))
			return
		}
		f.ServeHTTP(w, r)
	})
	_, apiHost := serve(t, api)
	apiReg, _ := newReg(t, apiHost, "r")
	for _, c := range []struct {
		name string
		run  func() error
		want string
	}{
		{"index", func() error { _, err := reg.Resolve(t.Context(), "idx", nil); return err }, "manifest: "},
		{"manifest", func() error { _, err := reg.Resolve(t.Context(), "img", nil); return err }, "manifest: "},
		{"referrers-tag", func() error {
			h, _ := v1.NewHash(subject)
			_, err := reg.Referrers(t.Context(), h, "")
			return err
		}, "manifest: "},
		{"referrers-api", func() error {
			h, _ := v1.NewHash(subject)
			_, err := apiReg.Referrers(t.Context(), h, "")
			return err
		}, "referrers index: "},
	} {
		t.Run(c.name, func(t *testing.T) {
			var err error
			n := testutil.Allocated(func() { err = c.run() })
			t.Logf("allocated %d bytes: %v", n, err)
			if err == nil || !errors.Is(err, errMalformed) || !strings.Contains(err.Error(), c.want+"") || !strings.Contains(err.Error(), "objects and arrays") {
				t.Fatalf("4 MiB of empty descriptors: %v", err)
			}
			if n > 64<<20 {
				t.Fatalf("reading a 4 MiB document allocated %d bytes", n)
			}
		})
	}
}
