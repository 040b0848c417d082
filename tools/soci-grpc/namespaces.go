package main

import (
	"context"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"google.golang.org/grpc"
)

// The SOCI snapshotter needs the containerd namespace of each request: it records it in a
// remote snapshot's labels and uses it for the containerd content store. containerd 1.7 and
// later send it in the gRPC metadata of proxy plugin calls; containerd 1.6 does not (it only
// has the namespace of its own incoming call). These interceptors put the namespace of the
// metadata on the context, as upstream's daemon does, and, when a call carries none, the
// fallback one named on the command line (--namespace, containerd's "default").

// withNamespace returns ctx with the namespace of its metadata, else fallback.
func withNamespace(ctx context.Context, fallback string) context.Context {
	if ns, ok := namespaces.Namespace(ctx); ok && ns != "" {
		return namespaces.WithNamespace(ctx, ns)
	}
	return namespaces.WithNamespace(ctx, fallback)
}

// namespaceInterceptors are the server options that apply withNamespace to every call.
func namespaceInterceptors(fallback string) []grpc.ServerOption {
	unary := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return h(withNamespace(ctx, fallback), req)
	}
	stream := func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		return h(srv, &streamWithContext{ServerStream: ss, ctx: withNamespace(ss.Context(), fallback)})
	}
	return []grpc.ServerOption{grpc.UnaryInterceptor(unary), grpc.StreamInterceptor(stream)}
}

type streamWithContext struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *streamWithContext) Context() context.Context { return s.ctx }
