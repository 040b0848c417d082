package format

import (
	"context"
	"errors"
	"io"
)

// Version is the layout version this package writes and reads.
const Version = 1

// WriterOption configures Write.
type WriterOption func(*writerOptions) error

type writerOptions struct {
	concurrency int
	level       int
}

// WithConcurrency sets how many chunks are compressed at once (default: GOMAXPROCS).
func WithConcurrency(n int) WriterOption {
	return func(o *writerOptions) error {
		if n < 1 {
			return errors.New("format: concurrency must be at least 1")
		}
		o.concurrency = n
		return nil
	}
}

// Write reads a tar stream from r and writes it to w as a lazypull layer.
func Write(ctx context.Context, w io.Writer, r io.Reader, opts ...WriterOption) (*Result, error) {
	return nil, errors.New("format.Write: not implemented yet")
}
