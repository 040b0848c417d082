package daemon

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/format"
	"lazypull/internal/store"
	"lazypull/internal/testutil"
	"lazypull/internal/testutil/layertest"
)

// binLayer converts a tar of bin/bash, bin/sh (the real one), a symlink and a text
// file, and then lets edit change the index as a hostile producer would, writing the
// edited index back into the blob and its annotations: every digest in the chain still
// checks out, only the index no longer describes the tar.
func binLayer(t *testing.T, edit func(ix *format.Index)) (blob []byte, ann map[string]string) {
	t.Helper()
	exec := func(name, body string) testutil.Entry {
		e := testutil.File(name, []byte(body))
		e.Hdr.Mode = 0o755
		return e
	}
	return layerFromTar(t, testutil.Tar(t, exec("bin/bash", "#!bash, another program"), exec("bin/sh", "#!sh, the real one"),
		exec("etc/motd", "welcome"), testutil.Symlink("etc/alt", "/bin/sh")), edit)
}

// layerFromTar converts a tar stream and rewrites its index as edit changes it.
func layerFromTar(t *testing.T, src []byte, edit func(ix *format.Index)) (blob []byte, ann map[string]string) {
	t.Helper()
	blob, ann, _ = layertest.FromTar(t, src, edit)
	return blob, ann
}

func imageOfLayer(t *testing.T, blob []byte, ann map[string]string) v1.Image {
	t.Helper()
	return withLayer(t, empty.Image, static.NewLayer(blob, types.MediaType(format.MediaTypeLayer)), ann)
}

// swapShBash names bash's frames bin/sh and the real sh's bin/bash: bin/sh would run bash.
func swapShBash(ix *format.Index) {
	ix.Entries[0].Name, ix.Entries[1].Name = ix.Entries[1].Name, ix.Entries[0].Name
}

// TestTarCheckRefusesCraftedIndex: a layer whose index maps bin/sh to another file's
// frames (annotations and digests all updated) serves neither bin/sh nor bin/bash, with
// one log line naming the layer, the entry and the field; the files whose headers match
// are served; a symlink whose target the index changed is refused too.
func TestTarCheckRefusesCraftedIndex(t *testing.T) {
	log, logb := testutil.NewLogAt(t, slog.LevelInfo)

	l, _ := openBinLayer(t, "crafted:v1", log, func(ix *format.Index) {
		swapShBash(ix)
		for i := range ix.Entries {
			if ix.Entries[i].Name == "etc/alt" {
				ix.Entries[i].Linkname = "/bin/bash"
			}
		}
	})
	read := func(name string) ([]byte, error) { return readEntry(t, l, name) }
	for range 2 { // the second time from the verdict kept
		b, err := read("bin/sh")
		var m *format.MismatchError
		if err == nil || !errors.As(err, &m) || m.Entry != "bin/sh" || m.Field != "name" {
			t.Fatalf("bin/sh: served %q, %v; want a name mismatch of bin/sh", b, err)
		}
		if _, err := read("bin/bash"); err == nil {
			t.Fatal("bin/bash (the real sh's frames) served")
		}
	}
	if b, err := read("etc/motd"); err != nil || string(b) != "welcome" {
		t.Fatalf("etc/motd: %q, %v", b, err)
	}
	alt, _ := l.Index.Lookup("etc/alt")
	var m *format.MismatchError
	if err := l.Check(context.Background(), alt); !errors.As(err, &m) || m.Field != "link" {
		t.Fatalf("symlink with a changed target: %v; want a link mismatch", err)
	}
	e, _ := l.Index.Lookup("bin/sh")
	if f, ok := l.LocalFile(e); ok {
		f.Close()
		t.Fatal("bin/sh handed out for passthrough")
	}
	logs := logb.String()
	if n := strings.Count(logs, `entry=bin/sh field=name`); n != 1 {
		t.Errorf("%d log lines name bin/sh's mismatch; want 1:\n%s", n, logs)
	}
	if !strings.Contains(logs, "layer="+l.Desc.Digest.String()) {
		t.Errorf("the log does not name the layer:\n%s", logs)
	}
}

// TestTarCheckCleanImage: an unmodified layer serves every file, and the verdicts kept in
// the store let a second open serve them with no request for their headers.
func TestTarCheckCleanImage(t *testing.T) {
	blob, ann := binLayer(t, func(*format.Index) {})
	ref, reqs, _ := pushCounted(t, imageOfLayer(t, blob, ann), "clean:v1")
	dir := t.TempDir()
	open := func() (*store.Store, *Image) { return openIn(t, dir, ref) }
	st, im := open()
	for _, n := range []string{"bin/bash", "bin/sh", "etc/motd"} {
		readFile(t, im, n)
	}
	alt, _ := im.Layers[0].Index.Lookup("etc/alt")
	if err := im.Layers[0].Check(context.Background(), alt); err != nil {
		t.Fatal(err)
	}
	// Wait for the verdicts to be kept (by a goroutine of their own), then close.
	testutil.WaitFor(t, 10*time.Second, "the four runs' verdicts kept", func() bool {
		bits := st.Checked(im.Layers[0].tc.index)
		return len(bits) == 1 && bits[0] == 0b1111
	})
	im.Close()
	st.Close()

	st, im = open()
	defer st.Close()
	defer im.Close()
	reqs.reset()
	for _, n := range []string{"bin/bash", "bin/sh", "etc/motd"} {
		readFile(t, im, n)
	}
	// A store of its own (a restart) decodes the index anew: its entries are its own.
	alt, _ = im.Layers[0].Index.Lookup("etc/alt")
	if err := im.Layers[0].Check(context.Background(), alt); err != nil {
		t.Fatal(err)
	}
	if n := reqs.count("GET blobs"); n != 0 {
		t.Errorf("%d blob requests reading from the store after a restart; want none", n)
	}
}

// TestFillChecksDiffID: once the background fill has made a layer complete, its tar
// stream (header frames fetched again, chunks from the store) is checked against the
// config's diff ID. A layer whose config says another diff ID (here: what a static layer
// claims, its blob digest) is refused whole from then on, with one log line; a layer with
// the right one is served, and said to match.
func TestFillChecksDiffID(t *testing.T) {
	for _, right := range []bool{true, false} {
		t.Run(map[bool]string{true: "right", false: "wrong"}[right], func(t *testing.T) {
			log, logb := testutil.NewLogAt(t, slog.LevelInfo)

			blob, ann := binLayer(t, func(*format.Index) {})
			layer := v1.Layer(static.NewLayer(blob, types.MediaType(format.MediaTypeLayer)))
			if right {
				r, err := format.Open(bytes.NewReader(blob), int64(len(blob)), ann)
				if err != nil {
					t.Fatal(err)
				}
				c, err := format.VerifyLayer(bytes.NewReader(blob), r.Index, r.Index.Frames[len(r.Index.Frames)-1].Offset+r.Index.Frames[len(r.Index.Frames)-1].Size+8)
				if err != nil {
					t.Fatal(err)
				}
				h, _ := v1.NewHash(c.DiffID.String())
				layer = diffIDLayer{layer, h}
			}
			img, err := mutate.Append(empty.Image, mutate.Addendum{Layer: layer, Annotations: ann, MediaType: types.MediaType(format.MediaTypeLayer)})
			if err != nil {
				t.Fatal(err)
			}
			ref, _, _ := pushCounted(t, mutate.MediaType(img, types.OCIManifestSchema1), "diffid:v1")
			im, _ := openFreshLog(t, ref, log)
			if err := im.BackgroundFetch(FillOptions{Rate: 1 << 30}); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := im.WaitFill(ctx); err != nil {
				t.Fatal(err)
			}
			l := im.Layers[0]
			e, _ := l.Index.Lookup("bin/sh")
			b := make([]byte, e.Size)
			n, err := l.ReadAt(context.Background(), e, b, 0)
			logs := logb.String()
			if right {
				if err != nil || string(b[:n]) != "#!sh, the real one" || !strings.Contains(logs, "matches its diff ID") {
					t.Fatalf("read bin/sh: %q, %v\n%s", b[:n], err, logs)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "diff ID") {
				t.Fatalf("read bin/sh of a layer whose tar is not its diff ID: %q, %v", b[:n], err)
			}
			if f, ok := l.LocalFile(e); ok {
				f.Close()
				t.Fatal("handed out for passthrough")
			}
			if n := strings.Count(logs, "does not match the diff ID"); n != 1 {
				t.Errorf("%d log lines about the diff ID; want 1:\n%s", n, logs)
			}
		})
	}
}

func TestResolveLinks(t *testing.T) {
	links := map[string]string{"lib": "usr/lib", "lib64": "/usr/lib64", "usr/lib64": "../lib", "a": "a"}
	for in, want := range map[string]string{
		"lib/x86_64-linux-gnu/ld.so": "usr/lib/x86_64-linux-gnu/ld.so",
		"lib64/ld.so":                "usr/lib/ld.so", // two hops: lib64 -> usr/lib64 -> usr/lib
		"usr/bin/python3":            "usr/bin/python3",
		"a/b":                        "a/b", // a loop: given up after 40 hops
	} {
		if got := resolveLinks(links, in); got != want {
			t.Errorf("resolveLinks(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestTarCheckCrossLayerLink: an upper layer's hard link whose index names another lower
// file than its tar header does (bin/x: tar says bin/sh, index says bin/bash) is served
// by a merged view as the lower file: that file is refused until the link's header checks
// out, which it never does.
func TestTarCheckCrossLayerLink(t *testing.T) {
	lower, lann := binLayer(t, func(*format.Index) {})
	upper, uann := layerFromTar(t, testutil.Tar(t, testutil.Link("bin/x", "bin/sh")), func(ix *format.Index) { ix.Entries[0].Linkname = "bin/bash" })
	img := withLayer(t, imageOfLayer(t, lower, lann), static.NewLayer(upper, types.MediaType(format.MediaTypeLayer)), uann)
	ref, _, _ := pushCounted(t, img, "crosslink:v1")
	im, _ := openFresh(t, ref)
	im.FSLayers()
	l := im.Layers[0]
	read := func(name string) error {
		e, _ := l.Index.Lookup(name)
		b := make([]byte, e.Size)
		_, err := l.ReadAt(context.Background(), e, b, 0)
		return err
	}
	var m *format.MismatchError
	if err := read("bin/bash"); !errors.As(err, &m) || m.Entry != "bin/x" || m.Field != "link" {
		t.Fatalf("bin/bash, which the crafted link bin/x names: %v; want a link mismatch of bin/x", err)
	}
	if err := read("bin/sh"); err != nil {
		t.Fatalf("bin/sh, which no crafted entry names: %v", err)
	}
}

// TestTarCheckLinkBringsTarget: checking a symlink whose target is the file its header run
// ends with (python3 -> python3.11) fetches that file's first chunk in the same request:
// the read that follows the readlink needs no request of its own.
func TestTarCheckLinkBringsTarget(t *testing.T) {
	body := bytes.Repeat([]byte("python"), 5000)
	blob, ann := layerFromTar(t, testutil.Tar(t, testutil.File("usr/bin/other", []byte("other")), testutil.Symlink("usr/bin/python3", "python3.11"),
		testutil.File("usr/bin/python3.11", body)), func(*format.Index) {})
	ref, reqs, _ := pushCounted(t, imageOfLayer(t, blob, ann), "link:v1")
	im, _ := openFresh(t, ref)
	reqs.reset()
	l := im.Layers[0]
	link, _ := l.Index.Lookup("usr/bin/python3")
	if err := l.Check(context.Background(), link); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, im, "usr/bin/python3.11"); !bytes.Equal(got, body) {
		t.Fatal("wrong bytes")
	}
	if n := reqs.count("GET blobs"); n != 1 {
		t.Errorf("readlink and read of its target took %d requests; want 1", n)
	}
}
