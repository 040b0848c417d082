package snapshot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay/overlayutils"
	"github.com/containerd/continuity/fs"
	"github.com/containerd/errdefs"
	"github.com/moby/sys/mountinfo"
	bolt "go.etcd.io/bbolt"
)

// FileSystem mounts layers lazily. labels are the snapshot's labels as Prepare got them:
// what the pull put on the layer descriptor. Mount fails when the labels do not name a
// layer it can mount; the layer then takes the ordinary path. The mount must outlive ctx.
type FileSystem interface {
	// Mount mounts the layer the labels name at mountpoint, an existing empty directory.
	Mount(ctx context.Context, mountpoint string, labels map[string]string) error
	// Check fails unless the layer is mounted at mountpoint and serving.
	Check(ctx context.Context, mountpoint string, labels map[string]string) error
	// Unmount undoes Mount; also a mount left by an earlier process.
	Unmount(ctx context.Context, mountpoint string) error
	// Usage is the disk the layer the labels name, mounted (or to be mounted again) at
	// mountpoint, takes where the FileSystem keeps its content: bytes and files (inodes).
	// It is called for every remote snapshot, periodically: it must be cheap.
	Usage(ctx context.Context, mountpoint string, labels map[string]string) (bytes, inodes int64, err error)
}

// ErrNotRemote is what a FileSystem's Mount answers (wrapped) when the labels do not name a
// layer of its, or when why it cannot mount the layer was reported already: the layer
// takes the ordinary path without a warning.
var ErrNotRemote = errors.New("not a remote layer")

// RemoteLabel marks a committed snapshot that a FileSystem mounts: "true".
const RemoteLabel = "containerd.io/snapshot/lazypull.remote"

// Option configures New.
type Option func(*Snapshotter)

// WithLogger sets where the snapshotter logs; without it (or with nil) it logs nowhere.
func WithLogger(l *slog.Logger) Option {
	return func(s *Snapshotter) {
		if l != nil {
			s.log = l
		}
	}
}

// WithMountOptions adds options to every overlay mount the snapshotter hands out.
func WithMountOptions(opts ...string) Option {
	return func(s *Snapshotter) { s.options = append(s.options, opts...) }
}

// Snapshotter is a containerd snapshots.Snapshotter on overlayfs with remote snapshots.
type Snapshotter struct {
	root    string
	ms      *storage.MetaStore
	fs      FileSystem // nil: no remote snapshots
	options []string
	log     *slog.Logger

	mu     sync.Mutex
	remote map[string]map[string]string // snapshot ID -> labels, of committed remote snapshots
}

var _ snapshots.Snapshotter = (*Snapshotter)(nil)

// New opens (or creates) the snapshotter at root: root/metadata.db and root/snapshots/ID.
// fsys may be nil: then it is containerd's overlayfs snapshotter and nothing more. Remote
// snapshots of an earlier run are mounted again when first used.
func New(root string, fsys FileSystem, opts ...Option) (*Snapshotter, error) {
	s := &Snapshotter{root: root, fs: fsys, log: slog.New(slog.DiscardHandler), remote: map[string]map[string]string{}}
	for _, o := range opts {
		o(s)
	}
	if err := os.MkdirAll(filepath.Join(root, "snapshots"), 0o700); err != nil {
		return nil, err
	}
	if ok, err := fs.SupportsDType(root); err != nil {
		return nil, err
	} else if !ok {
		return nil, fmt.Errorf("%s does not support d_type, which overlayfs needs", root)
	}
	if !hasOption(s.options, "userxattr") {
		if need, err := overlayutils.NeedsUserXAttr(root); err != nil {
			s.log.Warn("cannot tell whether overlayfs needs userxattr", "assume", need, "err", err)
		} else if need {
			s.options = append(s.options, "userxattr")
		}
	}
	if _, err := os.Stat("/sys/module/overlay/parameters/index"); err == nil && !hasOption(s.options, "index") {
		s.options = append(s.options, "index=off")
	}
	ms, err := storage.NewMetaStore(filepath.Join(root, "metadata.db"))
	if err != nil {
		return nil, err
	}
	s.ms = ms
	// Remote snapshots of an earlier run: Check fails for them until they are mounted again.
	err = ms.WithTransaction(context.Background(), false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, func(ctx context.Context, info snapshots.Info) error {
			if info.Kind != snapshots.KindCommitted || info.Labels[RemoteLabel] != "true" {
				return nil
			}
			id, _, _, err := storage.GetInfo(ctx, info.Name)
			if err != nil {
				return err
			}
			s.remote[id] = info.Labels
			return nil
		})
	})
	if err != nil && !errdefs.IsNotFound(err) { // not found: a new store, no buckets yet
		ms.Close()
		return nil, fmt.Errorf("snapshotter %s: %w", root, err)
	}
	return s, nil
}

func hasOption(options []string, key string) bool {
	for _, o := range options {
		if k, _, _ := strings.Cut(o, "="); k == key {
			return true
		}
	}
	return false
}

// Stat returns the info of an active or committed snapshot.
func (s *Snapshotter) Stat(ctx context.Context, key string) (info snapshots.Info, err error) {
	err = s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		_, info, _, err = storage.GetInfo(ctx, key)
		return err
	})
	return info, err
}

// Update changes the labels of a snapshot.
func (s *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (out snapshots.Info, err error) {
	err = s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		out, err = storage.UpdateInfo(ctx, info, fieldpaths...)
		return err
	})
	return out, err
}

// Usage is the disk use of a snapshot: scanned for an active one, recorded at commit for a
// committed one, and for a remote snapshot what the FileSystem holds of its layer now
// (containerd's CRI sums these for kubelet's image GC).
func (s *Snapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	var (
		id    string
		info  snapshots.Info
		usage snapshots.Usage
	)
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		id, info, usage, err = storage.GetInfo(ctx, key)
		return err
	}); err != nil {
		return usage, err
	}
	if info.Kind == snapshots.KindActive {
		du, err := fs.DiskUsage(ctx, s.upperPath(id))
		if err != nil {
			return snapshots.Usage{}, err
		}
		usage = snapshots.Usage(du)
	}
	if info.Kind == snapshots.KindCommitted && info.Labels[RemoteLabel] == "true" && s.fs != nil {
		size, inodes, err := s.fs.Usage(ctx, s.upperPath(id), info.Labels)
		if err != nil {
			return snapshots.Usage{}, fmt.Errorf("usage of remote snapshot %s: %w", key, err)
		}
		usage = snapshots.Usage{Size: size, Inodes: inodes}
	}
	return usage, nil
}

// Remote returns the labels of the committed remote snapshots: the layers the FileSystem
// mounts, or will mount again when they are used.
func (s *Snapshotter) Remote() []map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]map[string]string, 0, len(s.remote))
	for _, labels := range s.remote {
		out = append(out, labels)
	}
	return out
}

// Prepare creates an active snapshot; for a layer the FileSystem mounts (label
// containerd.io/snapshot.ref and the FileSystem's labels), it commits the remote snapshot
// under the ref's name instead and answers ErrAlreadyExists.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	var base snapshots.Info
	for _, o := range opts {
		if err := o(&base); err != nil {
			return nil, err
		}
	}
	mounts, id, err := s.createSnapshot(ctx, snapshots.KindActive, key, parent, opts)
	if err != nil {
		return nil, err
	}
	target, ok := base.Labels[snapshots.LabelSnapshotRef]
	if !ok || s.fs == nil {
		return mounts, nil
	}
	err = s.prepareRemote(ctx, key, id, target, base.Labels)
	if err == nil || errdefs.IsAlreadyExists(err) {
		return nil, fmt.Errorf("remote snapshot %s: %w", target, errdefs.ErrAlreadyExists)
	}
	if errors.Is(err, ErrNotRemote) {
		s.log.Debug("layer takes the ordinary path", "key", key, "ref", target, "err", err)
	} else {
		s.log.Warn("remote mount failed: layer takes the ordinary path", "key", key, "ref", target, "err", err)
	}
	return mounts, nil
}

// prepareRemote mounts the layer at the active snapshot id's directory and commits it as
// target. On failure nothing is mounted and the active snapshot is as it was, except when
// target exists already: then the active snapshot is removed too.
func (s *Snapshotter) prepareRemote(ctx context.Context, key, id, target string, labels map[string]string) error {
	mp := s.upperPath(id)
	if err := s.fs.Mount(ctx, mp, labels); err != nil {
		return err
	}
	committed := make(map[string]string, len(labels)+1)
	for k, v := range labels {
		committed[k] = v
	}
	committed[RemoteLabel] = "true"
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		_, err := storage.CommitActive(ctx, key, target, snapshots.Usage{}, snapshots.WithLabels(committed))
		return err
	})
	if err != nil {
		if uerr := s.fs.Unmount(ctx, mp); uerr != nil {
			s.log.Warn("unmount after failed commit", "dir", mp, "err", uerr)
		}
		if errdefs.IsAlreadyExists(err) {
			if rerr := s.Remove(ctx, key); rerr != nil {
				s.log.Warn("remove active snapshot", "key", key, "err", rerr)
			}
		}
		return fmt.Errorf("commit remote snapshot %s: %w", target, err)
	}
	s.mu.Lock()
	s.remote[id] = committed
	s.mu.Unlock()
	s.log.Info("remote snapshot", "name", target, "id", id)
	return nil
}

// View creates a read-only snapshot of parent.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	mounts, _, err := s.createSnapshot(ctx, snapshots.KindView, key, parent, opts)
	return mounts, err
}

// Mounts returns the mounts of an active or view snapshot.
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	var sn storage.Snapshot
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		sn, err = storage.GetSnapshot(ctx, key)
		return err
	}); err != nil {
		return nil, fmt.Errorf("failed to get active mount: %w", err)
	}
	if err := s.ensureRemote(ctx, sn.ParentIDs); err != nil {
		return nil, err
	}
	return s.mounts(sn), nil
}

// Commit commits an active snapshot under name.
func (s *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	return s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		id, _, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return err
		}
		du, err := fs.DiskUsage(ctx, s.upperPath(id))
		if err != nil {
			return err
		}
		if _, err := storage.CommitActive(ctx, key, name, snapshots.Usage(du), opts...); err != nil {
			return fmt.Errorf("failed to commit snapshot %s: %w", key, err)
		}
		return nil
	})
}

// Remove removes a snapshot and its directory (unmounting a remote snapshot first).
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	var removals []string
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		if _, _, err := storage.Remove(ctx, key); err != nil {
			return fmt.Errorf("failed to remove snapshot %s: %w", key, err)
		}
		var err error
		removals, err = s.cleanupDirectories(ctx)
		return err
	})
	if err != nil {
		return err
	}
	s.removeDirs(ctx, removals)
	return nil
}

// Walk calls fn for every snapshot the filters match.
func (s *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	return s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, fn, filters...)
	})
}

// Cleanup removes the directories no snapshot owns.
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	var dirs []string
	if err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		dirs, err = s.cleanupDirectories(ctx)
		return err
	}); err != nil {
		return err
	}
	s.removeDirs(ctx, dirs)
	return nil
}

// Close closes the metadata store. Remote snapshots stay mounted: the FileSystem's owner
// decides when they go.
func (s *Snapshotter) Close() error { return s.ms.Close() }

func (s *Snapshotter) cleanupDirectories(ctx context.Context) ([]string, error) {
	ids, err := storage.IDMap(ctx)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(s.root, "snapshots")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if _, ok := ids[e.Name()]; !ok {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out, nil
}

// removeDirs deletes snapshot directories, unmounting what is mounted in them first. A
// directory whose mount stays is left for a later Cleanup.
func (s *Snapshotter) removeDirs(ctx context.Context, dirs []string) {
	for _, dir := range dirs {
		id := filepath.Base(dir)
		s.mu.Lock()
		_, remote := s.remote[id]
		delete(s.remote, id)
		s.mu.Unlock()
		mp := filepath.Join(dir, "fs")
		if mounted(mp) || remote {
			if s.fs != nil {
				if err := s.fs.Unmount(ctx, mp); err != nil && mounted(mp) {
					s.log.Warn("unmount removed snapshot", "dir", mp, "err", err)
					continue
				}
			} else if mounted(mp) {
				if err := mount.UnmountAll(mp, syscall.MNT_DETACH); err != nil {
					s.log.Warn("unmount removed snapshot", "dir", mp, "err", err)
					continue
				}
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			s.log.Warn("remove snapshot directory", "dir", dir, "err", err)
		}
	}
}

// mounted: something (maybe a dead FUSE server's mount) is mounted at dir.
func mounted(dir string) bool {
	m, err := mountinfo.Mounted(dir)
	if err != nil {
		// A dead FUSE server's mount answers stat with ENOTCONN.
		return errors.Is(err, syscall.ENOTCONN)
	}
	return m
}

// ensureRemote checks the remote snapshots among ids and mounts again those that are not
// serving (after a restart of the daemon, or a crash of a mount).
func (s *Snapshotter) ensureRemote(ctx context.Context, ids []string) error {
	if s.fs == nil {
		return nil
	}
	for _, id := range ids {
		s.mu.Lock()
		labels, ok := s.remote[id]
		s.mu.Unlock()
		if !ok {
			continue
		}
		mp := s.upperPath(id)
		if err := s.fs.Check(ctx, mp, labels); err == nil {
			continue
		}
		_ = s.fs.Unmount(ctx, mp) // whatever is left there; nothing may be
		if err := s.fs.Mount(ctx, mp, labels); err != nil {
			return fmt.Errorf("remote snapshot %s (%s) is not available: %w", id, labels[snapshots.LabelSnapshotRef], err)
		}
		s.log.Info("remote snapshot mounted again", "id", id)
	}
	return nil
}

func (s *Snapshotter) createSnapshot(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt) (_ []mount.Mount, id string, err error) {
	var (
		sn       storage.Snapshot
		td, path string
	)
	defer func() {
		if err != nil {
			if td != "" {
				os.RemoveAll(td)
			}
			if path != "" {
				os.RemoveAll(path)
			}
		}
	}()
	snapshotDir := filepath.Join(s.root, "snapshots")
	err = s.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		td, err = os.MkdirTemp(snapshotDir, "new-")
		if err != nil {
			return fmt.Errorf("failed to create prepare snapshot dir: %w", err)
		}
		if err := os.Mkdir(filepath.Join(td, "fs"), 0o755); err != nil {
			return err
		}
		if kind == snapshots.KindActive {
			if err := os.Mkdir(filepath.Join(td, "work"), 0o711); err != nil {
				return err
			}
		}
		sn, err = storage.CreateSnapshot(ctx, kind, key, parent, opts...)
		if err != nil {
			return fmt.Errorf("failed to create snapshot: %w", err)
		}
		if len(sn.ParentIDs) > 0 {
			// The new upper directory takes the owner of the parent's root, as in
			// containerd's overlayfs snapshotter.
			fi, err := os.Stat(s.upperPath(sn.ParentIDs[0]))
			if err == nil {
				if st, ok := fi.Sys().(*syscall.Stat_t); ok {
					if err := os.Lchown(filepath.Join(td, "fs"), int(st.Uid), int(st.Gid)); err != nil {
						return fmt.Errorf("failed to chown: %w", err)
					}
				}
			}
		}
		path = filepath.Join(snapshotDir, sn.ID)
		if err := os.Rename(td, path); err != nil {
			return fmt.Errorf("failed to rename: %w", err)
		}
		td = ""
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	if err := s.ensureRemote(ctx, sn.ParentIDs); err != nil {
		return nil, "", errors.Join(err, s.Remove(ctx, key))
	}
	return s.mounts(sn), sn.ID, nil
}

// mounts is containerd's overlayfs snapshotter's answer: a bind mount for no parent or a
// view of one, overlayfs otherwise (the parents' directories as lower dirs).
func (s *Snapshotter) mounts(sn storage.Snapshot) []mount.Mount {
	if len(sn.ParentIDs) == 0 {
		ro := "rw"
		if sn.Kind == snapshots.KindView {
			ro = "ro"
		}
		return []mount.Mount{{Source: s.upperPath(sn.ID), Type: "bind", Options: []string{ro, "rbind"}}}
	}
	var options []string
	if sn.Kind == snapshots.KindActive {
		options = append(options, "workdir="+s.workPath(sn.ID), "upperdir="+s.upperPath(sn.ID))
	} else if len(sn.ParentIDs) == 1 {
		return []mount.Mount{{Source: s.upperPath(sn.ParentIDs[0]), Type: "bind", Options: []string{"ro", "rbind"}}}
	}
	lower := make([]string, len(sn.ParentIDs))
	for i, id := range sn.ParentIDs {
		lower[i] = s.upperPath(id)
	}
	options = append(options, "lowerdir="+strings.Join(lower, ":"))
	options = append(options, s.options...)
	return []mount.Mount{{Type: "overlay", Source: "overlay", Options: options}}
}

func (s *Snapshotter) upperPath(id string) string {
	return filepath.Join(s.root, "snapshots", id, "fs")
}
func (s *Snapshotter) workPath(id string) string {
	return filepath.Join(s.root, "snapshots", id, "work")
}

// ReadRemote returns the labels of the committed remote snapshots that the snapshotter at
// root recorded, reading its metadata without changing it: for a process that is not the
// snapshotter (a prune while it is stopped). It fails (wrapping fs.ErrNotExist when there
// is no metadata) rather than wait while a snapshotter has the metadata open.
func ReadRemote(ctx context.Context, root string) ([]map[string]string, error) {
	db := filepath.Join(root, "metadata.db")
	if _, err := os.Stat(db); err != nil {
		return nil, fmt.Errorf("snapshotter metadata: %w", err)
	}
	ms, err := storage.NewMetaStore(db, func(o *bolt.Options) error {
		o.ReadOnly = true
		o.Timeout = time.Second // a snapshotter holds it: do not wait for it
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("snapshotter metadata %s: %w", db, err)
	}
	defer ms.Close()
	var out []map[string]string
	err = ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, func(ctx context.Context, info snapshots.Info) error {
			if info.Kind == snapshots.KindCommitted && info.Labels[RemoteLabel] == "true" {
				out = append(out, info.Labels)
			}
			return nil
		})
	})
	if err != nil && !errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("snapshotter metadata %s: %w", db, err)
	}
	return out, nil
}
