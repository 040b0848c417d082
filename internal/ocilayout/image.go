package ocilayout

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Image returns the image whose manifest desc names, as go-containerregistry's v1.Image:
// its manifest and config are read and checked now, its layers' blobs when they are read
// (a layer's Compressed fails at its end if the blob is not what the manifest says).
func (l *Layout) Image(desc v1.Descriptor) (v1.Image, error) {
	raw, err := l.ReadBlob(desc)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", desc.Digest, err)
	}
	var m v1.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", desc.Digest, err)
	}
	cfg, err := l.ReadBlob(m.Config)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", m.Config.Digest, err)
	}
	mt := desc.MediaType
	if m.MediaType != "" {
		mt = m.MediaType
	}
	return partial.CompressedToImage(&image{l: l, raw: raw, mt: mt, cfg: cfg, m: &m})
}

// image is partial's CompressedImageCore of an image in a layout.
type image struct {
	l   *Layout
	raw []byte
	mt  types.MediaType
	cfg []byte
	m   *v1.Manifest
}

func (i *image) RawConfigFile() ([]byte, error)      { return i.cfg, nil }
func (i *image) MediaType() (types.MediaType, error) { return i.mt, nil }
func (i *image) RawManifest() ([]byte, error)        { return i.raw, nil }

func (i *image) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if h == i.m.Config.Digest {
		return &layer{l: i.l, desc: i.m.Config}, nil
	}
	for _, d := range i.m.Layers {
		if d.Digest == h {
			return &layer{l: i.l, desc: d}, nil
		}
	}
	return nil, fmt.Errorf("blob %s not in manifest", h)
}

// layer is a blob of an image in a layout, checked as it is read.
type layer struct {
	l    *Layout
	desc v1.Descriptor
}

func (b *layer) Digest() (v1.Hash, error)            { return b.desc.Digest, nil }
func (b *layer) Size() (int64, error)                { return b.desc.Size, nil }
func (b *layer) MediaType() (types.MediaType, error) { return b.desc.MediaType, nil }

func (b *layer) Compressed() (io.ReadCloser, error) {
	f, err := b.l.Blob(b.desc.Digest)
	if err != nil {
		return nil, err
	}
	vr, err := NewVerifyReader(f, b.desc, nil)
	if err != nil {
		f.Close()
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{vr, f}, nil
}

// WriteImage stores img's layers, config and manifest (each checked against its digest as
// it is written) and returns the manifest's descriptor, to Tag.
func (l *Layout) WriteImage(img v1.Image) (v1.Descriptor, error) {
	layers, err := img.Layers()
	if err != nil {
		return v1.Descriptor{}, err
	}
	for _, ly := range layers {
		if err := l.writeLayer(ly); err != nil {
			return v1.Descriptor{}, err
		}
	}
	cfgName, err := img.ConfigName()
	if err != nil {
		return v1.Descriptor{}, err
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return v1.Descriptor{}, err
	}
	if err := l.WriteBlob(v1.Descriptor{Digest: cfgName, Size: int64(len(cfg))}, bytes.NewReader(cfg)); err != nil {
		return v1.Descriptor{}, err
	}
	desc, err := partial.Descriptor(img)
	if err != nil {
		return v1.Descriptor{}, err
	}
	raw, err := img.RawManifest()
	if err != nil {
		return v1.Descriptor{}, err
	}
	if err := l.WriteBlob(*desc, bytes.NewReader(raw)); err != nil {
		return v1.Descriptor{}, err
	}
	return v1.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size}, nil
}

func (l *Layout) writeLayer(ly v1.Layer) error {
	d, err := ly.Digest()
	if err != nil {
		return err
	}
	n, err := ly.Size()
	if err != nil {
		return err
	}
	rc, err := ly.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	return l.WriteBlob(v1.Descriptor{Digest: d, Size: n}, rc)
}
