package convert

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"lazypull/format"
)

// layerJob is one distinct source layer to convert (or copy), and what became of it.
type layerJob struct {
	Layer
	comp    compression
	diffIDs []v1.Hash // what the image configs that list this layer say it decompresses to
	// newDiffID is the diff ID of the converted layer when it is not the source's: laid
	// out by a profile (Options.Profile), its entries are in another order.
	newDiffID *v1.Hash
}

// layerKey tells distinct source layers apart: the same blob listed with another media type
// would decompress differently.
type layerKey struct {
	digest v1.Hash
	mt     types.MediaType
	copy   bool
}

// runLayer converts (or copies) one layer to a temp file, then writes it to the destination.
func (c *converter) runLayer(ctx context.Context, j *layerJob) error {
	if err := c.runLayer1(ctx, j); err != nil {
		return fmt.Errorf("convert layer %s of %s: %w", j.Source.Digest, j.Image, err)
	}
	return nil
}

func (c *converter) runLayer1(ctx context.Context, j *layerJob) error {
	c.progress.LayerStart(j.Layer)
	rc, err := c.src.blob(ctx, j.Source)
	if err != nil {
		return err
	}
	defer rc.Close()
	vr, err := newVerifyReader(rc, j.Source, func(n int64) { c.progress.LayerRead(j.Source.Digest, n) })
	if err != nil {
		return err
	}

	tmp, err := os.CreateTemp(c.tmpDir, "layer-*")
	if err != nil {
		return err
	}
	defer func() {
		tmp.Close()
		os.Remove(tmp.Name())
	}()
	out := bufio.NewWriterSize(tmp, 1<<20)

	if j.Copied {
		if _, err := io.Copy(out, vr); err != nil {
			return err
		}
		j.Result = j.Source
	} else {
		rewrite := c.rewrite
		if c.opts.Profile != nil {
			rewrite = c.rewriteLaidOut
		}
		res, err := rewrite(ctx, j, vr, out)
		if err != nil {
			return err
		}
		// The digest is checked where the blob is written: by the layout sink as it copies
		// the temp file, by the registry as it receives it.
		digest, err := v1.NewHash(res.Digest)
		if err != nil {
			return fmt.Errorf("write lazypull layer: %w", err)
		}
		j.Result = v1.Descriptor{
			MediaType:   format.MediaTypeLayer,
			Digest:      digest,
			Size:        res.Size,
			Annotations: res.Annotations(),
		}
		j.Entries, j.Files, j.Chunks = res.Entries, res.Files, res.Chunks
	}
	if err := out.Flush(); err != nil {
		return fmt.Errorf("write temp file: %w", err)
	}
	// What is pushed is the temp file: it must hold the bytes format reported.
	if st, err := tmp.Stat(); err != nil {
		return fmt.Errorf("write temp file: %w", err)
	} else if st.Size() != j.Result.Size {
		return fmt.Errorf("write lazypull layer: %d bytes reported, but %d written", j.Result.Size, st.Size())
	}

	c.progress.LayerPush(j.Layer)
	if err := c.dst.putBlob(ctx, j.Result, func() (io.ReadCloser, error) { return os.Open(tmp.Name()) }); err != nil {
		return fmt.Errorf("write %s: %w", c.dstLoc, err)
	}
	c.progress.LayerDone(j.Layer)
	return nil
}

// rewrite decompresses the verified source blob and writes it to w as a lazypull layer. It
// returns only once the whole blob has been read and verified, and the tar stream hashes to
// the diff ID the image config lists: the converted layer keeps the original diff ID, which
// is what keeps the original config valid.
func (c *converter) rewrite(ctx context.Context, j *layerJob, vr *verifyReader, w io.Writer) (*format.Result, error) {
	dec, err := newDecoder(j.comp, vr)
	if err != nil {
		return nil, dec.blame(err)
	}
	defer dec.Close()

	res, err := format.Write(ctx, w, dec, format.WithConcurrency(c.writeConcurrency))
	if err != nil {
		if cause := dec.cause(); cause != nil {
			return nil, cause
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		// A damaged blob is the cause, even when format.Write tripped over it first.
		if verr := vr.Finish(); verr != nil {
			return nil, verr
		}
		return nil, fmt.Errorf("write lazypull layer: %w", err)
	}
	// Anything format.Write left unread would be missing from the converted layer.
	if n, err := io.Copy(io.Discard, dec); err != nil {
		return nil, err
	} else if n > 0 {
		return nil, fmt.Errorf("write lazypull layer: %d bytes of the tar stream left unread", n)
	}
	if err := vr.Finish(); err != nil {
		return nil, err
	}
	for _, want := range j.diffIDs {
		if res.DiffID != want.String() {
			return nil, fmt.Errorf("%w: layer decompresses to %s, but the image config lists diff ID %s", ErrDigestMismatch, res.DiffID, want)
		}
	}
	return res, nil
}

// decoder decompresses a layer blob and tells a corrupt stream apart from a bad blob.
type decoder struct {
	vr    *verifyReader
	kind  compression
	r     io.Reader
	close func()
	err   error // first error Read returned, already blamed
}

func newDecoder(kind compression, vr *verifyReader) (*decoder, error) {
	d := &decoder{vr: vr, kind: kind, r: vr, close: func() {}}
	switch kind {
	case gzipped:
		zr, err := gzip.NewReader(vr)
		if err != nil {
			return d, err
		}
		d.r, d.close = zr, func() { zr.Close() }
	case zstdCompressed:
		zr, err := zstd.NewReader(vr, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return d, err
		}
		d.r, d.close = zr, zr.Close
	}
	return d, nil
}

func (d *decoder) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	if err != nil && err != io.EOF {
		err = d.blame(err)
		if d.err == nil {
			d.err = err
		}
	}
	return n, err
}

func (d *decoder) Close() { d.close() }

// cause is the first error Read returned, nil if none.
func (d *decoder) cause() error { return d.err }

// blame turns a decompression error into the error to report. A blob that fails its own
// digest or size check is the cause, even when the decompressor tripped over it first, so on a
// decompression error the rest of the blob is read to find out.
func (d *decoder) blame(err error) error {
	if verr := d.vr.Err(); verr != nil {
		return verr
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || d.kind == uncompressed {
		return err
	}
	if verr := d.vr.Finish(); verr != nil {
		return verr
	}
	return fmt.Errorf("%w %s: %w", ErrCorrupt, d.kind, err)
}

// rewriteLaidOut is rewrite with the layer's entries laid out by Options.Profile (see
// layout.go): the decompressed stream is spooled to a temp file and checked against the
// diff ID the config lists, its entries are listed, and format.Write reads them in the new
// order. The layer's new diff ID is kept in j for the config.
func (c *converter) rewriteLaidOut(ctx context.Context, j *layerJob, vr *verifyReader, w io.Writer) (*format.Result, error) {
	dec, err := newDecoder(j.comp, vr)
	if err != nil {
		return nil, dec.blame(err)
	}
	defer dec.Close()
	spool, err := os.CreateTemp(c.tmpDir, "tar-*")
	if err != nil {
		return nil, fmt.Errorf("spool the tar stream: %w", err)
	}
	defer func() {
		spool.Close()
		os.Remove(spool.Name())
	}()
	h := sha256.New()
	n, err := io.Copy(spool, io.TeeReader(dec, h))
	if err != nil {
		if cause := dec.cause(); cause != nil {
			return nil, cause
		}
		return nil, fmt.Errorf("spool the tar stream to %s: %w", spool.Name(), err)
	}
	if err := vr.Finish(); err != nil {
		return nil, err
	}
	diffID := "sha256:" + hex.EncodeToString(h.Sum(nil))
	for _, want := range j.diffIDs {
		if diffID != want.String() {
			return nil, fmt.Errorf("%w: layer decompresses to %s, but the image config lists diff ID %s", ErrDigestMismatch, diffID, want)
		}
	}
	entries, trailer, err := scanTar(io.NewSectionReader(spool, 0, n), n)
	if err != nil {
		return nil, fmt.Errorf("lay out by profile: %w", err)
	}
	order, moved := layoutOrder(entries, c.opts.Profile)
	j.Profiled = moved
	c.log.Info("laid out by profile", "layer", j.Source.Digest.String(), "image", j.Image, "files_first", moved, "entries", len(entries))
	var r io.Reader = io.NewSectionReader(spool, 0, n)
	if moved > 0 {
		r = sectionsReader(spool, entries, order, trailer, n)
	}
	res, err := format.Write(ctx, w, r, format.WithConcurrency(c.writeConcurrency))
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("write lazypull layer: %w", err)
	}
	if res.TarSize != n {
		return nil, fmt.Errorf("write lazypull layer: %d bytes of tar written, %d read", res.TarSize, n)
	}
	if res.DiffID != diffID {
		d, err := v1.NewHash(res.DiffID)
		if err != nil {
			return nil, fmt.Errorf("write lazypull layer: %w", err)
		}
		j.newDiffID = &d
	}
	return res, nil
}
