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
// Since protocol version 2 it also keeps values, small byte strings under keys of their own
// (the snapshotter's CRI credentials), in its memory only: never written to a file, never
// logged, bounded (MaxValues of at most MaxValueBytes each, the oldest put going first), and
// gone when the keeper exits. Values keep no keeper alive.
//
// The keeper serves a unix socket of type SOCK_SEQPACKET, mode 0600 (its owner only: root's
// for the snapshotter's); each message is a JSON request or answer, with the descriptor as
// SCM_RIGHTS ancillary data. It drops a descriptor when the connection behind it ends
// (POLLERR: the mount was unmounted) and exits once it holds none and no client has been
// connected for a while, so it never outlives its use.
//
// The protocol is versioned (Version): a client asks the keeper's version before it sends
// what an older keeper does not know, since a keeper of the previous lazypull may still be
// running after an upgrade. A keeper of version 1 answers "version" with an error, as any
// operation it does not know, and the client then keeps no values (ErrNoValues).
package keeper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

// Version is the keeper protocol's version this package speaks. 1: put, delete, list
// (descriptors). 2: version, and put-value, delete-value, list-values.
const Version = 2

// Operations of protocol version 2.
const (
	opVersion     = "version"
	opPutValue    = "put-value"
	opDeleteValue = "delete-value"
	opListValues  = "list-values"
)

// message is the wire form of requests and answers.
type message struct {
	Op   string `json:"op,omitempty"` // put, delete, list; version 2: see opVersion
	Key  string `json:"key,omitempty"`
	Meta []byte `json:"meta,omitempty"` // a descriptor's description, or a value
	Err  string `json:"err,omitempty"`
	More bool   `json:"more,omitempty"` // list, list-values: an entry follows
	// Version is the keeper's, in its answer to "version".
	Version int `json:"version,omitempty"`
}

// MaxValues and MaxValueBytes bound the values a keeper holds: when a put would make more
// than MaxValues, the value put longest ago goes; a value over MaxValueBytes is refused.
// They are at least the bounds of the snapshotter's CRI credentials (criproxy's Store:
// 1024 repositories, 64 KiB a credential), so that the keeper holds all the Store holds.
const (
	MaxValues     = 1024
	MaxValueBytes = 96 << 10
)

// maxMessage bounds a message: Meta is small (labels and a FUSE INIT request) but for a
// value, base64 in JSON. Keepers of version 1 take 64 KiB at most: a client sends them no
// values. A SOCK_SEQPACKET message must also fit the socket's send buffer (208 KiB by
// default on Linux).
const maxMessage = 160 << 10

// ErrNoValues says the keeper is of protocol version 1, which keeps no values.
var ErrNoValues = fmt.Errorf("the keeper keeps no values (protocol version 1, an older lazypull): %w", errors.ErrUnsupported)

// checkEvery is how often the keeper looks for connections that ended, at most: a
// keeper with a shorter idle time looks twice per idle time.
const checkEvery = 2 * time.Second

// Server is the keeper's side.
type Server struct {
	log     *slog.Logger
	idle    time.Duration
	version int // the protocol's; tests lower it to play an older keeper
	mu      sync.Mutex
	entries map[string]*Entry
	values  values
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
	return serve(ctx, l, path, &Server{log: log, idle: idle, version: Version})
}

func serve(ctx context.Context, l *net.UnixListener, path string, s *Server) error {
	s.entries, s.since = map[string]*Entry{}, time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	go s.watch(ctx, cancel)
	s.log.Info("keeper: serving", "socket", path, "version", s.version)
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
	s.values.clear()
}

func (s *Server) serveConn(c *net.UnixConn) {
	defer func() {
		c.Close()
		s.mu.Lock()
		s.clients--
		s.markIdleLocked()
		s.mu.Unlock()
	}()
	buf := make([]byte, maxMessage)
	for {
		m, f, err := recv(c, buf)
		if err != nil {
			if !errors.Is(err, errClosed) {
				s.log.Warn("keeper: bad request; client dropped", "err", err)
			}
			return
		}
		if m.Op == "list" || (m.Op == opListValues && s.version >= 2) {
			list := s.list
			if m.Op == opListValues {
				list = s.listValues
			}
			if err := list(c); err != nil {
				s.log.Warn("keeper: "+m.Op, "err", err)
				return
			}
			continue
		}
		reply := s.handle(m, f)
		if err := send(c, reply, nil); err != nil {
			return
		}
	}
}

// handle carries out a request that is answered by one message; it takes f (nil: none).
func (s *Server) handle(m message, f *os.File) message {
	var answer error
	switch {
	case m.Op == "put":
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
	case m.Op == "delete":
		s.mu.Lock()
		if old := s.entries[m.Key]; old != nil {
			old.File.Close()
			delete(s.entries, m.Key)
		}
		s.mu.Unlock()
	case m.Op == opVersion && s.version >= 2:
		return message{Version: s.version}
	case m.Op == opPutValue && s.version >= 2:
		if len(m.Meta) > MaxValueBytes {
			answer = fmt.Errorf("value of %d bytes, more than %d", len(m.Meta), MaxValueBytes)
			break
		}
		s.mu.Lock()
		s.values.put(m.Key, m.Meta)
		s.mu.Unlock()
	case m.Op == opDeleteValue && s.version >= 2:
		s.mu.Lock()
		s.values.delete(m.Key)
		s.mu.Unlock()
	default:
		answer = fmt.Errorf("unknown operation %q", m.Op)
	}
	if f != nil {
		f.Close()
	}
	if answer != nil {
		return message{Err: answer.Error()}
	}
	return message{}
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

func (s *Server) listValues(c *net.UnixConn) error {
	s.mu.Lock()
	vs := s.values.all()
	s.mu.Unlock()
	for _, v := range vs {
		if err := send(c, message{Key: v.Key, Meta: v.Value, More: true}, nil); err != nil {
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

// recv reads one message into b (maxMessage bytes).
func recv(c *net.UnixConn, b []byte) (message, *os.File, error) {
	var m message
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(b, oob)
	// A client that closes between requests reads as an empty message, which the net
	// package reports as io.EOF on a packet stream.
	if errors.Is(err, io.EOF) || (err == nil && n == 0 && oobn == 0) {
		return m, nil, errClosed
	}
	if err != nil {
		return m, nil, err
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
	mu      sync.Mutex
	conn    *net.UnixConn
	path    string
	buf     []byte
	version int // the keeper's, once asked; 0: not yet
}

// Dial connects to the keeper at path.
func Dial(path string) (*Client, error) {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("keeper %s: %w", path, err)
	}
	return &Client{conn: c, path: path, buf: make([]byte, maxMessage)}, nil
}

// Put hands the keeper a duplicate of f under key, replacing what it held under key.
func (c *Client) Put(key string, meta []byte, f *os.File) error {
	return c.call(message{Op: "put", Key: key, Meta: meta}, f)
}

// Delete makes the keeper close what it holds under key.
func (c *Client) Delete(key string) error {
	return c.call(message{Op: "delete", Key: key}, nil)
}

// Version returns the keeper's protocol version: 1 for a keeper that does not know the
// question (one of an older lazypull), which it answers with an error.
func (c *Client) Version() (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.versionLocked()
}

func (c *Client) versionLocked() (int, error) {
	if c.version > 0 {
		return c.version, nil
	}
	reply, err := c.roundTrip(message{Op: opVersion}, nil)
	if err != nil {
		return 0, fmt.Errorf("keeper %s: version: %w", c.path, err)
	}
	c.version = max(reply.Version, 1) // an error answer: a keeper of version 1
	return c.version, nil
}

// PutValue has the keeper hold a copy of v (at most MaxValueBytes) under key, in its memory
// only, replacing what it held under key. The keys of values are not those of descriptors.
// A keeper of version 1 gets nothing: ErrNoValues.
func (c *Client) PutValue(key string, v []byte) error {
	return c.valueCall(message{Op: opPutValue, Key: key, Meta: v})
}

// DeleteValue has the keeper forget the value under key (ErrNoValues as PutValue).
func (c *Client) DeleteValue(key string) error {
	return c.valueCall(message{Op: opDeleteValue, Key: key})
}

func (c *Client) valueCall(m message) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if v, err := c.versionLocked(); err != nil {
		return err
	} else if v < 2 {
		return ErrNoValues
	}
	return c.callLocked(m, nil)
}

func (c *Client) call(m message, f *os.File) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.callLocked(m, f)
}

// callLocked sends a request answered by one message: an error, or nothing else.
func (c *Client) callLocked(m message, f *os.File) error {
	reply, err := c.roundTrip(m, f)
	if err != nil {
		return fmt.Errorf("keeper %s: %s %s: %w", c.path, m.Op, m.Key, err)
	}
	if reply.Err != "" {
		return fmt.Errorf("keeper %s: %s %s: %s", c.path, m.Op, m.Key, reply.Err)
	}
	return nil
}

// roundTrip sends m and returns the answer, whatever it says.
func (c *Client) roundTrip(m message, f *os.File) (message, error) {
	if err := send(c.conn, m, f); err != nil {
		return message{}, err
	}
	reply, rf, err := recv(c.conn, c.buf)
	if rf != nil {
		rf.Close()
	}
	return reply, err
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
		m, f, err := recv(c.conn, c.buf)
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

// ListValues returns the values the keeper holds, the one put longest ago first
// (ErrNoValues as PutValue).
func (c *Client) ListValues() ([]Value, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if v, err := c.versionLocked(); err != nil {
		return nil, err
	} else if v < 2 {
		return nil, ErrNoValues
	}
	if err := send(c.conn, message{Op: opListValues}, nil); err != nil {
		return nil, fmt.Errorf("keeper %s: %s: %w", c.path, opListValues, err)
	}
	var out []Value
	for {
		m, f, err := recv(c.conn, c.buf)
		if f != nil {
			f.Close()
		}
		if err != nil {
			return nil, fmt.Errorf("keeper %s: %s: %w", c.path, opListValues, err)
		}
		if !m.More {
			return out, nil
		}
		out = append(out, Value{Key: m.Key, Value: m.Meta})
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
