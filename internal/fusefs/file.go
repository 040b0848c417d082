package fusefs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// handle is an open regular file. Reads that reach it go to the local copy when there is
// one, else to the layer's Content.
type handle struct {
	in    *inode
	local *os.File
	pt    bool // counted in in.ptOpens, else in in.cachedOpens
}

// handleTable numbers the open files of a view. A handle number carries the epoch of the
// process that made it: after a Restore the kernel still holds the handles of the earlier
// process, which this table does not know; they are served without state (reads go to the
// Content) and their release is a no-op.
type handleTable struct {
	mu    sync.Mutex
	open  map[uint64]*handle
	next  uint64
	epoch uint64 // 24 bits
}

func (t *handleTable) add(h *handle) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.next++
	fh := t.epoch<<40 | t.next&(1<<40-1)
	t.open[fh] = h
	return fh
}

func (t *handleTable) get(fh uint64) *handle {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.open[fh]
}

func (t *handleTable) remove(fh uint64) *handle {
	t.mu.Lock()
	defer t.mu.Unlock()
	h := t.open[fh]
	delete(t.open, fh)
	return h
}

// Open opens a regular file for reading. It reads nothing: reads go to the Content by range,
// or, when the Content has a complete local copy, to that copy through FUSE passthrough.
//
// The kernel fails (EIO) a passthrough open of an inode open for cached reads, and a cached
// open of an inode open for passthrough. So while an inode has opens, new ones take the same
// mode: a file that became local while open is read from its copy through FUSE until all
// its opens are closed; a file whose copy went away while open for passthrough keeps the
// backing file the kernel already has. A restored view cannot know the modes of the opens
// the earlier process answered, and the files a container keeps open the longest (its
// programs) were opened cold, for cached reads; so a restored view opens every file for
// cached reads, from the local copy when there is one.
func (r *Root) Open(cancel <-chan struct{}, oi *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	in, st := r.node(oi.NodeId)
	if !st.Ok() {
		return st
	}
	if oi.Flags&syscall.O_ACCMODE != syscall.O_RDONLY || oi.Flags&syscall.O_TRUNC != 0 {
		return fuse.EROFS
	}
	if in.n.kind != kindReg {
		// The kernel opens devices and fifos itself and never opens symlinks.
		return fuse.EINVAL
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	h := &handle{in: in, local: in.localFile()}
	out.OpenFlags = fuse.FOPEN_KEEP_CACHE
	if !r.v.restored && r.v.record == nil && (in.ptOpens > 0 || in.cachedOpens == 0 && h.local != nil) && r.passthrough(in, h.local) {
		in.ptOpens++
		h.pt = true
		// The kernel refuses a passthrough open that also asks to keep the page cache.
		out.OpenFlags = fuse.FOPEN_PASSTHROUGH
		out.BackingID = in.backingID
	} else {
		in.cachedOpens++
	}
	out.Fh = r.v.handles.add(h)
	return fuse.OK
}

// passthrough makes sure the inode has a backing file registered, from local (which may be
// nil when the inode has one already). It reports false when the kernel refuses, once per
// view in the log; reads then come through FUSE.
func (r *Root) passthrough(in *inode, local *os.File) bool {
	if in.ptOpens > 0 {
		return true
	}
	srv := r.v.srv.Load()
	if local == nil || srv == nil || r.v.passthroughOff.Load() {
		return false
	}
	if srv.KernelSettings().Flags64()&fuse.CAP_PASSTHROUGH == 0 {
		r.v.passthroughOff.Store(true)
		return false
	}
	id, errno := srv.RegisterBackingFd(&fuse.BackingMap{Fd: int32(local.Fd())})
	if errno != 0 {
		if r.v.passthroughOff.CompareAndSwap(false, true) {
			r.v.log.Info("fusefs: the kernel does not take FUSE passthrough; local files are read through FUSE", "path", in.path(), "err", errno)
		}
		return false
	}
	in.backingID = id
	return true
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

func (r *Root) Read(cancel <-chan struct{}, ri *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	in, st := r.node(ri.NodeId)
	if !st.Ok() {
		return nil, st
	}
	if in.n.kind != kindReg {
		return nil, fuse.EINVAL
	}
	if r.v.frozen.Load() {
		select {} // unanswered: see Server.Freeze
	}
	if rec := r.v.record; rec != nil && int64(ri.Offset) < in.n.e.Size {
		rec(in.n.layer, in.n.e, int64(ri.Offset), min(int64(ri.Size), in.n.e.Size-int64(ri.Offset)))
	}
	var local *os.File
	if h := r.v.handles.get(ri.Fh); h != nil {
		local = h.local
	}
	return in.read(&fuse.Context{Cancel: cancel}, local, buf[:min(len(buf), int(ri.Size))], int64(ri.Offset))
}

// read reads at off into dest from local, or from the Content when local is nil.
func (in *inode) read(ctx context.Context, local *os.File, dest []byte, off int64) (fuse.ReadResult, fuse.Status) {
	size := in.n.e.Size
	if off < 0 {
		return nil, fuse.EINVAL
	}
	if off >= size {
		return fuse.ReadResultData(nil), fuse.OK
	}
	dest = dest[:min(int64(len(dest)), size-off)]
	if ctx.Err() != nil {
		return nil, fuse.EINTR
	}
	var n int
	var err error
	if local != nil {
		n, err = local.ReadAt(dest, off)
	} else {
		n, err = in.v.layers[in.n.layer].Content.ReadAt(ctx, in.n.e, dest, off)
	}
	if n < len(dest) {
		if ctx.Err() != nil || errors.Is(err, context.Canceled) {
			return nil, fuse.EINTR
		}
		switch {
		case err == nil:
			err = io.ErrNoProgress // a Content that breaks io.ReaderAt's contract
		case errors.Is(err, io.EOF):
			err = fmt.Errorf("content ends at %d, size is %d: %w", off+int64(n), size, io.ErrUnexpectedEOF)
		}
		if local != nil {
			err = fmt.Errorf("local copy %s: %w", local.Name(), err)
		}
		in.logReadError(err, off, len(dest))
		return nil, fuse.EIO
	}
	// A vector goes to the kernel with writev; ReadResultData would first try to splice it
	// through a pipe, which cannot hold a 1 MiB reply and its header.
	return fuse.ReadResultVector([][]byte{dest[:n]}), fuse.OK
}

func (r *Root) Release(cancel <-chan struct{}, ri *fuse.ReleaseIn) {
	h := r.v.handles.remove(ri.Fh)
	if h == nil {
		return // a handle of an earlier process (Restore)
	}
	if h.local != nil {
		h.local.Close()
	}
	in := h.in
	in.mu.Lock()
	defer in.mu.Unlock()
	if !h.pt {
		in.cachedOpens--
		return
	}
	in.ptOpens--
	if in.ptOpens == 0 && in.backingID != 0 {
		if srv := r.v.srv.Load(); srv != nil {
			srv.UnregisterBackingFd(in.backingID)
		}
		in.backingID = 0
	}
}

// repeatWindow: failed reads of one file within this long after a logged one are logged at
// debug level only. The kernel often asks twice for one read(2) (readahead, then the page),
// and a broken backend should not flood the log.
const repeatWindow = time.Second

func (in *inode) logReadError(err error, off int64, length int) {
	now := time.Now().UnixNano()
	level := slog.LevelError
	var rep interface{ Reported() bool }
	if errors.As(err, &rep) && rep.Reported() {
		level = slog.LevelDebug // the Content logged it
	} else if last := in.lastErr.Load(); last != 0 && now-last < int64(repeatWindow) {
		level = slog.LevelDebug
	} else {
		in.lastErr.Store(now)
	}
	in.v.log.Log(context.Background(), level, "fusefs: read failed", "path", in.path(), "layer", in.n.layer, "offset", off, "length", length, "err", err)
}
