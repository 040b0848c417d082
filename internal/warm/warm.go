// Package warm is the snapshotter's warm-up API: `lazypull pull` hands the snapshotter the
// image manifest it has just fetched, so that the snapshotter starts opening the image
// (layer indexes, profile look-up, prefetch) while containerd still fetches the config,
// instead of at the first Prepare, and without fetching the manifest again.
//
// It is one unary gRPC method, served on the snapshotter's own socket beside containerd's
// snapshots API. Its messages are well-known protobuf types, so it needs no generated
// code: the request is a google.protobuf.Struct of string fields (the manifest in
// standard base64), the answer google.protobuf.Empty. A refused request answers
// InvalidArgument; a snapshotter without the service, Unimplemented.
package warm

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Method is the full name of the gRPC method.
const Method = "/" + serviceName + "/" + methodName

const (
	serviceName = "lazypull.warm.v1.Warm"
	methodName  = "Open"
)

// The request's fields.
const (
	fieldRef       = "ref"
	fieldDigest    = "digest"
	fieldMediaType = "mediaType"
	fieldManifest  = "manifest"
	// fieldProfile is optional: a snapshotter before it ignores it, and a pull before it
	// sends none.
	fieldProfile = "profile"
)

// Request asks the snapshotter to start opening an image. A request with a Ref and
// nothing else is a hint: a pull of Ref is starting, and its manifest follows in a request
// of its own; the snapshotter connects to the registry meanwhile (IsHint).
type Request struct {
	// Ref is the image reference the pull gives the layers' labels.
	Ref string
	// Digest is the image manifest's digest; Manifest its bytes, as the registry sent
	// them; MediaType the media type the pull has for it.
	Digest, MediaType string
	Manifest          []byte
	// Profile is the digest of the prefetch profile the pull pinned for the image (its
	// layers' lazypull.profile label); "" for none.
	Profile string
}

// IsHint reports whether r is a hint rather than a manifest to open.
func (r Request) IsHint() bool {
	return r.Digest == "" && r.MediaType == "" && len(r.Manifest) == 0
}

// Handler serves a request. It returns once the request is checked; an error means it was
// refused.
type Handler func(ctx context.Context, r Request) error

// Register serves h on srv as the warm-up API.
func Register(srv *grpc.Server, h Handler) {
	srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: serviceName,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: methodName,
			Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				in := &structpb.Struct{}
				if err := dec(in); err != nil {
					return nil, err
				}
				r, err := decode(in)
				if err != nil {
					return nil, status.Error(codes.InvalidArgument, err.Error())
				}
				if err := h(ctx, r); err != nil {
					return nil, status.Error(codes.InvalidArgument, err.Error())
				}
				return &emptypb.Empty{}, nil
			},
		}},
		Metadata: "lazypull/internal/warm",
	}, nil)
}

func decode(in *structpb.Struct) (Request, error) {
	str := func(k string) (string, error) {
		v, ok := in.GetFields()[k]
		if !ok {
			return "", fmt.Errorf("warm request: no field %q", k)
		}
		s, ok := v.GetKind().(*structpb.Value_StringValue)
		if !ok {
			return "", fmt.Errorf("warm request: field %q is not a string", k)
		}
		return s.StringValue, nil
	}
	var r Request
	var err error
	if r.Ref, err = str(fieldRef); err != nil {
		return r, err
	}
	if r.Digest, err = str(fieldDigest); err != nil {
		return r, err
	}
	if r.MediaType, err = str(fieldMediaType); err != nil {
		return r, err
	}
	m, err := str(fieldManifest)
	if err != nil {
		return r, err
	}
	if r.Manifest, err = base64.StdEncoding.DecodeString(m); err != nil {
		return r, fmt.Errorf("warm request: field %q: %w", fieldManifest, err)
	}
	if _, ok := in.GetFields()[fieldProfile]; ok {
		if r.Profile, err = str(fieldProfile); err != nil {
			return r, err
		}
	}
	return r, nil
}

// Client sends warm requests to a snapshotter.
type Client struct {
	conn *grpc.ClientConn
}

// NewClient returns a client of the snapshotter serving the unix socket at path. It
// starts connecting at once, in the background: the first request is sent the moment a
// manifest is in, and should not wait for the connection then.
func NewClient(path string) (*Client, error) {
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("warm: snapshotter at %s: %w", path, err)
	}
	conn.Connect()
	return &Client{conn: conn}, nil
}

// Send sends r. An error wrapping ErrUnavailable says that nothing serves the API there
// (no snapshotter, or one without it); any other, that the snapshotter refused r.
func (c *Client) Send(ctx context.Context, r Request) error {
	in := &structpb.Struct{Fields: map[string]*structpb.Value{
		fieldRef:       structpb.NewStringValue(r.Ref),
		fieldDigest:    structpb.NewStringValue(r.Digest),
		fieldMediaType: structpb.NewStringValue(r.MediaType),
		fieldManifest:  structpb.NewStringValue(base64.StdEncoding.EncodeToString(r.Manifest)),
	}}
	if r.Profile != "" {
		in.Fields[fieldProfile] = structpb.NewStringValue(r.Profile)
	}
	err := c.conn.Invoke(ctx, Method, in, &emptypb.Empty{})
	switch status.Code(err) {
	case codes.OK:
		return nil
	case codes.Unavailable, codes.Unimplemented, codes.DeadlineExceeded, codes.Canceled:
		return fmt.Errorf("%w: %s: %s", ErrUnavailable, c.conn.Target(), status.Convert(err).Message())
	default:
		return fmt.Errorf("warm request for %s refused by the snapshotter at %s: %s", r.Digest, c.conn.Target(), status.Convert(err).Message())
	}
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// ErrUnavailable: no snapshotter serving the warm-up API answered.
var ErrUnavailable = errors.New("no warm-up API")
