package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/awslabs/soci-snapshotter/soci/store"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/plugins/content/local"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/registry/remote"
)

// buildTool is the build tool identifier written into each zTOC.
const buildTool = "lazypull tools/soci-grpc"

type createFlags struct {
	layout, tag, sociTag, push string
	spanSize, minLayerSize     int64
	plainHTTP                  bool
	logLevel                   string
}

func parseCreateFlags(args []string) (createFlags, error) {
	var f createFlags
	fs := flag.NewFlagSet("soci-grpc create", flag.ContinueOnError)
	fs.StringVar(&f.layout, "layout", "", "OCI layout `dir` that holds the image; the SOCI artifacts and the SOCI-enabled image are added to it")
	fs.StringVar(&f.tag, "tag", "", "the image's `tag` in the layout (org.opencontainers.image.ref.name)")
	fs.StringVar(&f.sociTag, "soci-tag", "", "`tag` of the SOCI-enabled image in the layout (default: TAG-soci)")
	fs.StringVar(&f.push, "push", "", "push the SOCI-enabled image to `REF` (HOST/REPO:TAG); none if empty")
	fs.BoolVar(&f.plainHTTP, "plain-http", false, "talk to the registry over plain HTTP")
	fs.Int64Var(&f.spanSize, "span-size", 4<<20, "zTOC span `bytes`: the uncompressed distance between two checkpoints, the unit of a fetch")
	fs.Int64Var(&f.minLayerSize, "min-layer-size", 10<<20, "layers of fewer compressed `bytes` get no zTOC: they are pulled whole at mount")
	fs.StringVar(&f.logLevel, "log-level", "warn", "log `level`: trace, debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	if fs.NArg() > 0 {
		return f, fmt.Errorf("no arguments expected, got %q", fs.Args())
	}
	if f.layout == "" || f.tag == "" {
		return f, errors.New("--layout and --tag are required")
	}
	if f.sociTag == "" {
		f.sociTag = f.tag + "-soci"
	}
	if f.spanSize <= 0 || f.minLayerSize < 0 {
		return f, fmt.Errorf("--span-size must be positive and --min-layer-size not negative, got %d and %d", f.spanSize, f.minLayerSize)
	}
	return f, nil
}

// create builds the SOCI index of the image tagged f.tag in the OCI layout f.layout, makes the
// SOCI-enabled image (upstream's `soci convert --standalone`) tagged f.sociTag there, and pushes
// it to f.push when given. It prints the digests on stdout.
func create(args []string) error {
	f, err := parseCreateFlags(args)
	if err != nil {
		return err
	}
	if err := setupLogging(f.logLevel); err != nil {
		return err
	}
	ctx := context.Background()
	converted, sociIndex, err := convert(ctx, f)
	if err != nil {
		return err
	}
	fmt.Printf("image %s (%s:%s)\nsoci-index %s\n", converted.Digest, f.layout, f.sociTag, sociIndex)
	if f.push == "" {
		return nil
	}
	if err := push(ctx, f); err != nil {
		return err
	}
	fmt.Printf("pushed %s\n", f.push)
	return nil
}

// convert makes the SOCI-enabled image in the layout and returns its descriptor and the digest
// of its SOCI index. The layout serves as both of the builder's stores: containerd's content
// store to read the image (its blobs/sha256 is the same tree) and SOCI's blob store to write
// the zTOCs, the SOCI index, the annotated manifest and the OCI index.
func convert(ctx context.Context, f createFlags) (*ocispec.Descriptor, string, error) {
	cs, err := local.NewStore(f.layout)
	if err != nil {
		return nil, "", fmt.Errorf("layout %s as a content store: %w", f.layout, err)
	}
	// local.NewStore makes an ingest directory that an OCI layout has no use for.
	defer os.Remove(filepath.Join(f.layout, "ingest"))
	bs, err := store.NewSociStore(f.layout)
	if err != nil {
		return nil, "", fmt.Errorf("layout %s: %w", f.layout, err)
	}
	target, err := bs.Resolve(ctx, f.tag)
	if err != nil {
		return nil, "", fmt.Errorf("layout %s: tag %s: %w", f.layout, f.tag, err)
	}
	// The artifacts database records what was built, for upstream's CLI; nothing here reads it.
	tmp, err := os.MkdirTemp("", "soci-create")
	if err != nil {
		return nil, "", err
	}
	defer os.RemoveAll(tmp)
	db, err := soci.NewDB(filepath.Join(tmp, "artifacts.db"))
	if err != nil {
		return nil, "", fmt.Errorf("artifacts db: %w", err)
	}
	b, err := soci.NewIndexBuilder(cs, bs, soci.WithSpanSize(f.spanSize), soci.WithMinLayerSize(f.minLayerSize),
		soci.WithBuildToolIdentifier(buildTool), soci.WithArtifactsDb(db))
	if err != nil {
		return nil, "", fmt.Errorf("index builder: %w", err)
	}
	desc, err := b.Convert(ctx, images.Image{Name: f.tag, Target: target}, soci.ConvertWithNoGarbageCollectionLabels())
	if err != nil {
		return nil, "", fmt.Errorf("convert %s:%s: %w", f.layout, f.tag, err)
	}
	if err := bs.Tag(ctx, *desc, f.sociTag); err != nil {
		return nil, "", fmt.Errorf("tag %s in %s: %w", f.sociTag, f.layout, err)
	}
	var sociIndex []string
	idx, err := images.Children(ctx, cs, *desc)
	if err != nil {
		return nil, "", fmt.Errorf("read back the SOCI-enabled image: %w", err)
	}
	for _, d := range idx {
		if d.ArtifactType == soci.SociIndexArtifactTypeV2 {
			sociIndex = append(sociIndex, d.Digest.String())
		}
	}
	slog.Info("converted", "layout", f.layout, "tag", f.sociTag, "digest", desc.Digest)
	return desc, strings.Join(sociIndex, ","), nil
}

// push copies the SOCI-enabled image tagged f.sociTag in the layout, with everything it
// references (manifest, config, layers, SOCI index, zTOCs), to f.push.
func push(ctx context.Context, f createFlags) error {
	src, err := store.NewSociStore(f.layout)
	if err != nil {
		return fmt.Errorf("layout %s: %w", f.layout, err)
	}
	repoRef, tag, ok := splitRef(f.push)
	if !ok {
		return fmt.Errorf("--push %q: want HOST/REPO:TAG", f.push)
	}
	repo, err := remote.NewRepository(repoRef)
	if err != nil {
		return fmt.Errorf("--push %q: %w", f.push, err)
	}
	repo.PlainHTTP = f.plainHTTP
	if _, err := oras.Copy(ctx, src.Store, f.sociTag, repo, tag, oras.DefaultCopyOptions); err != nil {
		return fmt.Errorf("push %s:%s to %s: %w", f.layout, f.sociTag, f.push, err)
	}
	return nil
}

// splitRef splits HOST/REPO:TAG at the last colon after the last slash (a host's port comes
// before the slash).
func splitRef(ref string) (repo, tag string, ok bool) {
	colon := strings.LastIndex(ref, ":")
	if colon <= strings.LastIndex(ref, "/") || colon == len(ref)-1 {
		return "", "", false
	}
	return ref[:colon], ref[colon+1:], true
}
