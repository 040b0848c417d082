// Command indexsize reports how big the metadata of a lazy-pullable layer is: the index of a
// lazypull layer, or the table of contents (TOC) of an eStargz layer. lazypull-bench convert
// uses it to compare the two for the same image.
//
//	go run ./tools/indexsize [-tsv] BLOB...
//	go run ./tools/indexsize [-tsv] -layout DIR[:TAG]
//
// With BLOB arguments each file is a layer blob, recognized by its end: a lazypull footer (the
// index is then found, and its digest checked, through the footer) or an eStargz footer.
//
// With -layout it reads every layer of the image tagged TAG in the OCI image layout DIR (TAG
// may be left out when the layout holds one image). A lazypull layer's index is then located
// through its descriptor annotations, as a lazy reader would, and an eStargz layer's TOC is
// checked against its containerd.io/snapshot/stargz/toc.digest annotation. Every layer is also
// decompressed whole, and its tar stream checked against the diff ID in the image config; the
// tar_bytes column is the length of that stream.
//
// Columns (one row per layer; -tsv prints them tab-separated, without the header):
//
//	layer      position in the manifest (0 for the first) or, for BLOB arguments, the argument's
//	digest     sha256 of the blob
//	format     lazypull, estargz, or the media type's compression (gzip, zstd, tar) for others
//	blob       blob size in bytes
//	tar        length of the uncompressed tar stream (-1 where not computed)
//	entries    entries the index or TOC lists (lazypull: tar entries; eStargz: TOC entries other
//	           than "chunk" ones); -1 for a layer with neither
//	chunks     content chunks (lazypull: chunk frames; eStargz: "reg" entries with content plus
//	           "chunk" entries)
//	meta       lazypull: the index payload (header + zstd body), as stored between the index
//	           frame's 8-byte header and the 64-byte footer; eStargz: the TOC gzip member, from
//	           the offset the footer gives to the 51-byte footer. Neither counts its footer.
//	meta_raw   lazypull: the decompressed index body; eStargz: the stargz.index.json file
//	sha256s    distinct SHA-256 values the metadata holds (chunk and whole-file digests). Each
//	           is 32 bytes of entropy that no compressor removes: 32 x sha256s is a floor
//	           under meta for any format that verifies every chunk.
package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"lazypull/format"
	"lazypull/internal/ocilayout"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "indexsize:", err)
		os.Exit(1)
	}
}

// row is what is reported for one layer.
type row struct {
	layer   string
	digest  string
	format  string
	blob    int64
	tar     int64
	entries int
	chunks  int
	meta    int64
	metaRaw int64
	sha256s int
}

func run() error {
	layout := flag.String("layout", "", "report every layer of the image `DIR[:TAG]` in an OCI image layout")
	tsv := flag.Bool("tsv", false, "print tab-separated rows without a header")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: indexsize [-tsv] BLOB...\n       indexsize [-tsv] -layout DIR[:TAG]\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if (*layout == "") == (flag.NArg() == 0) {
		flag.Usage()
		os.Exit(2)
	}

	var rows []row
	if *layout != "" {
		var err error
		if rows, err = layoutRows(*layout); err != nil {
			return err
		}
	} else {
		for _, p := range flag.Args() {
			r, err := blobRow(p)
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			rows = append(rows, r)
		}
	}

	var w io.Writer = os.Stdout
	var tw *tabwriter.Writer
	if !*tsv {
		tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
		w = tw
		fmt.Fprintln(w, "layer\tdigest\tformat\tblob\ttar\tentries\tchunks\tmeta\tmeta_raw\tsha256s\t")
	}
	for _, r := range rows {
		d := r.digest
		if !*tsv {
			d = shortDigest(d)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d", r.layer, d, r.format, r.blob, r.tar, r.entries, r.chunks, r.meta, r.metaRaw, r.sha256s)
		if tw != nil {
			fmt.Fprint(w, "\t")
		}
		fmt.Fprintln(w)
	}
	if tw != nil {
		return tw.Flush()
	}
	return nil
}

func shortDigest(d string) string {
	if len(d) > len("sha256:")+12 {
		return d[:len("sha256:")+12]
	}
	return d
}

// blobRow reports one blob found by its footer.
func blobRow(p string) (row, error) {
	f, err := os.Open(p)
	if err != nil {
		return row{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return row{}, err
	}
	r := row{layer: p, blob: st.Size(), tar: -1, entries: -1, chunks: -1, meta: -1, metaRaw: -1, sha256s: -1}
	if r.digest, err = fileDigest(f); err != nil {
		return r, err
	}
	m, lerr := lazypullMeta(f, st.Size(), nil)
	if lerr == nil {
		r.format = "lazypull"
		r.setMeta(m)
		r.tar = m.tarSize
		return r, nil
	}
	if !errors.Is(lerr, format.ErrNoFooter) {
		return r, lerr
	}
	m, eerr := estargzMeta(f, st.Size(), "")
	if eerr == nil {
		r.format = "estargz"
		r.setMeta(m)
		return r, nil
	}
	if !errors.Is(eerr, errNoStargzFooter) {
		return r, eerr
	}
	return r, errors.New("neither a lazypull nor an eStargz layer (no footer of either)")
}

// meta is what lazypullMeta and estargzMeta find.
type meta struct {
	size, rawSize   int64
	entries, chunks int
	sha256s         int
	tarSize         int64 // lazypull only: sum of the frames' uncompressed sizes; else -1
}

func (r *row) setMeta(m meta) {
	r.meta, r.metaRaw, r.entries, r.chunks, r.sha256s = m.size, m.rawSize, m.entries, m.chunks, m.sha256s
}

// lazypullMeta reads and checks a lazypull layer's index: through loc when given (from the
// annotations), else through the footer. It returns format.ErrNoFooter (wrapped or not) for a
// blob without a lazypull footer when loc is nil.
func lazypullMeta(f *os.File, size int64, loc *format.IndexLocation) (meta, error) {
	ix, err := format.ReadIndex(f, size, loc) // checks the payload's digest
	if err != nil {
		return meta{}, err
	}
	var off, plen int64
	if loc != nil {
		off, plen = loc.Offset, loc.Size
	} else {
		// The footer (docs/format.md): skippable frame header, "LZPFOOTR", offset, length.
		foot := make([]byte, format.FooterSize)
		if _, err := f.ReadAt(foot, size-format.FooterSize); err != nil {
			return meta{}, fmt.Errorf("read footer: %w", err)
		}
		off = int64(binary.LittleEndian.Uint64(foot[16:]))
		plen = int64(binary.LittleEndian.Uint64(foot[24:]))
	}
	// The payload header: magic, version, flags, reserved, then the body length at 16.
	hdr := make([]byte, 24)
	if _, err := f.ReadAt(hdr, off); err != nil {
		return meta{}, fmt.Errorf("read index header: %w", err)
	}
	m := meta{
		size:    plen,
		rawSize: int64(binary.LittleEndian.Uint64(hdr[16:])),
		entries: len(ix.Entries),
		chunks:  len(ix.Digests),
	}
	for _, fr := range ix.Frames {
		m.tarSize += fr.TarSize
	}
	distinct := make(map[format.Digest]struct{}, len(ix.Digests))
	for _, d := range ix.Digests {
		distinct[d] = struct{}{}
	}
	for i := range ix.Entries {
		if e := &ix.Entries[i]; e.NumFrames > 1 || e.Sparse {
			distinct[e.Digest] = struct{}{}
		}
	}
	m.sha256s = len(distinct)
	return m, nil
}

// The eStargz footer is an empty gzip member whose header's Extra field holds one subfield
// "SG" with "%016x" (the TOC offset) + "STARGZ"; the legacy stargz footer (47 bytes) has
// the same 22 bytes as the whole Extra field.
const (
	estargzFooterSize = 51
	legacyFooterSize  = 47
	tocName           = "stargz.index.json"
	tocDigestKey      = "containerd.io/snapshot/stargz/toc.digest"
)

var errNoStargzFooter = errors.New("no eStargz footer")

// stargzFooter returns the TOC offset and the footer's size.
func stargzFooter(f *os.File, size int64) (int64, int64, error) {
	for _, fsize := range []int64{estargzFooterSize, legacyFooterSize} {
		if size < fsize {
			continue
		}
		b := make([]byte, fsize)
		if _, err := f.ReadAt(b, size-fsize); err != nil {
			return 0, 0, fmt.Errorf("read footer: %w", err)
		}
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			continue
		}
		extra := zr.Header.Extra
		var payload []byte
		switch {
		case fsize == estargzFooterSize && len(extra) == 26 && extra[0] == 'S' && extra[1] == 'G' &&
			binary.LittleEndian.Uint16(extra[2:]) == 22:
			payload = extra[4:]
		case fsize == legacyFooterSize && len(extra) == 22:
			payload = extra
		default:
			continue
		}
		if string(payload[16:]) != "STARGZ" {
			continue
		}
		off, err := strconv.ParseUint(string(payload[:16]), 16, 63)
		if err != nil || int64(off) > size-fsize {
			return 0, 0, fmt.Errorf("eStargz footer: bad TOC offset %q", payload[:16])
		}
		return int64(off), fsize, nil
	}
	return 0, 0, errNoStargzFooter
}

// tocEntry holds the fields of a TOC entry that are counted.
type tocEntry struct {
	Type        string `json:"type"`
	Size        int64  `json:"size"`
	Digest      string `json:"digest"`
	ChunkDigest string `json:"chunkDigest"`
}

// estargzMeta finds the TOC of an eStargz blob through its footer, and checks the JSON
// against wantDigest when one is given.
func estargzMeta(f *os.File, size int64, wantDigest string) (meta, error) {
	off, fsize, err := stargzFooter(f, size)
	if err != nil {
		return meta{}, err
	}
	m := meta{size: size - fsize - off, tarSize: -1}
	zr, err := gzip.NewReader(io.NewSectionReader(f, off, m.size))
	if err != nil {
		return m, fmt.Errorf("TOC at %d: %w", off, err)
	}
	zr.Multistream(false)
	tr := tar.NewReader(zr)
	var toc []byte
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return m, fmt.Errorf("TOC tar at %d: %w", off, err)
		}
		if h.Name == tocName {
			if toc, err = io.ReadAll(tr); err != nil {
				return m, fmt.Errorf("read %s: %w", tocName, err)
			}
			break
		}
	}
	if toc == nil {
		return m, fmt.Errorf("TOC member at %d has no %s", off, tocName)
	}
	if wantDigest != "" {
		if got := fmt.Sprintf("sha256:%x", sha256.Sum256(toc)); got != wantDigest {
			return m, fmt.Errorf("TOC digest %s, annotation %s says %s", got, tocDigestKey, wantDigest)
		}
	}
	var doc struct {
		Entries []tocEntry `json:"entries"`
	}
	if err := json.Unmarshal(toc, &doc); err != nil {
		return m, fmt.Errorf("%s: %w", tocName, err)
	}
	m.rawSize = int64(len(toc))
	distinct := make(map[string]struct{})
	for _, e := range doc.Entries {
		for _, d := range []string{e.Digest, e.ChunkDigest} {
			if d != "" {
				distinct[d] = struct{}{}
			}
		}
		switch {
		case e.Type == "chunk":
			m.chunks++
		case e.Type == "reg" && e.Size > 0:
			m.entries++
			m.chunks++
		default:
			m.entries++
		}
	}
	m.sha256s = len(distinct)
	return m, nil
}

func sum(h hash.Hash) string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }

func fileDigest(f *os.File) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, 1<<62)); err != nil {
		return "", err
	}
	return sum(h), nil
}

// OCI image layout and manifest, only what is read here.
type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations"`
}

type manifestJSON struct {
	MediaType string       `json:"mediaType"`
	Manifests []descriptor `json:"manifests"` // an image index
	Config    descriptor   `json:"config"`
	Layers    []descriptor `json:"layers"`
}

type configJSON struct {
	RootFS struct {
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

// v1 is d as go-containerregistry's descriptor; its digest must parse.
func (d descriptor) v1() (v1.Descriptor, error) {
	h, err := v1.NewHash(d.Digest)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("digest %q: %w", d.Digest, err)
	}
	return v1.Descriptor{MediaType: types.MediaType(d.MediaType), Digest: h, Size: d.Size, Annotations: d.Annotations}, nil
}

// readJSON reads the blob d names, checked against it, into v.
func readJSON(lay *ocilayout.Layout, d descriptor, v any) error {
	desc, err := d.v1()
	if err != nil {
		return err
	}
	b, err := lay.ReadBlob(desc)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// layoutImage finds the manifest tagged tag (any tag when the layout has one image).
func layoutImage(lay *ocilayout.Layout, tag string) (*manifestJSON, error) {
	ix, err := lay.Index()
	if err != nil {
		return nil, err
	}
	found := ix.Manifests
	if tag != "" {
		found = ocilayout.Tagged(ix, tag)
	}
	switch {
	case len(found) == 0 && tag != "":
		return nil, fmt.Errorf("no image tagged %q in %s", tag, lay.Dir())
	case len(found) != 1:
		return nil, fmt.Errorf("%s holds %d images; give DIR:TAG", lay.Dir(), len(found))
	}
	d := descriptor{MediaType: string(found[0].MediaType), Digest: found[0].Digest.String(), Size: found[0].Size}
	// An image index with one manifest (a single-platform index) is followed to it.
	for depth := 0; ; depth++ {
		var m manifestJSON
		if err := readJSON(lay, d, &m); err != nil {
			return nil, fmt.Errorf("manifest %s: %w", d.Digest, err)
		}
		if len(m.Manifests) == 0 {
			return &m, nil
		}
		if len(m.Manifests) != 1 || depth > 4 {
			return nil, fmt.Errorf("%s is an image index of %d manifests; this tool reads one image", d.Digest, len(m.Manifests))
		}
		d = m.Manifests[0]
	}
}

func layoutRows(spec string) ([]row, error) {
	dir, tag := spec, ""
	if i := strings.LastIndex(spec, ":"); i >= 0 && !strings.Contains(spec[i+1:], "/") {
		dir, tag = spec[:i], spec[i+1:]
	}
	lay := ocilayout.At(dir)
	m, err := layoutImage(lay, tag)
	if err != nil {
		return nil, fmt.Errorf("layout %s: %w", spec, err)
	}
	var cfg configJSON
	if err := readJSON(lay, m.Config, &cfg); err != nil {
		return nil, fmt.Errorf("layout %s: config %s: %w", spec, m.Config.Digest, err)
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("layout %s: %d layers but %d diff IDs", spec, len(m.Layers), len(cfg.RootFS.DiffIDs))
	}
	var rows []row
	for i, l := range m.Layers {
		r, err := layerRow(lay, l, cfg.RootFS.DiffIDs[i])
		if err != nil {
			return nil, fmt.Errorf("layout %s: layer %d (%s): %w", spec, i, l.Digest, err)
		}
		r.layer = strconv.Itoa(i)
		rows = append(rows, r)
	}
	return rows, nil
}

func layerRow(lay *ocilayout.Layout, l descriptor, diffID string) (row, error) {
	r := row{digest: l.Digest, entries: -1, chunks: -1, meta: -1, metaRaw: -1, sha256s: -1}
	desc, err := l.v1()
	if err != nil {
		return r, err
	}
	f, err := lay.Blob(desc.Digest)
	if err != nil {
		return r, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return r, err
	}
	if r.blob = st.Size(); r.blob != l.Size {
		return r, fmt.Errorf("blob is %d bytes, descriptor says %d", r.blob, l.Size)
	}

	comp := "tar"
	switch {
	case strings.HasSuffix(l.MediaType, "+gzip") || strings.HasSuffix(l.MediaType, ".gzip"):
		comp = "gzip"
	case strings.HasSuffix(l.MediaType, "+zstd") || strings.HasSuffix(l.MediaType, ".zstd"):
		comp = "zstd"
	}
	r.format = comp
	var m meta
	switch {
	case format.IsLayer(l.Annotations):
		loc, err := format.LocationFromAnnotations(l.Annotations)
		if err != nil {
			return r, err
		}
		if m, err = lazypullMeta(f, r.blob, &loc); err != nil {
			return r, err
		}
		r.format = "lazypull"
		r.setMeta(m)
	case comp == "gzip":
		m, err = estargzMeta(f, r.blob, l.Annotations[tocDigestKey])
		switch {
		case err == nil:
			r.format = "estargz"
			r.setMeta(m)
		case errors.Is(err, errNoStargzFooter) && l.Annotations[tocDigestKey] == "":
			// a plain gzip layer
		default:
			return r, err
		}
	}

	// The whole blob, decompressed, must be the tar stream the config's diff ID names.
	blob, err := fileDigestAndTar(f, comp)
	if err != nil {
		return r, err
	}
	if blob.digest != l.Digest {
		return r, fmt.Errorf("blob hashes to %s", blob.digest)
	}
	if blob.diffID != diffID {
		return r, fmt.Errorf("tar stream hashes to %s, config diff ID is %s", blob.diffID, diffID)
	}
	r.tar = blob.tarSize
	if r.format == "lazypull" && m.tarSize != r.tar {
		return r, fmt.Errorf("index frames add up to %d tar bytes, the stream has %d", m.tarSize, r.tar)
	}
	return r, nil
}

type blobSums struct {
	digest, diffID string
	tarSize        int64
}

// fileDigestAndTar reads the blob once: hashing it, and decompressing it to hash and count
// the tar stream.
func fileDigestAndTar(f *os.File, comp string) (blobSums, error) {
	var s blobSums
	bh := sha256.New()
	src := io.TeeReader(bufio.NewReaderSize(io.NewSectionReader(f, 0, 1<<62), 1<<20), bh)
	var tarR io.Reader
	switch comp {
	case "gzip":
		zr, err := gzip.NewReader(src)
		if err != nil {
			return s, fmt.Errorf("gunzip: %w", err)
		}
		defer zr.Close()
		tarR = zr
	case "zstd":
		zr, err := zstd.NewReader(src, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return s, err
		}
		defer zr.Close()
		tarR = zr
	default:
		tarR = src
	}
	th := sha256.New()
	n, err := io.Copy(th, tarR)
	if err != nil {
		return s, fmt.Errorf("decompress (%s): %w", comp, err)
	}
	// Whatever follows the compressed stream (nothing, normally) is part of the blob.
	if _, err := io.Copy(io.Discard, src); err != nil {
		return s, err
	}
	s.digest, s.diffID, s.tarSize = sum(bh), sum(th), n
	return s, nil
}
