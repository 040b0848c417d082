package ocilayout

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"

	"lazypull/internal/jsonlimit"
)

// AnnotationRefName is the index.json annotation that carries a layout's tags.
const AnnotationRefName = "org.opencontainers.image.ref.name"

const (
	// MaxIndexSize bounds index.json: some 60000 tagged manifests.
	MaxIndexSize = 16 << 20
	// MaxManifestSize bounds what ReadBlob reads into memory (a manifest, an index, a
	// config).
	MaxManifestSize = 64 << 20
)

const (
	indexFile     = "index.json"
	layoutFile    = "oci-layout"
	layoutVersion = `{"imageLayoutVersion":"1.0.0"}`
)

// Layout is an OCI image layout directory. It holds no state but its path: every method
// reads or writes the directory as it is then.
type Layout struct {
	dir string
}

// At returns the layout at dir, without looking at it: Index reports a directory that is
// not a layout, Init makes it one.
func At(dir string) *Layout { return &Layout{dir: dir} }

// Dir is the layout's directory.
func (l *Layout) Dir() string { return l.dir }

// Init creates the layout if it does not exist: the directory, blobs/sha256 and oci-layout.
// An existing layout is left as it is.
func (l *Layout) Init() error {
	if err := os.MkdirAll(filepath.Join(l.dir, "blobs", "sha256"), 0o755); err != nil {
		return fmt.Errorf("create OCI layout: %w", err)
	}
	p := filepath.Join(l.dir, layoutFile)
	if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
		if err := writeFileAtomic(p, []byte(layoutVersion)); err != nil {
			return fmt.Errorf("create OCI layout: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("create OCI layout: %w", err)
	}
	return nil
}

// HasIndex reports whether the layout has an index.json (a new layout has none until its
// first Tag).
func (l *Layout) HasIndex() bool {
	_, err := os.Stat(filepath.Join(l.dir, indexFile))
	return err == nil
}

// Index reads and parses index.json. Its descriptors' digests are valid (v1.Hash parses
// them), but may name blobs the layout lacks.
func (l *Layout) Index() (*v1.IndexManifest, error) {
	b, err := l.readIndex()
	if err != nil {
		return nil, err
	}
	return parseIndex(b, filepath.Join(l.dir, indexFile))
}

// readIndex reads index.json, at most MaxIndexSize bytes of it.
func (l *Layout) readIndex() ([]byte, error) {
	p := filepath.Join(l.dir, indexFile)
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat(l.dir); serr != nil {
			return nil, fmt.Errorf("no OCI layout at %s: %w", l.dir, serr)
		}
		return nil, fmt.Errorf("no OCI layout at %s: index.json missing", l.dir)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxIndexSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	if len(b) > MaxIndexSize {
		return nil, fmt.Errorf("%s: more than %d bytes", p, MaxIndexSize)
	}
	return b, nil
}

// parseIndex parses index.json, named name in errors.
func parseIndex(b []byte, name string) (*v1.IndexManifest, error) {
	if err := jsonlimit.Check(b, name); err != nil {
		return nil, err
	}
	var idx v1.IndexManifest
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, fmt.Errorf("parse %s: %w", name, err)
	}
	return &idx, nil
}

// Tagged returns the descriptors idx tags tag, in index order.
func Tagged(idx *v1.IndexManifest, tag string) []v1.Descriptor {
	var found []v1.Descriptor
	for _, d := range idx.Manifests {
		if ref, ok := d.Annotations[AnnotationRefName]; ok && ref == tag {
			found = append(found, d)
		}
	}
	return found
}

// Tags returns the tags in idx, sorted.
func Tags(idx *v1.IndexManifest) []string {
	var tags []string
	for _, d := range idx.Manifests {
		if ref, ok := d.Annotations[AnnotationRefName]; ok {
			tags = append(tags, ref)
		}
	}
	sort.Strings(tags)
	return tags
}

// Tag points tag at the manifest (or index) desc, which must already be in the layout:
// index.json gets desc's entry (its media type, digest, size, URLs, annotations, data,
// platform and artifact type, plus the tag's annotation) in place of any entry with the
// same tag, after the entries it keeps; it is created if missing, and replaced atomically.
func (l *Layout) Tag(desc v1.Descriptor, tag string) error {
	if err := l.checkBlob(desc); err != nil {
		return fmt.Errorf("tag %s: %w", tag, err)
	}
	unlock, err := l.lock()
	if err != nil {
		return err
	}
	defer unlock()

	p := filepath.Join(l.dir, indexFile)
	var old []byte
	if l.HasIndex() {
		if old, err = l.readIndex(); err != nil {
			return err
		}
	}
	b, err := updateIndex(old, desc, tag, p)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(p, b); err != nil {
		return fmt.Errorf("update index.json: %w", err)
	}
	return nil
}

// updateIndex returns index.json old (nil: none yet) with desc tagged tag; name is its name
// in errors.
func updateIndex(old []byte, desc v1.Descriptor, tag, name string) ([]byte, error) {
	out := indexJSON{SchemaVersion: 2, MediaType: types.OCIImageIndex}
	if old != nil {
		if _, err := parseIndex(old, name); err != nil { // what Index refuses, Tag does too
			return nil, err
		}
		if err := json.Unmarshal(old, &out); err != nil {
			return nil, fmt.Errorf("parse %s: %w", name, err)
		}
	}
	kept := out.Manifests[:0]
	for _, raw := range out.Manifests {
		var d struct {
			Annotations map[string]string `json:"annotations"`
		}
		if err := json.Unmarshal(raw, &d); err != nil {
			return nil, fmt.Errorf("parse %s: %w", name, err)
		}
		if ref, ok := d.Annotations[AnnotationRefName]; !ok || ref != tag {
			kept = append(kept, raw)
		}
	}
	entry, err := json.Marshal(entryOf(desc, tag))
	if err != nil {
		return nil, err
	}
	out.Manifests = append(kept, entry)
	b, err := json.Marshal(out)
	if err != nil {
		return nil, err
	}
	// Compacting may leave too many objects for Index's bound (an index padded with
	// blanks): refuse rather than write what Index would then refuse.
	if err := jsonlimit.Check(b, "new "+name); err != nil {
		return nil, err
	}
	return b, nil
}

// indexJSON is index.json as Tag rewrites it: the entries it keeps stay as they were, fields
// v1.Descriptor does not know included.
type indexJSON struct {
	SchemaVersion int64             `json:"schemaVersion"`
	MediaType     types.MediaType   `json:"mediaType,omitempty"`
	Manifests     []json.RawMessage `json:"manifests"`
	Annotations   map[string]string `json:"annotations,omitempty"`
	Subject       json.RawMessage   `json:"subject,omitempty"`
	ArtifactType  string            `json:"artifactType,omitempty"`
}

// entry is a descriptor with its fields in the OCI image spec's order (v1.Descriptor puts
// size before digest), so that an index.json written here reads as the spec's examples do
// and stays byte for byte what imagebuild wrote before this package.
type entry struct {
	MediaType    types.MediaType   `json:"mediaType"`
	Digest       v1.Hash           `json:"digest"`
	Size         int64             `json:"size"`
	URLs         []string          `json:"urls,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	Data         []byte            `json:"data,omitempty"`
	Platform     *v1.Platform      `json:"platform,omitempty"`
	ArtifactType string            `json:"artifactType,omitempty"`
}

func entryOf(d v1.Descriptor, tag string) entry {
	ann := make(map[string]string, len(d.Annotations)+1)
	for k, v := range d.Annotations {
		ann[k] = v
	}
	ann[AnnotationRefName] = tag
	return entry{
		MediaType: d.MediaType, Digest: d.Digest, Size: d.Size, URLs: d.URLs, Annotations: ann,
		Data: d.Data, Platform: d.Platform, ArtifactType: d.ArtifactType,
	}
}

// lock takes the layout's writer lock: an flock on its directory, which adds no file to it.
func (l *Layout) lock() (unlock func(), err error) {
	d, err := os.Open(l.dir)
	if err != nil {
		return nil, fmt.Errorf("lock OCI layout: %w", err)
	}
	if err := unix.Flock(int(d.Fd()), unix.LOCK_EX); err != nil {
		d.Close()
		return nil, fmt.Errorf("lock OCI layout %s: %w", l.dir, err)
	}
	return func() { d.Close() }, nil // closing the last descriptor releases the lock
}

// writeFileAtomic replaces path with data: temp file, fsync, rename, fsync of the directory.
func writeFileAtomic(path string, data []byte) error {
	w, err := newTempFile(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer w.discard()
	if _, err := io.Copy(w.f, bytes.NewReader(data)); err != nil {
		return err
	}
	return w.commit(path)
}
