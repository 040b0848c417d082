package imageindex

import (
	"archive/tar"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"

	"lazypull/format"
	"lazypull/format/gzindex"
	"lazypull/format/zstdindex"
)

// Built is what BuildLayer returns: the layer's index and the digest of its tar stream
// (the diff ID the image config names).
type Built struct {
	Layer
	DiffID format.Digest
}

// BuildLayer reads one layer blob r of kind kind once, from start to end, and builds its
// index: for a gzip blob, the gzindex with a checkpoint every spanSize compressed bytes
// (<= 0: gzindex.DefaultSpanSize), for a zstd blob the zstdindex (<= 0:
// zstdindex.DefaultSpanSize), their windows written to windows, the window blob; and the
// file table of the tar stream it decodes to, in the same pass; for an uncompressed blob,
// the file table only. Memory stays at a few hundred KiB plus the index (and, for zstd,
// about twice the largest frame window), whatever the layer's size.
func BuildLayer(r io.Reader, kind Kind, spanSize int64, windows io.Writer) (*Built, error) {
	var build func(out io.Writer) (*Layer, error)
	switch kind {
	case Tar:
		s := newScanner(r)
		if err := s.run(); err != nil {
			return nil, err
		}
		return &Built{Layer: Layer{Table: &s.t}, DiffID: format.Digest(s.diff.Sum(nil))}, nil
	case Gzip, Zstd:
		if windows == nil {
			return nil, fmt.Errorf("imageindex: a %v layer needs a writer for its window blob", kind)
		}
	default:
		return nil, fmt.Errorf("imageindex: layer of kind %v", kind)
	}
	switch kind {
	case Gzip:
		build = func(out io.Writer) (*Layer, error) {
			ix, err := gzindex.Build(r, spanSize, out, windows)
			return &Layer{GZ: ix}, err
		}
	case Zstd:
		build = func(out io.Writer) (*Layer, error) {
			ix, err := zstdindex.Build(r, spanSize, out, windows)
			return &Layer{ZS: ix}, err
		}
	}
	return buildTee(build)
}

// buildTee runs build, which decodes a compressed blob and writes its tar stream to out,
// and the tar scan of that stream, in one pass (a pipe between them).
func buildTee(build func(out io.Writer) (*Layer, error)) (*Built, error) {
	pr, pw := io.Pipe()
	type result struct {
		l   *Layer
		err error
	}
	done := make(chan result, 1)
	go func() {
		l, err := build(pw)
		pw.CloseWithError(err)
		done <- result{l, err}
	}()
	s := newScanner(pr)
	serr := s.run()
	// The scanner reads to the stream's end; if it stopped early, the build's next write
	// fails with its error.
	if serr != nil {
		pr.CloseWithError(serr)
	}
	res := <-done
	// Either failure carries the other's cause: report the one that came first.
	switch {
	case res.err != nil && (serr == nil || errors.Is(serr, res.err)):
		return nil, res.err
	case serr != nil:
		return nil, serr
	}
	l := res.l
	var size int64
	switch {
	case l.GZ != nil:
		size = l.GZ.Size()
	case l.ZS != nil:
		size = l.ZS.Size()
	}
	if size != s.t.TarSize {
		return nil, fmt.Errorf("imageindex: the %v stream is %d bytes, the tar scan read %d", l.Kind(), size, s.t.TarSize)
	}
	l.Table = &s.t
	return &Built{Layer: *l, DiffID: format.Digest(s.diff.Sum(nil))}, nil
}

// scanner reads a tar stream into a file table, counting the bytes read to know where
// each entry's content starts (archive/tar reads headers block by block, never ahead).
type scanner struct {
	src  io.Reader
	diff hash.Hash
	t    Table
}

func newScanner(r io.Reader) *scanner { return &scanner{src: r, diff: sha256.New()} }

// Read feeds archive/tar, hashing and counting what passes.
func (s *scanner) Read(b []byte) (int, error) {
	n, err := s.src.Read(b)
	if n > 0 {
		s.diff.Write(b[:n])
		s.t.TarSize += int64(n)
	}
	return n, err
}

// run reads the whole stream, trailer included.
func (s *scanner) run() error {
	tr := tar.NewReader(s)
	for {
		hdrStart := (s.t.TarSize + 511) &^ 511
		hdr, err := tr.Next()
		if err == io.EOF {
			if s.t.TarSize%512 != 0 {
				return fmt.Errorf("imageindex: tar stream truncated at offset %d, inside a block", s.t.TarSize)
			}
			break
		}
		if err != nil {
			return fmt.Errorf("imageindex: read tar entry at offset %d: %w", hdrStart, err)
		}
		e := format.EntryFromHeader(hdr)
		if e.Type == typeReg {
			start := s.t.TarSize
			h := sha256.New()
			if _, err := io.Copy(h, tr); err != nil {
				return fmt.Errorf("imageindex: read content of %q: %w", hdr.Name, err)
			}
			e.Digest = format.Digest(h.Sum(nil))
			e.TarOffset, e.TarLen = start, s.t.TarSize-start
			if e.Sparse {
				e.TarOffset, e.TarLen = hdrStart, s.t.TarSize-hdrStart
			} else if e.TarLen != e.Size {
				return fmt.Errorf("imageindex: %q: content of %d bytes read for a size of %d", hdr.Name, e.TarLen, e.Size)
			}
		}
		s.t.Entries = append(s.t.Entries, e)
	}
	if _, err := io.Copy(io.Discard, s); err != nil {
		return fmt.Errorf("imageindex: read tar trailer: %w", err)
	}
	return nil
}
