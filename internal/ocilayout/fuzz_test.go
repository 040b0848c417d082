package ocilayout

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"
)

// FuzzIndex feeds hostile index.json files to what Index and Tag do with them (parseIndex,
// updateIndex: the files around them are TestIndexBounds's and TestTag's). Neither may panic; every digest
// Index returns becomes, if anything, a path inside the layout; an index Index reads, Tag
// updates; and after a Tag, Index reads the tag once, the other entries kept.
func FuzzIndex(f *testing.F) {
	h := strings.Repeat("a", 64)
	for _, s := range []string{
		`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + h + `","size":3,"annotations":{"org.opencontainers.image.ref.name":"fuzz"}}]}`,
		`{"manifests":[{"digest":"sha256:` + h + `","annotations":{"org.opencontainers.image.ref.name":"other"},"urls":["x"],"platform":{"os":"linux"}},null,{}]}`,
		`{"manifests":[{"digest":"sha512:` + strings.Repeat("b", 128) + `"}],"annotations":{"a":"b"},"subject":{"digest":"sha256:` + h + `"}}`,
		`{"manifests":[{"digest":"sha256:../../../etc/passwd"}]}`,
		`{"manifests":[{"digest":"../x:` + h + `"}]}`,
		`{"manifests":[` + strings.Repeat(`{}, `, 30) + `{}]}` + strings.Repeat(" ", 2000),
		`{"manifests":[{"Annotations":{"org.opencontainers.image.ref.name":"fuzz"},"annotations":{}}]}`,
		`null`, `[]`, `{"manifests":{}}`, `{"schemaVersion":"2"}`, "",
	} {
		f.Add([]byte(s))
	}
	desc := descOf([]byte(`{"schemaVersion":2}`), types.OCIManifestSchema1)
	l := At("/layout")
	f.Fuzz(func(t *testing.T, data []byte) {
		idx, err := parseIndex(data, "index.json")
		if err != nil {
			if _, uerr := updateIndex(data, desc, "fuzz", "index.json"); uerr == nil {
				t.Fatalf("Index refused what Tag updated: %v", err)
			}
			return
		}
		for _, d := range idx.Manifests {
			p, err := l.BlobPath(d.Digest)
			if err != nil {
				continue
			}
			if rel, err := filepath.Rel("/layout/blobs", p); err != nil || strings.HasPrefix(rel, "..") || strings.Count(rel, "/") != 1 {
				t.Fatalf("digest %q: path %s outside the layout's blobs", d.Digest, p)
			}
		}
		Tags(idx)
		before, tagged := len(idx.Manifests), len(Tagged(idx, "fuzz"))
		b, err := updateIndex(data, desc, "fuzz", "index.json")
		if err != nil {
			if strings.Contains(err.Error(), "objects and arrays") {
				return // compacted, a padded index holds too many objects for its size
			}
			t.Fatalf("Tag of a readable index: %v", err)
		}
		if idx, err = parseIndex(b, "index.json"); err != nil {
			t.Fatalf("Index after Tag: %v", err)
		}
		if got := Tagged(idx, "fuzz"); len(got) != 1 || got[0].Digest != desc.Digest {
			t.Fatalf("after Tag, tagged fuzz: %v", got)
		}
		if len(idx.Manifests) != before-tagged+1 {
			t.Fatalf("after Tag, %d entries; want %d - %d + 1", len(idx.Manifests), before, tagged)
		}
	})
}
