package fusefs

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"time"

	"lazypull/format"
)

// Content serves the verified bytes of the regular files of one layer.
//
// ReadAt reads len(p) bytes of e's content starting at off, with io.ReaderAt's contract: it
// returns n < len(p) only with an error (io.EOF at the end of the file). e is always a
// regular file entry of the layer's index (hard links are resolved first), and off+len(p)
// never exceeds e.Size. It must honour ctx (a canceled ctx means the reader was
// interrupted) and be safe for concurrent use.
type Content interface {
	ReadAt(ctx context.Context, e *format.Entry, p []byte, off int64) (int, error)
}

// LocalFiler is implemented by a Content that can hand out a complete local copy of a file,
// already verified, for FUSE passthrough. LocalFile returns (nil, false) when it has none;
// otherwise the caller owns the returned file, opened read-only, and closes it. The file's
// size must be e.Size; a copy of another size is not used.
type LocalFiler interface {
	LocalFile(e *format.Entry) (*os.File, bool)
}

// Checker is implemented by a Content that checks what the index says of an entry before
// it is served. fusefs calls Check before it serves a symlink's target (a regular file's
// content is the Content's to check in ReadAt); an error fails the request with EIO.
type Checker interface {
	Check(ctx context.Context, e *format.Entry) error
}

// An error a Content has logged already, and that every request for the entry will meet
// again, has a method Reported() bool that returns true: fusefs logs it at debug level.

// Layer is one layer of an image: its index and the source of its file content.
type Layer struct {
	Index   *format.Index
	Content Content
}

// Option configures NewLayer and NewMerged.
type Option func(*config)

type config struct {
	log    *slog.Logger
	record Recorder
}

// Recorder is told of every read that reaches the filesystem: n bytes at off of the
// regular file e (hard links resolved) of the view's layer (its position, lowest first).
// It is called before the read is served, from many goroutines at once, and must be quick.
type Recorder func(layer int, e *format.Entry, off, n int64)

// WithRecorder has rec told of every read (a profile recording). A recording view never
// uses FUSE passthrough, which would hide reads from it: every first read of a page then
// reaches the filesystem, and the kernel's page cache serves the rest.
func WithRecorder(rec Recorder) Option {
	return func(c *config) { c.record = rec }
}

// WithLogger sets where read errors and warnings are logged; without it (or with nil) they
// are discarded.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) {
		if l != nil {
			c.log = l
		}
	}
}

// DefaultTimeout is how long the kernel caches entries and attributes. Layers never change,
// so it is long.
const DefaultTimeout = time.Hour

var errNoLayers = errors.New("fusefs: no layers")
