package criproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"lazypull/internal/testutil"
	"lazypull/internal/unixsock"
)

// fakeUpstream is the image service the proxy forwards to: it records what it was sent and
// answers what the test set.
type fakeUpstream struct {
	runtime.UnimplementedImageServiceServer

	mu   sync.Mutex
	reqs []proto.Message // every request, as received
	md   []metadata.MD   // the metadata of each call
	// err, if set, answers every call.
	err error
	// onPull runs while a pull is in progress, before it answers.
	onPull func(context.Context, *runtime.PullImageRequest)
}

func (f *fakeUpstream) record(ctx context.Context, req proto.Message) error {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = append(f.reqs, proto.Clone(req))
	f.md = append(f.md, md)
	return f.err
}

func (f *fakeUpstream) last(t *testing.T) (proto.Message, metadata.MD) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reqs) == 0 {
		t.Fatal("upstream received nothing")
	}
	return f.reqs[len(f.reqs)-1], f.md[len(f.md)-1]
}

// The answers, one per method.
var (
	images = []*runtime.Image{
		{Id: "sha256:1", RepoTags: []string{"registry.example/app:v1"}, Size: 1 << 20, Pinned: true},
		{Id: "sha256:2", RepoDigests: []string{"registry.example/app@sha256:2"}, Spec: &runtime.ImageSpec{Image: "x", Annotations: map[string]string{"a": "b"}}},
	}
	listResp   = &runtime.ListImagesResponse{Images: images}
	statusResp = &runtime.ImageStatusResponse{Image: images[0], Info: map[string]string{"info": "{}"}}
	pullResp   = &runtime.PullImageResponse{ImageRef: "sha256:1"}
	removeResp = &runtime.RemoveImageResponse{}
	fsResp     = &runtime.ImageFsInfoResponse{ImageFilesystems: []*runtime.FilesystemUsage{{Timestamp: 7, FsId: &runtime.FilesystemIdentifier{Mountpoint: "/var/lib/containerd"}}}}
)

func (f *fakeUpstream) ListImages(ctx context.Context, r *runtime.ListImagesRequest) (*runtime.ListImagesResponse, error) {
	return listResp, f.record(ctx, r)
}

func (f *fakeUpstream) StreamImages(r *runtime.StreamImagesRequest, s grpc.ServerStreamingServer[runtime.StreamImagesResponse]) error {
	if err := f.record(s.Context(), r); err != nil {
		return err
	}
	s.SetHeader(metadata.Pairs("upstream-header", "h"))
	for _, img := range images {
		if err := s.Send(&runtime.StreamImagesResponse{Images: []*runtime.Image{img}}); err != nil {
			return err
		}
	}
	s.SetTrailer(metadata.Pairs("upstream-trailer", "t"))
	return nil
}

func (f *fakeUpstream) ImageStatus(ctx context.Context, r *runtime.ImageStatusRequest) (*runtime.ImageStatusResponse, error) {
	return statusResp, f.record(ctx, r)
}

func (f *fakeUpstream) PullImage(ctx context.Context, r *runtime.PullImageRequest) (*runtime.PullImageResponse, error) {
	if f.onPull != nil {
		f.onPull(ctx, r)
	}
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return pullResp, nil
}

func (f *fakeUpstream) RemoveImage(ctx context.Context, r *runtime.RemoveImageRequest) (*runtime.RemoveImageResponse, error) {
	return removeResp, f.record(ctx, r)
}

func (f *fakeUpstream) ImageFsInfo(ctx context.Context, r *runtime.ImageFsInfoRequest) (*runtime.ImageFsInfoResponse, error) {
	return fsResp, f.record(ctx, r)
}

// fixture is a proxy in front of a fake upstream, each on a socket in a test directory.
type fixture struct {
	up     *fakeUpstream
	store  *Store
	log    *testutil.LogBuffer
	socket string // the proxy's
	client runtime.ImageServiceClient
	conn   *grpc.ClientConn
}

func newFixture(t *testing.T, max int) *fixture {
	t.Helper()
	dir := t.TempDir()
	fx := &fixture{up: &fakeUpstream{}, store: NewStore(max), socket: filepath.Join(dir, "proxy", "cri.sock")}

	upSocket := filepath.Join(dir, "containerd.sock")
	ul, err := unixsock.Listen("unix", upSocket)
	if err != nil {
		t.Fatal(err)
	}
	us := grpc.NewServer()
	runtime.RegisterImageServiceServer(us, fx.up)
	go us.Serve(ul)
	t.Cleanup(us.Stop)

	logger, lb := testutil.NewLog(t)
	fx.log = lb
	p, err := New(upSocket, fx.store, logger)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Listen(fx.socket)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- p.Serve(l) }()
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})

	fx.conn, err = grpc.NewClient("unix:"+fx.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fx.conn.Close() })
	fx.client = runtime.NewImageServiceClient(fx.conn)
	return fx
}

func (fx *fixture) pull(t *testing.T, image string, auth *runtime.AuthConfig) (*runtime.PullImageRequest, error) {
	t.Helper()
	req := &runtime.PullImageRequest{
		Image:         &runtime.ImageSpec{Image: image, RuntimeHandler: "runc"},
		Auth:          auth,
		SandboxConfig: &runtime.PodSandboxConfig{Metadata: &runtime.PodSandboxMetadata{Name: "pod", Namespace: "ns", Uid: "1"}},
	}
	_, err := fx.client.PullImage(t.Context(), req)
	return req, err
}

// TestPullCaptures keeps a pull's credentials for its repository, from the moment the pull
// starts, and sends upstream the request as it came, credentials included.
func TestPullCaptures(t *testing.T) {
	fx := newFixture(t, 0)
	var during []string
	fx.up.onPull = func(context.Context, *runtime.PullImageRequest) {
		u, p, ok := fx.store.Credentials(context.Background(), "registry.example:5000", "team/app")
		during = []string{u, p, fmt.Sprint(ok)}
	}
	req, err := fx.pull(t, "registry.example:5000/team/app:v1", &runtime.AuthConfig{Username: "alice", Password: "pa55word"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"alice", "pa55word", "true"}; fmt.Sprint(during) != fmt.Sprint(want) {
		t.Errorf("during the pull, the store had %q, want %q", during, want)
	}
	got, _ := fx.up.last(t)
	if !proto.Equal(got, req) {
		t.Errorf("upstream received %v, want %v", got, req)
	}
	for _, q := range []struct {
		host, repo string
		ok         bool
	}{
		{"registry.example:5000", "team/app", true},
		{"registry.example:5000", "team/other", false}, // another repository of the registry
		{"registry.example:5000", "team", false},
		{"registry.example:5000", "team/app/sub", false},
		{"registry.example", "team/app", false}, // another port, another registry
		{"other.example:5000", "team/app", false},
	} {
		u, p, ok := fx.store.Credentials(t.Context(), q.host, q.repo)
		if ok != q.ok || (ok && (u != "alice" || p != "pa55word")) {
			t.Errorf("Credentials(%s, %s) = %q, %q, %v; want ok %v", q.host, q.repo, u, p, ok, q.ok)
		}
	}

	// Another tag of the repository, with other credentials: the most recent pull's win.
	if _, err := fx.pull(t, "registry.example:5000/team/app@sha256:"+strings.Repeat("b", 64), &runtime.AuthConfig{IdentityToken: "t0ken"}); err != nil {
		t.Fatal(err)
	}
	if u, p, _ := fx.store.Credentials(t.Context(), "registry.example:5000", "team/app"); u != "<token>" || p != "t0ken" {
		t.Errorf("after the second pull: %q, %q; want its identity token", u, p)
	}
	// A pull without credentials leaves them.
	if _, err := fx.pull(t, "registry.example:5000/team/app:v2", nil); err != nil {
		t.Fatal(err)
	}
	if _, p, _ := fx.store.Credentials(t.Context(), "registry.example:5000", "team/app"); p != "t0ken" {
		t.Errorf("a pull without credentials changed them: %q", p)
	}
	if fx.store.Len() != 1 {
		t.Errorf("Len = %d, want 1", fx.store.Len())
	}
	for _, secret := range []string{"pa55word", "t0ken"} {
		if fx.log.Count(secret) > 0 {
			t.Errorf("the log holds the secret %q:\n%s", secret, fx.log)
		}
	}
	if n := fx.log.Count("credentials=true kept=true"); n != 2 {
		t.Errorf("the log has %d pulls kept with credentials, want 2:\n%s", n, fx.log)
	}
	if n := fx.log.Count("image=registry.example:5000/team/app:v2 credentials=false"); n != 1 {
		t.Errorf("the log does not say the pull without credentials came without:\n%s", fx.log)
	}
}

// TestPullDockerHub keeps a pull of a Docker Hub short name for the repository by its
// every name.
func TestPullDockerHub(t *testing.T) {
	fx := newFixture(t, 0)
	if _, err := fx.pull(t, "debian:12", &runtime.AuthConfig{Auth: "dTpwYXNz", ServerAddress: "https://index.docker.io/v1/"}); err != nil {
		t.Fatal(err)
	}
	for _, q := range [][2]string{{"docker.io", "debian"}, {"index.docker.io", "library/debian"}, {"registry-1.docker.io", "library/debian"}} {
		if u, p, ok := fx.store.Credentials(t.Context(), q[0], q[1]); !ok || u != "u" || p != "pass" {
			t.Errorf("Credentials(%s, %s) = %q, %q, %v; want u, pass", q[0], q[1], u, p, ok)
		}
	}
	if _, _, ok := fx.store.Credentials(t.Context(), "docker.io", "library/ubuntu"); ok {
		t.Error("another Docker Hub repository has the credentials")
	}
}

// TestPullErrorPassesThrough returns the upstream's error as it is (code, message,
// details), and puts back the credentials of the last pull that worked.
func TestPullErrorPassesThrough(t *testing.T) {
	fx := newFixture(t, 0)
	if _, err := fx.pull(t, "registry.example/app:v1", &runtime.AuthConfig{Username: "good", Password: "g00d"}); err != nil {
		t.Fatal(err)
	}
	st, err := status.New(codes.Unknown, `failed to pull and unpack image "registry.example/app:v1": 401 Unauthorized`).
		WithDetails(wrapperspb.String("UNAUTHORIZED"))
	if err != nil {
		t.Fatal(err)
	}
	fx.up.err = st.Err()
	_, err = fx.pull(t, "registry.example/app:v1", &runtime.AuthConfig{Username: "bad", Password: "b4d"})
	got := status.Convert(err)
	if got.Code() != st.Code() || got.Message() != st.Message() || !proto.Equal(got.Proto(), st.Proto()) {
		t.Errorf("the caller got %v, want the upstream's %v", got.Proto(), st.Proto())
	}
	if u, _, _ := fx.store.Credentials(t.Context(), "registry.example", "app"); u != "good" {
		t.Errorf("after a failed pull the store has %q, want the last that worked (good)", u)
	}
	if _, err := fx.pull(t, "registry.example/new:v1", &runtime.AuthConfig{Username: "bad", Password: "b4d"}); err == nil {
		t.Fatal("no error")
	}
	if _, _, ok := fx.store.Credentials(t.Context(), "registry.example", "new"); ok {
		t.Error("the credentials of a first pull that failed were kept")
	}
	if fx.log.Count("b4d") > 0 || fx.log.Count("g00d") > 0 {
		t.Errorf("the log holds a secret:\n%s", fx.log)
	}
	if fx.log.Count("kept=false err=Unknown") != 2 {
		t.Errorf("the log does not say the failed pulls' credentials were dropped:\n%s", fx.log)
	}

	// The other methods' errors too.
	fx.up.err = status.Error(codes.NotFound, "image not found")
	_, err = fx.client.ImageStatus(t.Context(), &runtime.ImageStatusRequest{Image: &runtime.ImageSpec{Image: "x"}})
	if s := status.Convert(err); s.Code() != codes.NotFound || s.Message() != "image not found" {
		t.Errorf("ImageStatus: %v, want the upstream's NotFound", err)
	}
}

// TestPullCancelled ends the call upstream when the caller goes away (kubelet's pull
// timeout), and drops the pull's credentials.
func TestPullCancelled(t *testing.T) {
	fx := newFixture(t, 0)
	if _, err := fx.pull(t, "registry.example/app:v1", &runtime.AuthConfig{Username: "good", Password: "p"}); err != nil {
		t.Fatal(err)
	}
	started, ended := make(chan struct{}), make(chan error, 1)
	fx.up.onPull = func(ctx context.Context, _ *runtime.PullImageRequest) {
		close(started)
		select {
		case <-ctx.Done():
			ended <- ctx.Err()
		case <-time.After(10 * time.Second):
			ended <- errors.New("the upstream's call went on after the caller left")
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		<-started
		cancel()
	}()
	_, err := fx.client.PullImage(ctx, &runtime.PullImageRequest{
		Image: &runtime.ImageSpec{Image: "registry.example/app:v1"},
		Auth:  &runtime.AuthConfig{Username: "slow", Password: "p"},
	})
	if status.Code(err) != codes.Canceled {
		t.Errorf("PullImage: %v, want Canceled", err)
	}
	if err := <-ended; !errors.Is(err, context.Canceled) {
		t.Error(err)
	}
	testutil.WaitFor(t, 5*time.Second, "the cancelled pull's credentials dropped", func() bool {
		u, _, _ := fx.store.Credentials(t.Context(), "registry.example", "app")
		return u == "good"
	})
}

// TestForwardUnchanged sends every method's request upstream as it came, with the call's
// metadata, and returns the upstream's answer as it is: headers, messages, trailers.
func TestForwardUnchanged(t *testing.T) {
	fx := newFixture(t, 0)
	ctx := metadata.AppendToOutgoingContext(t.Context(), "x-caller", "kubelet")
	spec := &runtime.ImageSpec{Image: "registry.example/app:v1", Annotations: map[string]string{"k": "v"}, UserSpecifiedImage: "app:v1"}
	filter := &runtime.ImageFilter{Image: spec}

	calls := []struct {
		name string
		req  proto.Message
		call func() (proto.Message, error)
		want proto.Message
	}{
		{"ListImages", &runtime.ListImagesRequest{Filter: filter}, nil, listResp},
		{"ImageStatus", &runtime.ImageStatusRequest{Image: spec, Verbose: true}, nil, statusResp},
		{"RemoveImage", &runtime.RemoveImageRequest{Image: spec}, nil, removeResp},
		{"ImageFsInfo", &runtime.ImageFsInfoRequest{}, nil, fsResp},
		{"PullImage", &runtime.PullImageRequest{Image: spec, Auth: &runtime.AuthConfig{RegistryToken: "r3g"}}, nil, pullResp},
	}
	for i := range calls {
		c := &calls[i]
		switch r := c.req.(type) {
		case *runtime.ListImagesRequest:
			c.call = func() (proto.Message, error) { return fx.client.ListImages(ctx, r) }
		case *runtime.ImageStatusRequest:
			c.call = func() (proto.Message, error) { return fx.client.ImageStatus(ctx, r) }
		case *runtime.RemoveImageRequest:
			c.call = func() (proto.Message, error) { return fx.client.RemoveImage(ctx, r) }
		case *runtime.ImageFsInfoRequest:
			c.call = func() (proto.Message, error) { return fx.client.ImageFsInfo(ctx, r) }
		case *runtime.PullImageRequest:
			c.call = func() (proto.Message, error) { return fx.client.PullImage(ctx, r) }
		}
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			got, err := c.call()
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got, c.want) {
				t.Errorf("answer %v, want %v", got, c.want)
			}
			req, md := fx.up.last(t)
			if !proto.Equal(req, c.req) {
				t.Errorf("upstream received %v, want %v", req, c.req)
			}
			if v := md.Get("x-caller"); len(v) != 1 || v[0] != "kubelet" {
				t.Errorf("upstream metadata %v, want x-caller: kubelet", md)
			}
		})
	}

	t.Run("StreamImages", func(t *testing.T) {
		req := &runtime.StreamImagesRequest{Filter: filter}
		s, err := fx.client.StreamImages(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		var got []*runtime.Image
		for {
			r, err := s.Recv()
			if errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatal(err)
			}
			got = append(got, r.Images...)
		}
		if len(got) != len(images) || !proto.Equal(got[0], images[0]) || !proto.Equal(got[1], images[1]) {
			t.Errorf("streamed %v, want %v", got, images)
		}
		if h, _ := s.Header(); fmt.Sprint(h.Get("upstream-header")) != "[h]" {
			t.Errorf("header %v, want the upstream's", h)
		}
		if tr := s.Trailer(); fmt.Sprint(tr.Get("upstream-trailer")) != "[t]" {
			t.Errorf("trailer %v, want the upstream's", tr)
		}
		if r, _ := fx.up.last(t); !proto.Equal(r, req) {
			t.Errorf("upstream received %v, want %v", r, req)
		}
	})
}

// TestOtherServicesRefused answers Unimplemented to what is not the image service, without
// forwarding it.
func TestOtherServicesRefused(t *testing.T) {
	fx := newFixture(t, 0)
	_, err := runtime.NewRuntimeServiceClient(fx.conn).Version(t.Context(), &runtime.VersionRequest{})
	if s := status.Convert(err); s.Code() != codes.Unimplemented || !strings.Contains(s.Message(), "runtime.v1.RuntimeService/Version") {
		t.Errorf("RuntimeService.Version: %v, want Unimplemented", err)
	}
	if len(fx.up.reqs) != 0 {
		t.Errorf("upstream received %v", fx.up.reqs)
	}
}

// TestStoreBoundedThroughPulls keeps the most recent pulls' credentials only.
func TestStoreBoundedThroughPulls(t *testing.T) {
	fx := newFixture(t, 2)
	for i := range 4 {
		if _, err := fx.pull(t, fmt.Sprintf("registry.example/app%d", i), &runtime.AuthConfig{Username: "u", Password: "p"}); err != nil {
			t.Fatal(err)
		}
	}
	if fx.store.Len() != 2 {
		t.Errorf("Len = %d, want 2", fx.store.Len())
	}
	for i, want := range []bool{false, false, true, true} {
		if _, _, ok := fx.store.Credentials(t.Context(), "registry.example", fmt.Sprintf("app%d", i)); ok != want {
			t.Errorf("app%d: %v, want %v", i, ok, want)
		}
	}
}

// TestSocket is the owner's only, and Listen replaces a socket left behind but nothing
// else.
func TestSocket(t *testing.T) {
	fx := newFixture(t, 0)
	fi, err := os.Lstat(fx.socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
	}

	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	l, err := unixsock.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	l2, err := Listen(stale)
	if err != nil {
		t.Fatalf("a socket left behind: %v", err)
	}
	l2.Close()

	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(file); err == nil || !strings.Contains(err.Error(), "something else is there") {
		t.Errorf("Listen on a file: %v", err)
	}
	if _, err := os.Stat(file); err != nil {
		t.Errorf("Listen removed the file: %v", err)
	}
}
