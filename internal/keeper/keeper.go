// Package keeper holds open file descriptors for a daemon in a small process of their own,
// so that what they keep alive outlives the daemon.
//
// The lazypull snapshotter gives it the /dev/fuse connection of each layer it mounts. The
// kernel ends a FUSE mount's connection when the last descriptor of it is closed: without a
// keeper, a snapshotter that crashes (or is restarted) takes its mounts down with it, and
// every container running on them gets ENOTCONN. While the keeper holds a descriptor, the
// mount's requests wait instead, and the restarted snapshotter takes the connection back
// (List) and answers them (fusefs.Restore).
//
// The keeper serves a unix socket of type SOCK_SEQPACKET; each message is a JSON request or
// answer, with the descriptor as SCM_RIGHTS ancillary data. It drops a descriptor when the
// connection behind it ends (POLLERR: the mount was unmounted) and exits once it holds none
// and no client has been connected for a while, so it never outlives its use.
package keeper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"lazypull/internal/unixsock"
)

// Entry is one descriptor the keeper holds, with the daemon's description of it.
type Entry struct {
	Key  string
	Meta []byte
	File *os.File // nil in requests that carry none
}

// message is the wire form of requests and answers.
type message struct {
	Op   string `json:"op,omitempty"` // put, delete, list
	Key  string `json:"key,omitempty"`
	Meta []byte `json:"meta,omitempty"`
	Err  string `json:"err,omitempty"`
	More bool   `json:"more,omitempty"` // list: an entry follows
}

// maxMessage bounds a message; Meta is small (labels and a FUSE INIT request).
const maxMessage = 64 << 10

// checkEvery is how often the keeper looks for connections that ended, at most: a
// keeper with a shorter idle time looks twice per idle time.
const checkEvery = 2 * time.Second

// Server is the keeper's side.
type Server struct {
	log     *slog.Logger
	idle    time.Duration
	mu      sync.Mutex
	entries map[string]*Entry
	clients int
	since   time.Time // when the keeper last became empty and without clients
}

// Serve runs a keeper on the unix socket path until ctx ends or, after idle with neither
// a descriptor nor a client, on its own.
func Serve(ctx context.Context, path string, idle time.Duration, log *slog.Logger) error {
	_ = os.Remove(path) // a socket left by a dead keeper; a live one would hold clients
	// 0600 from the start: whoever connects can take the FUSE connections.
	l, err := unixsock.Listen("unixpacket", path)
	if err != nil {
		return fmt.Errorf("keeper: %w", err)
	}
	s := &Server{log: log, idle: idle, entries: map[string]*Entry{}, since: time.Now()}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	go s.watch(ctx, cancel)
	log.Info("keeper: serving", "socket", path)
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				s.closeAll()
				return nil
			}
			return fmt.Errorf("keeper: accept on %s: %w", path, err)
		}
		s.mu.Lock()
		s.clients++
		s.mu.Unlock()
		go s.serveConn(c)
	}
}

// watch drops descriptors whose connection ended, and ends the keeper when it is idle.
func (s *Server) watch(ctx context.Context, stop context.CancelFunc) {
	t := time.NewTicker(min(checkEvery, max(s.idle/2, 10*time.Millisecond)))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		for k, e := range s.entries {
			fds := []unix.PollFd{{Fd: int32(e.File.Fd())}}
			if n, err := unix.Poll(fds, 0); err == nil && n > 0 && fds[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 {
				s.log.Info("keeper: connection ended; descriptor dropped", "key", k)
				e.File.Close()
				delete(s.entries, k)
				s.markIdleLocked()
			}
		}
		done := len(s.entries) == 0 && s.clients == 0 && time.Since(s.since) >= s.idle
		s.mu.Unlock()
		if done {
			s.log.Info("keeper: nothing to keep; exiting")
			stop()
			return
		}
	}
}

func (s *Server) markIdleLocked() {
	if len(s.entries) == 0 && s.clients == 0 {
		s.since = time.Now()
	}
}

func (s *Server) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, e := range s.entries {
		e.File.Close()
		delete(s.entries, k)
	}
}

func (s *Server) serveConn(c *net.UnixConn) {
	defer func() {
		c.Close()
		s.mu.Lock()
		s.clients--
		s.markIdleLocked()
		s.mu.Unlock()
	}()
	for {
		m, f, err := recv(c)
		if err != nil {
			if !errors.Is(err, errClosed) {
				s.log.Warn("keeper: bad request; client dropped", "err", err)
			}
			return
		}
		var answer error
		switch m.Op {
		case "put":
			if f == nil {
				answer = errors.New("put without a descriptor")
				break
			}
			s.mu.Lock()
			if old := s.entries[m.Key]; old != nil {
				old.File.Close()
			}
			s.entries[m.Key] = &Entry{Key: m.Key, Meta: m.Meta, File: f}
			s.mu.Unlock()
			f = nil
		case "delete":
			s.mu.Lock()
			if old := s.entries[m.Key]; old != nil {
				old.File.Close()
				delete(s.entries, m.Key)
			}
			s.mu.Unlock()
		case "list":
			if err := s.list(c); err != nil {
				s.log.Warn("keeper: list", "err", err)
				return
			}
			continue
		default:
			answer = fmt.Errorf("unknown operation %q", m.Op)
		}
		if f != nil {
			f.Close()
		}
		reply := message{}
		if answer != nil {
			reply.Err = answer.Error()
		}
		if err := send(c, reply, nil); err != nil {
			return
		}
	}
}

func (s *Server) list(c *net.UnixConn) error {
	s.mu.Lock()
	entries := make([]Entry, 0, len(s.entries))
	for _, e := range s.entries {
		entries = append(entries, *e)
	}
	s.mu.Unlock()
	// Sending a descriptor duplicates it into the message; the keeper keeps its own.
	for _, e := range entries {
		if err := send(c, message{Key: e.Key, Meta: e.Meta, More: true}, e.File); err != nil {
			return err
		}
	}
	return send(c, message{}, nil)
}

var errClosed = errors.New("connection closed")

func send(c *net.UnixConn, m message, f *os.File) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	var oob []byte
	if f != nil {
		oob = unix.UnixRights(int(f.Fd()))
	}
	_, _, err = c.WriteMsgUnix(b, oob, nil)
	return err
}

func recv(c *net.UnixConn) (message, *os.File, error) {
	var m message
	b := make([]byte, maxMessage)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(b, oob)
	if err != nil {
		return m, nil, err
	}
	if n == 0 && oobn == 0 {
		return m, nil, errClosed
	}
	var f *os.File
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return m, nil, fmt.Errorf("control message: %w", err)
		}
		for _, cm := range msgs {
			fds, err := unix.ParseUnixRights(&cm)
			if err != nil {
				continue
			}
			for _, fd := range fds {
				unix.CloseOnExec(fd)
				if f == nil {
					f = os.NewFile(uintptr(fd), "kept")
				} else {
					unix.Close(fd) // one descriptor a message
				}
			}
		}
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		if f != nil {
			f.Close()
		}
		return m, nil, fmt.Errorf("message truncated")
	}
	if err := json.Unmarshal(b[:n], &m); err != nil {
		if f != nil {
			f.Close()
		}
		return m, nil, fmt.Errorf("message: %w", err)
	}
	return m, f, nil
}

// Client talks to a keeper. It is safe for concurrent use.
type Client struct {
	mu   sync.Mutex
	conn *net.UnixConn
	path string
}

// Dial connects to the keeper at path.
func Dial(path string) (*Client, error) {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("keeper %s: %w", path, err)
	}
	return &Client{conn: c, path: path}, nil
}

// Put hands the keeper a duplicate of f under key, replacing what it held under key.
func (c *Client) Put(key string, meta []byte, f *os.File) error {
	return c.call(message{Op: "put", Key: key, Meta: meta}, f)
}

// Delete makes the keeper close what it holds under key.
func (c *Client) Delete(key string) error {
	return c.call(message{Op: "delete", Key: key}, nil)
}

func (c *Client) call(m message, f *os.File) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := send(c.conn, m, f); err != nil {
		return fmt.Errorf("keeper %s: %s %s: %w", c.path, m.Op, m.Key, err)
	}
	reply, rf, err := recv(c.conn)
	if rf != nil {
		rf.Close()
	}
	if err != nil {
		return fmt.Errorf("keeper %s: %s %s: %w", c.path, m.Op, m.Key, err)
	}
	if reply.Err != "" {
		return fmt.Errorf("keeper %s: %s %s: %s", c.path, m.Op, m.Key, reply.Err)
	}
	return nil
}

// List returns duplicates of every descriptor the keeper holds; the caller closes them.
func (c *Client) List() ([]Entry, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := send(c.conn, message{Op: "list"}, nil); err != nil {
		return nil, fmt.Errorf("keeper %s: list: %w", c.path, err)
	}
	var out []Entry
	for {
		m, f, err := recv(c.conn)
		if err != nil {
			for _, e := range out {
				e.File.Close()
			}
			return nil, fmt.Errorf("keeper %s: list: %w", c.path, err)
		}
		if !m.More {
			if f != nil {
				f.Close()
			}
			return out, nil
		}
		if f == nil {
			continue
		}
		out = append(out, Entry{Key: m.Key, Meta: m.Meta, File: f})
	}
}

// Close ends the client's connection; the keeper keeps what it holds.
func (c *Client) Close() error { return c.conn.Close() }

// Start connects to the keeper at path, first starting one when none answers: the program
// exe with args, in a session of its own (so that it outlives its parent and is not in its
// process group), its output appended to logFile. It waits up to 10 s for the socket.
func Start(path, exe string, args []string, logFile string) (*Client, error) {
	if c, err := Dial(path); err == nil {
		return c, nil
	}
	lf, err := os.OpenFile(logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("keeper log %s: %w", logFile, err)
	}
	defer lf.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer devnull.Close()
	p, err := os.StartProcess(exe, append([]string{exe}, args...), &os.ProcAttr{
		Files: []*os.File{devnull, lf, lf},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		return nil, fmt.Errorf("start keeper %s: %w", exe, err)
	}
	exited := make(chan struct{})
	go func() {
		p.Wait()
		close(exited)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := Dial(path); err == nil {
			return c, nil
		}
		select {
		case <-exited:
			return nil, fmt.Errorf("keeper (%s) exited at start; see %s", exe, logFile)
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("keeper (%s): no socket %s after 10 s; see %s", exe, path, logFile)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
