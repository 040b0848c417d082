package fusefs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Open opens a regular file for reading. It reads nothing: reads go to the Content by range,
// or, when the Content has a complete local copy, to that copy through FUSE passthrough.
//
// The kernel fails (EIO) a passthrough open of an inode open for cached reads, and a cached
// open of an inode open for passthrough. So while an inode has opens, new ones take the same
// mode: a file that became local while open is read from its copy through FUSE until all
// its opens are closed; a file whose copy went away while open for passthrough keeps the
// backing file the kernel already has.
func (in *inode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&syscall.O_TRUNC != 0 {
		return nil, 0, syscall.EROFS
	}
	if in.n.kind != kindReg {
		// The kernel opens devices and fifos itself and never opens symlinks.
		return nil, 0, syscall.EINVAL
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	h := fileHandle{in: in, local: in.localFile()}
	if in.ptOpens > 0 || in.cachedOpens == 0 && h.local != nil {
		in.ptOpens++
		h.pt = true
		return &passthroughHandle{h}, fuse.FOPEN_KEEP_CACHE, 0
	}
	in.cachedOpens++
	return &h, fuse.FOPEN_KEEP_CACHE, 0
}

// localFile returns the complete local copy of the file, or nil.
func (in *inode) localFile() *os.File {
	lf, ok := in.v.layers[in.n.layer].Content.(LocalFiler)
	if !ok {
		return nil
	}
	f, ok := lf.LocalFile(in.n.e)
	if !ok || f == nil {
		return nil
	}
	if st, err := f.Stat(); err == nil && st.Mode().IsRegular() && st.Size() == in.n.e.Size {
		return f
	}
	in.v.log.Warn("fusefs: local copy has the wrong size; reading through the content instead", "path", in.path(), "file", f.Name())
	f.Close()
	return nil
}

// path returns a path of the inode in the mount, for logs.
func (in *inode) path() string {
	return "/" + in.Path(nil)
}

// fileHandle is an open regular file. Reads that reach it go to the local copy when there
// is one, else to the layer's Content.
type fileHandle struct {
	in    *inode
	local *os.File
	pt    bool // counted in in.ptOpens, else in in.cachedOpens
}

var (
	_ = (fs.FileReader)((*fileHandle)(nil))
	_ = (fs.FileReleaser)((*fileHandle)(nil))
)

func (h *fileHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	size := h.in.n.e.Size
	if off < 0 {
		return nil, syscall.EINVAL
	}
	if off >= size {
		return fuse.ReadResultData(nil), 0
	}
	dest = dest[:min(int64(len(dest)), size-off)]
	if ctx.Err() != nil {
		return nil, syscall.EINTR
	}
	var n int
	var err error
	if h.local != nil {
		n, err = h.local.ReadAt(dest, off)
	} else {
		n, err = h.in.v.layers[h.in.n.layer].Content.ReadAt(ctx, h.in.n.e, dest, off)
	}
	if n < len(dest) {
		if ctx.Err() != nil || errors.Is(err, context.Canceled) {
			return nil, syscall.EINTR
		}
		switch {
		case err == nil:
			err = io.ErrNoProgress // a Content that breaks io.ReaderAt's contract
		case errors.Is(err, io.EOF):
			err = fmt.Errorf("content ends at %d, size is %d: %w", off+int64(n), size, io.ErrUnexpectedEOF)
		}
		if h.local != nil {
			err = fmt.Errorf("local copy %s: %w", h.local.Name(), err)
		}
		h.in.logReadError(err, off, len(dest))
		return nil, syscall.EIO
	}
	// A vector goes to the kernel with writev; ReadResultData would first try to splice it
	// through a pipe, which cannot hold a 1 MiB reply and its header.
	return fuse.ReadResultVector([][]byte{dest[:n]}), 0
}

func (h *fileHandle) Release(ctx context.Context) syscall.Errno {
	if h.local != nil {
		h.local.Close()
	}
	h.in.mu.Lock()
	if h.pt {
		h.in.ptOpens--
	} else {
		h.in.cachedOpens--
	}
	h.in.mu.Unlock()
	return 0
}

// passthroughHandle offers the kernel the local copy as the backing file (FUSE
// passthrough); reads then never come here. go-fuse registers the backing file on the first
// such open of an inode and reuses it for the others, so a handle without a copy of its own
// (evicted meanwhile) still passes through. When the kernel refuses, reads come through FUSE.
type passthroughHandle struct {
	fileHandle
}

var _ = (fs.FilePassthroughFder)((*passthroughHandle)(nil))

func (h *passthroughHandle) PassthroughFd() (int, bool) {
	if h.local == nil {
		return -1, false
	}
	return int(h.local.Fd()), true
}

func (h *passthroughHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if h.in.v.passthroughOff.CompareAndSwap(false, true) {
		h.in.v.log.Info("fusefs: the kernel does not take FUSE passthrough; local files are read through FUSE", "path", h.in.path())
	}
	return h.fileHandle.Read(ctx, dest, off)
}

// repeatWindow: failed reads of one file within this long after a logged one are logged at
// debug level only. The kernel often asks twice for one read(2) (readahead, then the page),
// and a broken backend should not flood the log.
const repeatWindow = time.Second

func (in *inode) logReadError(err error, off int64, length int) {
	now := time.Now().UnixNano()
	level := slog.LevelError
	if last := in.lastErr.Load(); last != 0 && now-last < int64(repeatWindow) {
		level = slog.LevelDebug
	} else {
		in.lastErr.Store(now)
	}
	in.v.log.Log(context.Background(), level, "fusefs: read failed", "path", in.path(), "layer", in.n.layer, "offset", off, "length", length, "err", err)
}
