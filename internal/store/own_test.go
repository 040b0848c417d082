package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"lazypull/format"
	"lazypull/internal/testutil"
)

// put writes files (relative path -> content) under dir; a path ending in / is a directory.
func put(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for rel, content := range files {
		p := filepath.Join(dir, rel)
		if strings.HasSuffix(rel, "/") {
			if err := os.MkdirAll(p, 0o700); err != nil {
				t.Fatal(err)
			}
			continue
		}
		testutil.WriteFile(t, p, []byte(content), 0o600)
	}
}

// exist fails the test for each path under dir that is missing (want true) or present.
func exist(t *testing.T, dir string, want bool, rels ...string) {
	t.Helper()
	for _, rel := range rels {
		_, err := os.Lstat(filepath.Join(dir, rel))
		if got := err == nil; got != want {
			t.Errorf("%s: exists %v, want %v (%v)", rel, got, want, err)
		}
	}
}

// A store pointed at a directory that is not one (say --store /var) refuses it and changes
// nothing in it. On ec65bd9 Open took the directory over and emptied its tmp/.
func TestOpenRefusesWhatIsNotAStore(t *testing.T) {
	dir := t.TempDir()
	put(t, dir, map[string]string{"tmp/keep.txt": "someone's", "tmp/object-1": "not ours either", "log/": ""})
	_, err := Open(dir)
	if err == nil {
		t.Fatal("opened a directory that is not a store")
	}
	for _, want := range []string{dir, "not a lazypull store", versionName, "log, tmp", "nothing was changed"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	exist(t, dir, true, "tmp/keep.txt", "tmp/object-1", "log")
	exist(t, dir, false, versionName, lockName, objectsName)

	// A store's own layout without its version file is refused too, saying how to adopt it.
	other := t.TempDir()
	put(t, other, map[string]string{"objects/": "", "tmp/object-5": "x"})
	if _, err := Open(other); err == nil || !strings.Contains(err.Error(), `write "lazypull store 1"`) {
		t.Fatalf("objects/ without a version file: %v", err)
	}
	exist(t, other, true, "tmp/object-5")

	// What a new file system or the store's own interrupted first Open leaves is no reason
	// to refuse: those become stores.
	for _, names := range []map[string]string{
		{"lost+found/": ""},
		{lockName: ""},
		{"." + versionName + "-123": "lazypull"},
	} {
		d := t.TempDir()
		put(t, d, names)
		s, err := Open(d, WithLogger(slog.New(slog.DiscardHandler)))
		if err != nil {
			t.Fatalf("%v: %v", names, err)
		}
		_ = s.Close()
		exist(t, d, true, versionName)
		exist(t, d, false, "."+versionName+"-123")
	}
}

// Open removes, of what is in a store's directories, only its own temp files: tmp/object-N,
// tmp/chunks-N.log, meta/.HEX-N and .store-version-N. On ec65bd9 it removed everything in
// tmp/.
func TestOpenRemovesOnlyItsOwnTemps(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	d, err := s.PutMeta([]byte(`{"schemaVersion":2}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	h := hex.EncodeToString(d[:])
	ours := []string{"tmp/object-123", "tmp/chunks-45.log", "meta/." + h + "-77", "." + versionName + "-88"}
	theirs := []string{"tmp/object-abc", "tmp/notes.txt", "tmp/object-9/", "meta/README", "meta/." + h, "stats.json", ".stats-99", "tmp/chunks-1.log.bak"}
	files := map[string]string{}
	for _, p := range append(slices.Clone(ours), theirs...) {
		files[p] = "x"
	}
	put(t, dir, files)
	lg, logs := testutil.NewLog(t)
	s = openStore(t, dir, WithLogger(lg))
	exist(t, dir, false, ours...)
	exist(t, dir, true, theirs...)
	for _, want := range []string{"removed temp files", "did not make"} {
		if logs.Count(want) == 0 {
			t.Errorf("log does not mention %q:\n%s", want, logs)
		}
	}
	if st := s.Stats(); st.Meta != 1 {
		t.Errorf("stats %+v: want the one metadata blob", st)
	}
}

func TestIsTempOf(t *testing.T) {
	for _, c := range []struct {
		name, pattern string
		want          bool
	}{
		{"object-123", objectTemp, true},
		{"object-", objectTemp, false},
		{"object-12a", objectTemp, false},
		{"xobject-1", objectTemp, false},
		{"chunks-7.log", chunkLogTemp, true},
		{"chunks-7.logx", chunkLogTemp, false},
		{"chunks-.log", chunkLogTemp, false},
	} {
		if got := isTempOf(c.name, c.pattern); got != c.want {
			t.Errorf("isTempOf(%q, %q) = %v", c.name, c.pattern, got)
		}
	}
	// What os.CreateTemp really makes of the patterns.
	dir := t.TempDir()
	for _, p := range []string{objectTemp, chunkLogTemp, metaTemp(format.Digest{1})} {
		f, err := os.CreateTemp(dir, p)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		if !isTempOf(filepath.Base(f.Name()), p) {
			t.Errorf("%s is not taken as made of %q", f.Name(), p)
		}
	}
}

// Manifests and indexes kept in meta/ count in the store's bytes, show in its stats, and
// are under its bound: the least recently used go, like objects. On ec65bd9 meta/ was
// neither counted nor bounded.
func TestMetaCountedAndBounded(t *testing.T) {
	const blob = 1000
	meta := func(i int) []byte { return []byte(fmt.Sprintf("%0*d", blob, i)) }
	dir := t.TempDir()
	s := openStore(t, dir)
	var ds []format.Digest
	for i := range 4 {
		d, err := s.PutMeta(meta(i))
		if err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	if st := s.Stats(); st.Bytes != 4*blob || st.Meta != 4 || st.MetaBytes != 4*blob || st.Objects != 0 {
		t.Fatalf("stats %+v: want 4 metadata blobs, %d bytes, counted in Bytes", st, 4*blob)
	}
	if _, err := s.PutMeta(meta(0)); err != nil { // kept already: not counted twice
		t.Fatal(err)
	}
	if st := s.Stats(); st.Bytes != 4*blob {
		t.Fatalf("stats %+v after keeping the same blob again", st)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopened with a bound of 6 blobs: counted from the directory; then 10 more blobs
	// keep it at 6, the least recently used going first. Blob 1 is used on the way, and
	// stays.
	s = openStore(t, dir, WithMaxBytes(6*blob))
	if st := s.Stats(); st.Bytes != 4*blob || st.Meta != 4 {
		t.Fatalf("reopened: stats %+v", st)
	}
	for i := 4; i < 14; i++ {
		switch i {
		case 6:
			if _, err := s.Meta(ds[1]); err != nil {
				t.Fatal(err)
			}
		case 10:
			if !s.HasMeta(ds[1]) || s.HasMeta(ds[2]) {
				t.Fatal("blob 1, just used, went before blob 2")
			}
		}
		d, err := s.PutMeta(meta(i))
		if err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	st := s.Stats()
	if st.Bytes > 6*blob || st.Meta != 6 || st.MetaBytes != st.Bytes {
		t.Fatalf("stats %+v: want 6 blobs under the bound of %d bytes", st, 6*blob)
	}
	onDisk, err := os.ReadDir(filepath.Join(dir, metaName))
	if err != nil || len(onDisk) != 6 {
		t.Fatalf("meta/ holds %d files (%v), want 6", len(onDisk), err)
	}
	if !s.HasMeta(ds[13]) || !s.HasMeta(ds[1]) || s.HasMeta(ds[0]) {
		t.Error("the newest blob or the one in use went, or the oldest stayed")
	}
	if evicted := s.Stats().Evictions; evicted != 8 {
		t.Errorf("%d evictions, want 8", evicted)
	}
	if _, err := s.Meta(ds[0]); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("evicted metadata: %v, want ErrNotExist", err)
	}

	// Objects and metadata share the bound: reading a file of 5 blobs' size evicts all
	// but one blob.
	data := testutil.RandBytes(70, 5*blob)
	l := buildLayer(t, tfile{"f", data})
	f := l.files["f"]
	if got := readAll(t, s, newSource(l), f, 1<<20); string(got) != string(data) {
		t.Fatal("wrong bytes")
	}
	s.idle()
	if st := s.Stats(); st.Bytes > 6*blob || st.Objects != 1 || st.Meta != 1 || st.Bytes != 5*blob+blob {
		t.Fatalf("stats %+v: want the file and one blob", st)
	}
	// A blob larger than the bound is not kept: it would evict everything, then itself.
	if _, err := s.PutMeta(make([]byte, 6*blob+1)); err == nil || !strings.Contains(err.Error(), "larger than the store's bound") {
		t.Fatalf("metadata over the bound: %v", err)
	}
	if st := s.Stats(); st.Objects != 1 || st.Meta != 1 {
		t.Fatalf("stats %+v after refusing metadata over the bound", st)
	}
	// Prune drops unpinned metadata as it drops objects.
	if _, err := s.Prune(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Bytes != 0 || st.Meta != 0 {
		t.Fatalf("after prune to 0: %+v", st)
	}
}

// A store as the previous version (ec65bd9) left it, its own debris included, opens as it
// is: objects and metadata are counted, the daemon's stats.json stays, temp files go.
func TestOpenStoreOfPreviousVersion(t *testing.T) {
	dir := t.TempDir()
	obj := testutil.RandBytes(71, 3000)
	od := sha256.Sum256(obj)
	oh := hex.EncodeToString(od[:])
	man := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`)
	md := sha256.Sum256(man)
	mh := hex.EncodeToString(md[:])
	put(t, dir, map[string]string{
		versionName:                    "lazypull store 1\n",
		lockName:                       "",
		"objects/" + oh[:2] + "/" + oh: string(obj),
		"meta/" + mh:                   string(man),
		"tmp/object-4242":              "half",
		"stats.json":                   "{}",
	})
	s := openStore(t, dir)
	st := s.Stats()
	if st.Objects != 1 || st.Meta != 1 || st.Bytes != int64(len(obj)+len(man)) {
		t.Fatalf("stats %+v", st)
	}
	if b, err := s.Meta(format.Digest(md)); err != nil || string(b) != string(man) {
		t.Fatalf("Meta: %q, %v", b, err)
	}
	exist(t, dir, true, "stats.json")
	exist(t, dir, false, "tmp/object-4242")
}
