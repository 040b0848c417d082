package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"

	"lazypull/format"
	"lazypull/internal/testutil"
	"lazypull/internal/testutil/layertest"
)

// craftedImage pushes the converted python image with one layer's index edited as a
// hostile producer would: the regular files a and b swap names, so that a is served with
// b's content. The layer blob is rewritten (same frames, the new index and footer) and
// pushed, its descriptor gets the new digest, size and index annotations, and the
// manifest is pushed under a tag of its own; the config is unchanged, and still right:
// the tar stream is the original's. Every digest in the chain checks out.
func (e *env) craftedImage(t *testing.T, lazy, a, b string) string {
	t.Helper()
	return e.editedImage(t, lazy, "crafted", func(ix *format.Index) bool {
		ea, oka := ix.Lookup(a)
		eb, okb := ix.Lookup(b)
		if !oka || !okb {
			return false
		}
		if !ea.IsRegular() || !eb.IsRegular() || ea.Size == 0 || eb.Size == 0 {
			t.Fatalf("%s and %s are not both files with content", a, b)
		}
		ea.Name, eb.Name = b, a
		return true
	})
}

// editedImage pushes the converted image lazy under tag with the index of its topmost
// layer that edit changes (edit reports whether it did) rewritten into the layer blob and
// its annotations, as craftedImage says.
func (e *env) editedImage(t *testing.T, lazy, tag string, edit func(ix *format.Index) bool) string {
	t.Helper()
	m, layers := manifestLayers(t, remoteImage(t, lazy))
	repo := lazy[:strings.LastIndex(lazy, ":")]
	for i := len(layers) - 1; i >= 0; i-- {
		desc := m.Layers[i]
		loc, err := format.LocationFromAnnotations(desc.Annotations)
		if err != nil {
			t.Fatal(err)
		}
		blob := testutil.Compressed(t, layers[i])
		ix, err := format.DecodeIndex(blob[loc.Offset : loc.Offset+loc.Size])
		if err != nil {
			t.Fatal(err)
		}
		if !edit(ix) {
			continue
		}
		payload, err := ix.Encode()
		if err != nil {
			t.Fatal(err)
		}
		nb, ann := layertest.WithIndex(blob[:loc.Offset-8], payload)
		r, err := name.NewRepository(repo, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.WriteLayer(r, static.NewLayer(nb, desc.MediaType)); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(nb)
		m.Layers[i].Digest = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
		m.Layers[i].Size = int64(len(nb))
		for k, v := range ann {
			m.Layers[i].Annotations[k] = v
		}
		ref := repo + ":" + tag
		putManifest(t, ref, m)
		return ref
	}
	t.Fatalf("no layer of %s to edit", lazy)
	return ""
}

// TestTarCheckCraftedIndex: the python image with an index that serves bash as dash
// (and so as /bin/sh), all digests updated. The lazy mount refuses both files (EIO, one
// log line naming the layer, the entry and the field) and serves the others;
// `lazypull verify` exits 1 naming the entry, and verifies the unmodified image clean.
func TestTarCheckCraftedIndex(t *testing.T) {
	e := setup(t)
	lazy := e.lazyImage(t, "python")
	crafted := e.craftedImage(t, lazy, "usr/bin/dash", "usr/bin/bash")

	m := e.mount(t, crafted, t.TempDir())
	for range 2 {
		for _, p := range []string{"usr/bin/dash", "usr/bin/bash"} {
			b, err := os.ReadFile(filepath.Join(m.dir, p))
			if !errors.Is(err, syscall.EIO) {
				t.Errorf("read %s: %d bytes, %v; want EIO", p, len(b), err)
			}
		}
	}
	if r := run(t, "chroot", m.dir, "/bin/sh", "-c", "echo served"); r.code == 0 || strings.Contains(r.stdout, "served") {
		t.Errorf("/bin/sh ran from a crafted index: %+v", r)
	}
	if b, err := os.ReadFile(filepath.Join(m.dir, "etc/passwd")); err != nil || !bytes.HasPrefix(b, []byte("root:")) {
		t.Errorf("etc/passwd: %q, %v", b, err)
	}
	if out := must(t, "chroot", m.dir, "python3", "-c", "print(6*7)"); strings.TrimSpace(out) != "42" {
		t.Errorf("python3 printed %q", out)
	}
	// The mount logs in its own process: its output is polled.
	testutil.WaitFor(t, 10*time.Second, "the mount's line on usr/bin/dash", func() bool { return strings.Contains(m.log.String(), "entry=usr/bin/dash") })
	var lines []string
	for _, l := range strings.Split(m.log.String(), "\n") {
		if strings.Contains(l, "does not match the layer's tar") && strings.Contains(l, "entry=usr/bin/dash") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "layer=sha256:") || !strings.Contains(lines[0], "field=name") {
		t.Errorf("want one log line naming the layer, usr/bin/dash and the field; got %d:\n%s", len(lines), m.log)
	}
	if strings.Count(m.log.String(), "fusefs: read failed") > 0 {
		t.Errorf("fusefs logged the refusal again:\n%s", m.log)
	}

	r := e.lazypull(t, "verify", "--plain-http", crafted)
	if r.code != 1 || !strings.Contains(r.stdout, "MISMATCH") || !(strings.Contains(r.stdout, `"usr/bin/dash"`) || strings.Contains(r.stdout, `"usr/bin/bash"`)) {
		t.Errorf("verify %s: exit %d; want 1 naming the entry:\n%s%s", crafted, r.code, r.stdout, r.stderr)
	}
	r = e.lazypull(t, "verify", "--plain-http", lazy)
	if r.code != 0 || !strings.Contains(r.stdout, "layers verified") {
		t.Errorf("verify %s (unmodified): exit %d; want 0:\n%s%s", lazy, r.code, r.stdout, r.stderr)
	}
}

// TestTarCheckRunDigest: the python image with an index whose run digest for dash's header
// run is not its frames' (the headers themselves honest: what a Range answer with other
// bytes than the blob's looks like to the reader). The lazy mount refuses dash (EIO, one
// log line naming the layer, the run and the entry) before its headers are looked at, and
// serves the rest; `lazypull verify` exits 1 naming the run.
func TestTarCheckRunDigest(t *testing.T) {
	e := setup(t)
	lazy := e.lazyImage(t, "python")
	edited := e.editedImage(t, lazy, "rundigest", func(ix *format.Index) bool {
		dash, ok := ix.Lookup("usr/bin/dash")
		if !ok || ix.RunDigests == nil {
			return false
		}
		_, runOf, err := ix.HeaderRuns()
		if err != nil {
			t.Fatal(err)
		}
		for i := range ix.Entries {
			if &ix.Entries[i] == dash {
				ix.RunDigests[runOf[i]][0] ^= 1
				return true
			}
		}
		return false
	})
	m := e.mount(t, edited, t.TempDir())
	for range 2 {
		if b, err := os.ReadFile(filepath.Join(m.dir, "usr/bin/dash")); !errors.Is(err, syscall.EIO) {
			t.Errorf("read usr/bin/dash: %d bytes, %v; want EIO", len(b), err)
		}
	}
	if out := must(t, "chroot", m.dir, "python3", "-c", "print(6*7)"); strings.TrimSpace(out) != "42" {
		t.Errorf("python3 printed %q", out)
	}
	// The mount logs in its own process: its output is polled.
	testutil.WaitFor(t, 10*time.Second, "the mount's line on usr/bin/dash", func() bool { return strings.Contains(m.log.String(), "entry=usr/bin/dash") })
	var lines []string
	for _, l := range strings.Split(m.log.String(), "\n") {
		if strings.Contains(l, `field="run digest"`) {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "layer=sha256:") || !strings.Contains(lines[0], "run=") || !strings.Contains(lines[0], "entry=usr/bin/dash") {
		t.Errorf("want one log line naming the layer, the run and usr/bin/dash; got %d:\n%s", len(lines), m.log)
	}
	r := e.lazypull(t, "verify", "--plain-http", edited)
	if r.code != 1 || !strings.Contains(r.stdout, "MISMATCH header run") || !strings.Contains(r.stdout, `"usr/bin/dash"`) {
		t.Errorf("verify %s: exit %d; want 1 naming dash's run:\n%s%s", edited, r.code, r.stdout, r.stderr)
	}
}

// TestVerifyStore: an object damaged on disk is found by `lazypull verify --store`,
// removed, and fetched again by the next read, which gets the right bytes. While a mount
// holds the store, verify --store refuses, naming the lock.
func TestVerifyStore(t *testing.T) {
	e := setup(t)
	lazy := e.lazyImage(t, "python")
	storeDir := t.TempDir()
	m := e.mount(t, lazy, storeDir)
	want, err := os.ReadFile(filepath.Join(m.dir, "etc/passwd"))
	if err != nil {
		t.Fatal(err)
	}
	if r := e.lazypull(t, "verify", "--store", "--store-dir", storeDir); r.code == 0 || !strings.Contains(r.stderr, "in use by another process") {
		t.Errorf("verify --store of a held store: exit %d; want a refusal naming the lock:\n%s%s", r.code, r.stdout, r.stderr)
	}
	m.stop(t)

	sum := sha256.Sum256(want)
	h := hex.EncodeToString(sum[:])
	obj := filepath.Join(storeDir, "objects", h[:2], h)
	b, err := os.ReadFile(obj)
	if err != nil {
		t.Fatalf("etc/passwd not stored: %v", err)
	}
	b[len(b)/2] ^= 0x20
	os.Chmod(obj, 0o600)
	if err := os.WriteFile(obj, b, 0o600); err != nil {
		t.Fatal(err)
	}

	r := e.lazypull(t, "verify", "--store", "--store-dir", storeDir)
	if r.code != 1 || !strings.Contains(r.stdout, "1 damaged and removed") {
		t.Fatalf("verify --store: exit %d; want 1 reporting one damaged object:\n%s%s", r.code, r.stdout, r.stderr)
	}
	if _, err := os.Stat(obj); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("damaged object still there: %v", err)
	}
	if r := e.lazypull(t, "verify", "--store", "--store-dir", storeDir); r.code != 0 || !strings.Contains(r.stdout, "0 damaged") {
		t.Errorf("second verify --store: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}

	m = e.mount(t, lazy, storeDir)
	got, err := os.ReadFile(filepath.Join(m.dir, "etc/passwd"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("etc/passwd after verify --store: %v, right bytes: %v", err, bytes.Equal(got, want))
	}
	after := time.Now()
	if s := stats(t, storeDir, after); s.Store.ChunksFetched == 0 {
		t.Errorf("the removed object was not fetched again: %+v", s.Store)
	}
}
