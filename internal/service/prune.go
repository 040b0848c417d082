package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"lazypull/internal/daemon"
	"lazypull/internal/snapshot"
	"lazypull/internal/store"
	"lazypull/internal/unixsock"
)

// A prune removes from the store what no image in use needs. The process that holds the
// store (the snapshotter, a mount) does it when there is one: `lazypull prune` asks it on
// the admin socket in the store's directory (owner-only, as the store is), and it prunes
// under its own lock, keeping what its remote snapshots and open images use. With no
// holder, prune opens the store itself and reads the snapshotter's metadata for the same
// rule (docs/design.md, "Prune").

// AdminSocket is the name, in the store's directory, of the unix socket the process that
// holds the store answers prunes on.
const AdminSocket = "admin.sock"

// prunePath is the admin socket's request: POST, with the target in bytes as "to".
const prunePath = "/prune"

// PruneReport says what a prune removed and what it kept.
type PruneReport struct {
	store.PruneResult
	// Holder is the pid of the process holding the store that pruned it; 0 when prune
	// opened the store itself.
	Holder int `json:"holder,omitempty"`
	// Before and After are the store's bytes.
	Before int64 `json:"before"`
	After  int64 `json:"after"`
	// Layers counts the layers in use (remote snapshots, layers of open images) whose
	// index and content were kept, each once; Images the images open.
	Layers int `json:"layers"`
	Images int `json:"images"`
	// AllMeta, when not "", says why every manifest and index was kept.
	AllMeta string `json:"all_meta,omitempty"`
	// Problems are the layers in use whose content could not be told, and was not kept.
	Problems []string `json:"problems,omitempty"`
}

// inUse lists what a prune keeps: the remote snapshots' layers, and the images open.
type inUse func() ([]daemon.LayerUse, []*daemon.Image, []string)

// remoteUses reads the layers of remote snapshots from their labels; problems names
// those whose labels do not say.
func remoteUses(labels []map[string]string) (uses []daemon.LayerUse, problems []string) {
	for _, l := range labels {
		u, ok := daemon.UseOf(l)
		if !ok {
			problems = append(problems, fmt.Sprintf("remote snapshot %s: its labels name no image manifest; its content is not kept", l["containerd.io/snapshot.ref"]))
			continue
		}
		uses = append(uses, u)
	}
	return uses, problems
}

// pruneStore prunes st down to target bytes, keeping what use says is in use.
func pruneStore(ctx context.Context, st *store.Store, target int64, use inUse) (PruneReport, error) {
	uses, images, problems := use()
	keep, layers, more := daemon.KeepInUse(st, uses, images)
	r := PruneReport{Before: st.Stats().Bytes, Layers: layers, Images: len(images), Problems: append(problems, more...)}
	res, err := st.PruneKeeping(ctx, target, keep)
	r.PruneResult, r.After = res, st.Stats().Bytes
	return r, err
}

// serveAdmin serves prunes of the node's store on its admin socket until close, keeping
// what use lists. A store whose path leaves no room for the socket's is served without.
func (n *node) serveAdmin(use inUse) error {
	p := filepath.Join(n.store.Dir(), AdminSocket)
	if len(p) >= unixPathMax {
		n.log.Warn("no admin socket: the store's path is too long for a unix socket; `lazypull prune` needs the holder stopped", "path", p)
		return nil
	}
	// The store is ours (its lock): a socket there is a stale one of an earlier holder.
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("admin socket: %w", err)
	}
	ln, err := unixsock.Listen("unix", p)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+prunePath, func(w http.ResponseWriter, r *http.Request) {
		target, err := strconv.ParseInt(r.URL.Query().Get("to"), 10, 64)
		if err != nil || target < 0 {
			http.Error(w, "prune: want to=BYTES, not negative", http.StatusBadRequest)
			return
		}
		rep, err := pruneStore(r.Context(), n.store, target, use)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		rep.Holder = os.Getpid()
		n.log.Info("store pruned", "objects", rep.Objects, "bytes", rep.Bytes, "layers_kept", rep.Layers, "problems", len(rep.Problems))
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(rep)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Warn("admin socket", "path", p, "err", err)
		}
	}()
	n.onClose(func() { srv.Close() })
	return nil
}

// errNoHolder: nothing answers on the store's admin socket.
var errNoHolder = errors.New("no process holding the store answers")

// askPrune asks the process holding the store at dir to prune it.
func askPrune(ctx context.Context, dir string, target int64) (PruneReport, error) {
	var r PruneReport
	p := filepath.Join(dir, AdminSocket)
	conn, err := (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, "unix", p)
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
		return r, errNoHolder
	}
	if err != nil {
		return r, fmt.Errorf("prune: the process holding the store: %w", err)
	}
	conn.Close()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", p)
	}}}
	defer c.CloseIdleConnections()
	u := "http://store" + prunePath + "?" + url.Values{"to": {strconv.FormatInt(target, 10)}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return r, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return r, fmt.Errorf("prune: the process holding the store, on %s: %w", p, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return r, fmt.Errorf("prune: the process holding the store refused: %s", strings.TrimSpace(string(b)))
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&r); err != nil {
		return r, fmt.Errorf("prune: the answer of the process holding the store: %w", err)
	}
	return r, nil
}

// Prune removes what no image in use needs from the store at dir, least recently used
// first, down to target bytes (0: all it may). The process holding the store does it
// when there is one; else the store is opened here, and what the snapshotter whose root
// is root recorded (its remote snapshots) is kept; when that cannot be read, every
// manifest and index is kept (AllMeta says why).
func Prune(ctx context.Context, dir, root string, target int64, log *slog.Logger) (PruneReport, error) {
	if target < 0 {
		return PruneReport{}, errors.New("-to must not be negative")
	}
	r, err := askPrune(ctx, dir, target)
	if !errors.Is(err, errNoHolder) {
		return r, err
	}
	st, err := store.Open(dir, store.WithExisting(), store.WithLogger(log))
	if err != nil {
		if strings.Contains(err.Error(), "in use") {
			err = fmt.Errorf("%w; and it answers no prune on %s (a lazypull before prunes by its holder?): stop it, or prune with it", err, filepath.Join(dir, AdminSocket))
		}
		return PruneReport{}, err
	}
	defer st.Close()
	var allMeta string
	labels, err := snapshot.ReadRemote(ctx, root)
	if err != nil {
		allMeta = fmt.Sprintf("the snapshotter's metadata (--root %s) cannot be read: %v", root, err)
	}
	uses, problems := remoteUses(labels)
	if allMeta != "" {
		// Not knowing which images are in use, keep what opening any of them needs.
		r, err := st.PruneKeeping(ctx, target, store.Keep{AllMeta: true})
		rep := PruneReport{PruneResult: r, AllMeta: allMeta}
		rep.After = st.Stats().Bytes
		rep.Before = rep.After + r.Bytes
		return rep, err
	}
	return pruneStore(ctx, st, target, func() ([]daemon.LayerUse, []*daemon.Image, []string) { return uses, nil, problems })
}

// WritePrune writes what a prune did, as `lazypull prune` prints it.
func WritePrune(w io.Writer, dir string, r PruneReport) {
	by := "the store opened by this command"
	if r.Holder != 0 {
		by = fmt.Sprintf("the process holding the store (pid %d)", r.Holder)
	}
	fmt.Fprintf(w, "pruned %d objects, %s, by %s: store %s from %s to %s\n", r.Objects, humanBytes(r.Bytes), by, dir, humanBytes(r.Before), humanBytes(r.After))
	if r.AllMeta != "" {
		fmt.Fprintf(w, "kept every manifest and index: %s\n", r.AllMeta)
	} else {
		fmt.Fprintf(w, "kept the manifests, indexes and content of %d layers in use (%d images open)\n", r.Layers, r.Images)
	}
	for _, p := range r.Problems {
		fmt.Fprintf(w, "not kept: %s\n", p)
	}
}
