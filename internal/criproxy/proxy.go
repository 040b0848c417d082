package criproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"lazypull/internal/unixsock"
)

// The service the Proxy serves, and the method whose requests it reads.
const (
	service    = "runtime.v1.ImageService"
	pullMethod = "/" + service + "/PullImage"
)

// MaxMessageSize bounds the messages the Proxy passes either way, as kubelet's CRI client
// bounds them (a node's image list can exceed gRPC's default of 4 MiB).
const MaxMessageSize = 16 << 20

// Proxy serves runtime.v1.ImageService and forwards each call, whatever its method (those
// a later CRI adds too), unchanged to the upstream image service: the request and
// response messages byte for byte, the call's metadata, and the upstream's status,
// headers and trailers back. It keeps the credentials of each PullImage in its Store.
type Proxy struct {
	store *Store
	log   *slog.Logger
	conn  *grpc.ClientConn
	srv   *grpc.Server
}

// New returns a Proxy to the image service on the unix socket upstream (containerd's
// CRI socket, e.g. /run/containerd/containerd.sock), which keeps credentials in store.
// It connects when the first call comes, and again after upstream restarts; a call
// while upstream is down fails with Unavailable, which kubelet retries.
func New(upstream string, store *Store, log *slog.Logger) (*Proxy, error) {
	conn, err := grpc.NewClient("unix:"+upstream,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{}), grpc.MaxCallRecvMsgSize(MaxMessageSize)))
	if err != nil {
		return nil, fmt.Errorf("CRI proxy to %s: %w", upstream, err)
	}
	p := &Proxy{store: store, log: log, conn: conn}
	p.srv = grpc.NewServer(
		grpc.ForceServerCodec(rawCodec{}),
		grpc.MaxRecvMsgSize(MaxMessageSize),
		grpc.UnknownServiceHandler(p.forward))
	return p, nil
}

// Listen listens on the unix socket path for a Proxy to serve on: mode 0600 from the
// moment it exists (whoever connects pulls any image, and hands credentials over), in a
// directory it creates if missing. A socket left at path by an earlier run is replaced;
// anything else there is an error.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return nil, fmt.Errorf("CRI proxy socket: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("CRI proxy socket %s: something else is there (%s)", path, fi.Mode().Type())
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("CRI proxy socket: %w", err)
		}
	}
	return unixsock.Listen("unix", path)
}

// Serve serves on l (from Listen) until Close. It returns nil after Close.
func (p *Proxy) Serve(l net.Listener) error {
	return p.srv.Serve(l)
}

// Close stops serving, ends the calls in progress and closes the connection upstream.
func (p *Proxy) Close() error {
	p.srv.Stop()
	return p.conn.Close()
}

// forward proxies one call of any method of the service, streaming or not.
func (p *Proxy) forward(_ any, ss grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(ss)
	if !strings.HasPrefix(method, "/"+service+"/") {
		return status.Errorf(codes.Unimplemented, "lazypull's CRI proxy serves %s only, not %s", service, method)
	}
	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()
	md, _ := metadata.FromIncomingContext(ctx)
	ctx = metadata.NewOutgoingContext(ctx, forwardable(md))

	var onRequest func(*frame)
	pull := &pull{}
	if method == pullMethod {
		onRequest = func(f *frame) { p.startPull(pull, f) }
	}
	up, err := p.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, method)
	if err == nil {
		go func() {
			if err := forwardRequests(ss, up, onRequest); err != nil && !errors.Is(err, io.EOF) {
				cancel() // the caller went away: so does the call upstream
			}
		}()
		err = forwardResponses(ss, up)
	}
	p.endPull(pull, err)
	return err // the upstream's status as it is
}

// forwardRequests passes the caller's messages upstream, then its end of them.
func forwardRequests(ss grpc.ServerStream, up grpc.ClientStream, onRequest func(*frame)) error {
	for {
		var f frame
		if err := ss.RecvMsg(&f); errors.Is(err, io.EOF) {
			return up.CloseSend()
		} else if err != nil {
			return err
		}
		if onRequest != nil {
			onRequest(&f)
		}
		if err := up.SendMsg(&f); err != nil {
			return err // io.EOF: the upstream ended the call, its status comes to forwardResponses
		}
	}
}

// forwardResponses passes the upstream's headers, messages and trailers to the caller,
// and returns the upstream's status.
func forwardResponses(ss grpc.ServerStream, up grpc.ClientStream) error {
	for first := true; ; first = false {
		var f frame
		err := up.RecvMsg(&f)
		if first {
			// Sent with the first message, or with the status if there is none.
			if md, herr := up.Header(); herr == nil && len(md) > 0 {
				if herr := ss.SetHeader(md); herr != nil {
					return herr
				}
			}
		}
		if err != nil {
			ss.SetTrailer(up.Trailer())
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := ss.SendMsg(&f); err != nil {
			return err
		}
	}
}

// forwardable is the caller's metadata less what gRPC sets on each hop itself.
func forwardable(md metadata.MD) metadata.MD {
	out := metadata.MD{}
	for k, v := range md {
		switch {
		case strings.HasPrefix(k, ":"), strings.HasPrefix(k, "grpc-"), k == "content-type", k == "user-agent":
		default:
			out[k] = v
		}
	}
	return out
}

// pull is one PullImage call: what it stored, and whether it ended.
type pull struct {
	mu    sync.Mutex
	image string
	creds bool       // the request had credentials
	done  func(bool) // from Store.put; nil if nothing was stored
	ended bool       // endPull ran: a request read after it stores nothing
	err   error      // why the credentials were not kept
}

// startPull reads a PullImage request and stores its credentials before the request goes
// upstream: containerd's unpack asks the snapshotter for the layers, which read with them,
// before the pull returns.
func (p *Proxy) startPull(pl *pull, f *frame) {
	var req runtime.PullImageRequest
	if err := proto.Unmarshal(f.b, &req); err != nil {
		return // upstream says what is wrong with it
	}
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if pl.ended || pl.done != nil {
		return
	}
	pl.image = req.GetImage().GetImage()
	k, auth, err := credential(pl.image, req.GetAuth())
	pl.creds = !errors.Is(err, errNoCredential)
	if err != nil {
		pl.err = err
		return
	}
	pl.done = p.store.put(k, auth)
}

// endPull keeps or drops what the pull stored, by how it ended, and logs it.
func (p *Proxy) endPull(pl *pull, err error) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	pl.ended = true
	if pl.image == "" {
		return // not a pull, or no request read
	}
	if pl.done != nil {
		pl.done(err == nil)
	}
	args := []any{"image", pl.image, "credentials", pl.creds}
	switch {
	case pl.creds && pl.err != nil:
		args = append(args, "kept", false, "why", pl.err.Error())
	case pl.creds:
		args = append(args, "kept", err == nil)
	}
	if err != nil {
		args = append(args, "err", status.Code(err).String())
	}
	p.log.Info("CRI pull", args...)
}

// frame is a message as it is on the wire.
type frame struct{ b []byte }

// rawCodec passes messages through as bytes, so that the Proxy forwards them unchanged
// (fields it does not know included) and serves whatever method the service has.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	f, ok := v.(*frame)
	if !ok {
		return nil, fmt.Errorf("CRI proxy: cannot marshal %T", v)
	}
	return f.b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	f, ok := v.(*frame)
	if !ok {
		return fmt.Errorf("CRI proxy: cannot unmarshal into %T", v)
	}
	f.b = bytes.Clone(data) // gRPC reuses data once this returns
	return nil
}

// Name is the codec's content subtype: the messages are protobuf, as the caller sent them.
func (rawCodec) Name() string { return "proto" }
