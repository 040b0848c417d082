package main

import (
	"archive/tar"
	"bytes"
	stdgzip "compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"

	"lazypull/format"
	"lazypull/internal/testutil"
)

// testTar is a small layer: a directory, two files (one of several chunks) and a symlink.
func testTar(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	big := make([]byte, 600<<10)
	for i := range big {
		big[i] = byte(i*7 + i>>9)
	}
	for _, e := range []struct {
		h    tar.Header
		body []byte
	}{
		{tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755}, nil},
		{tar.Header{Typeflag: tar.TypeReg, Name: "etc/hostname", Mode: 0o644}, []byte("box\n")},
		{tar.Header{Typeflag: tar.TypeReg, Name: "etc/big", Mode: 0o644}, big},
		{tar.Header{Typeflag: tar.TypeSymlink, Name: "etc/link", Linkname: "hostname"}, nil},
	} {
		e.h.Size = int64(len(e.body))
		if err := tw.WriteHeader(&e.h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func writeFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	testutil.WriteFile(t, p, b, 0o644)
	return p
}

func lazypullBlob(t *testing.T, src []byte) ([]byte, *format.Result) {
	t.Helper()
	var out bytes.Buffer
	res, err := format.Write(context.Background(), &out, bytes.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), res
}

func TestLazypullBlob(t *testing.T) {
	src := testTar(t)
	blob, res := lazypullBlob(t, src)
	p := writeFile(t, t.TempDir(), "layer", blob)
	r, err := blobRow(p)
	if err != nil {
		t.Fatal(err)
	}
	body := int64(binary.LittleEndian.Uint64(blob[res.IndexOffset+16:]))
	want := row{layer: p, digest: res.Digest, format: "lazypull", blob: res.Size, tar: int64(len(src)),
		entries: res.Entries, chunks: res.Chunks, meta: res.IndexSize, metaRaw: body, sha256s: r.sha256s}
	if r != want {
		t.Errorf("got  %+v\nwant %+v", r, want)
	}
	// Chunk digests, plus the whole-file digest of etc/big (more than one chunk).
	if res.Chunks < 3 || r.sha256s != res.Chunks+1 {
		t.Errorf("%d chunks, %d distinct digests; want chunks + 1", res.Chunks, r.sha256s)
	}
}

// estargzBlob builds a minimal eStargz-shaped blob: one gzip member of tar data, the TOC
// member (a tar holding stargz.index.json), and the footer, 51 bytes or, with legacy, the
// 47-byte stargz one. It also returns the offset of the TOC member.
func estargzBlob(t *testing.T, toc string, legacy bool) ([]byte, int64) {
	t.Helper()
	var blob bytes.Buffer
	zw := gzip.NewWriter(&blob)
	zw.Write(testTar(t)[:1024]) // stands for the layer's entries
	zw.Close()

	off := blob.Len()
	zw = gzip.NewWriter(&blob)
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: tocName, Mode: 0o644, Size: int64(len(toc))})
	tw.Write([]byte(toc))
	tw.Close()
	zw.Close()

	var foot bytes.Buffer
	// As estargz writes it: the standard library's gzip, no compression.
	fw, _ := stdgzip.NewWriterLevel(&foot, stdgzip.NoCompression)
	payload := fmt.Sprintf("%016xSTARGZ", off)
	if legacy {
		fw.Header.Extra = []byte(payload)
	} else {
		fw.Header.Extra = append([]byte{'S', 'G', byte(len(payload)), 0}, payload...)
	}
	fw.Close()
	if want := map[bool]int{false: estargzFooterSize, true: legacyFooterSize}[legacy]; foot.Len() != want {
		t.Fatalf("footer of %d bytes, want %d", foot.Len(), want)
	}
	blob.Write(foot.Bytes())
	return blob.Bytes(), int64(off)
}

const testTOC = `{"version":1,"entries":[` +
	`{"name":"etc/","type":"dir"},` +
	`{"name":"etc/hostname","type":"reg","size":4,"digest":"sha256:aa","chunkDigest":"sha256:aa"},` +
	`{"name":"etc/big","type":"reg","size":614400,"digest":"sha256:bb","chunkSize":4194304,"chunkDigest":"sha256:cc"},` +
	`{"name":"etc/big","type":"chunk","chunkOffset":4194304,"chunkDigest":"sha256:dd"},` +
	`{"name":"etc/empty","type":"reg","size":0},` +
	`{"name":"etc/link","type":"symlink","linkName":"hostname"}]}`

func TestEstargzBlob(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		blob, off := estargzBlob(t, testTOC, legacy)
		p := writeFile(t, t.TempDir(), "layer", blob)
		r, err := blobRow(p)
		if err != nil {
			t.Fatalf("legacy=%v: %v", legacy, err)
		}
		footer := map[bool]int64{false: estargzFooterSize, true: legacyFooterSize}[legacy]
		want := row{layer: p, digest: fmt.Sprintf("sha256:%x", sha256.Sum256(blob)), format: "estargz",
			blob: int64(len(blob)), tar: -1, entries: 5, chunks: 3,
			meta: int64(len(blob)) - footer - off, metaRaw: int64(len(testTOC)), sha256s: 4}
		if r != want {
			t.Errorf("legacy=%v:\ngot  %+v\nwant %+v", legacy, r, want)
		}
	}
}

func TestNotALayer(t *testing.T) {
	p := writeFile(t, t.TempDir(), "layer", testTar(t))
	if _, err := blobRow(p); err == nil || !strings.Contains(err.Error(), "neither") {
		t.Errorf("plain tar: got %v, want an error saying it is neither format", err)
	}
}

// writeLayout writes an OCI layout holding one image of the given layers, tagged tag.
func writeLayout(t *testing.T, dir, tag string, layers []descriptor, diffIDs []string) {
	t.Helper()
	put := func(b []byte) descriptor {
		d := fmt.Sprintf("sha256:%x", sha256.Sum256(b))
		writeFile(t, dir, "blobs/sha256/"+d[7:], b)
		return descriptor{Digest: d, Size: int64(len(b))}
	}
	cfg, _ := json.Marshal(map[string]any{"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs}})
	c := put(cfg)
	c.MediaType = "application/vnd.oci.image.config.v1+json"
	man, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": c, "layers": layers})
	m := put(man)
	m.MediaType = "application/vnd.oci.image.manifest.v1+json"
	m.Annotations = map[string]string{"org.opencontainers.image.ref.name": tag}
	ix, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []descriptor{m}})
	writeFile(t, dir, "index.json", ix)
}

func TestLayout(t *testing.T) {
	src := testTar(t)
	diffID := fmt.Sprintf("sha256:%x", sha256.Sum256(src))
	dir := t.TempDir()

	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(src)
	zw.Close()
	blob, res := lazypullBlob(t, src)
	var layers []descriptor
	for _, l := range []struct {
		b  []byte
		mt string
		a  map[string]string
	}{
		{gz.Bytes(), "application/vnd.oci.image.layer.v1.tar+gzip", nil},
		{blob, format.MediaTypeLayer, res.Annotations()},
	} {
		d := fmt.Sprintf("sha256:%x", sha256.Sum256(l.b))
		writeFile(t, dir, "blobs/sha256/"+d[7:], l.b)
		layers = append(layers, descriptor{MediaType: l.mt, Digest: d, Size: int64(len(l.b)), Annotations: l.a})
	}
	writeLayout(t, dir, "img", layers, []string{diffID, diffID})

	rows, err := layoutRows(dir + ":img")
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[0].format != "gzip" || rows[1].format != "lazypull" {
		t.Fatalf("rows %+v", rows)
	}
	for _, r := range rows {
		if r.tar != int64(len(src)) {
			t.Errorf("layer %s: tar %d, want %d", r.layer, r.tar, len(src))
		}
	}
	if rows[1].meta != res.IndexSize {
		t.Errorf("index %d bytes, want %d", rows[1].meta, res.IndexSize)
	}
	// One tag only: the tag may be left out.
	if _, err := layoutRows(dir); err != nil {
		t.Errorf("no tag: %v", err)
	}
	if _, err := layoutRows(dir + ":other"); err == nil || !strings.Contains(err.Error(), `no image tagged "other"`) {
		t.Errorf("wrong tag: %v", err)
	}

	// A diff ID that does not match the layer's tar stream is an error.
	writeLayout(t, dir, "img", layers, []string{diffID, "sha256:" + strings.Repeat("0", 64)})
	if _, err := layoutRows(dir + ":img"); err == nil || !strings.Contains(err.Error(), "config diff ID") {
		t.Errorf("wrong diff ID: got %v", err)
	}
}
