package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/format"
	"lazypull/internal/fetch"
	"lazypull/internal/store"
)

var verifyCommand = &command{
	name:    "verify",
	args:    "[flags] REF | --store",
	summary: "check an image's indexes against its layers, or the node's store against its digests",
	help: `
With REF, reads every layer of the image whole, as a plain pull does, and checks what a
lazy mount would serve against what an unpacking runtime (or a scanner, or a signature
policy) sees: each layer's blob against its digest in the manifest, its tar stream against
the diff ID in the config, every chunk against its digest in the index, and every entry of
the index against its tar header (name, type, mode, owner, mtime, size, link target,
device, xattrs, and where its content lies). Layers stream through: memory stays bounded
by one frame, whatever the size of the layer. Every layer is checked; the exit status is
1 if any does not match, and each mismatch is printed with its layer and entry.

With --store, hashes every object of the node's store (the --store-dir) and every chunk
location inside them, and removes what does not match its digest: a later read fetches
it again, nothing damaged is served. It prints the counts, and exits 1 if it removed
anything. The store is held by one process at a time: while a mount or the snapshotter
holds it, verify --store refuses with an error naming the lock: stop the holder first
(a snapshotter's mounts wait for it, held by the keeper).`,
	flags: func(fs *flag.FlagSet) any {
		f := &verifyFlags{}
		fs.BoolVar(&f.store, "store", false, "verify the node's store instead of an image")
		fs.StringVar(&f.dir, "store-dir", store.DefaultDir, "the node's content store `dir` (with --store)")
		fs.StringVar(&f.platform, "platform", "", "the image for `os/arch[/variant]` of a multi-platform REF (default: this machine's)")
		fs.BoolVar(&f.plainHTTP, "plain-http", false, "talk to registries over http instead of https")
		fs.StringVar(&f.hostsDir, "hosts-dir", "", "containerd-style `dir` of HOST/hosts.toml files naming mirrors")
		return f
	},
	run: runVerify,
}

type verifyFlags struct {
	store     bool
	dir       string
	platform  string
	plainHTTP bool
	hostsDir  string
}

// errVerifyFailed: the check ran and found a mismatch (printed already).
var errVerifyFailed = errors.New("verify: mismatch found")

func runVerify(ctx context.Context, e *env, vals any, args []string) error {
	f := vals.(*verifyFlags)
	log := newLogger(e)
	if f.store {
		if len(args) != 0 {
			return usagef("--store takes no REF")
		}
		return verifyStore(ctx, e, f.dir, log)
	}
	if len(args) != 1 {
		return usagef("want one REF (or --store)")
	}
	platform, err := parsePlatform(f.platform)
	if err != nil {
		return err
	}
	fopts, _ := fetchOptions(log, f.plainHTTP, f.hostsDir)
	return verifyImage(ctx, e, args[0], platform, fopts)
}

func verifyStore(ctx context.Context, e *env, dir string, log *slog.Logger) error {
	st, err := store.Open(dir, store.WithLogger(log))
	if err != nil {
		return fmt.Errorf("verify --store: %w", err)
	}
	defer st.Close()
	r, err := st.Verify(ctx)
	if err != nil {
		return fmt.Errorf("verify --store %s: %w", dir, err)
	}
	fmt.Fprintf(e.stdout, "store %s: %d objects (%s) hashed, %d damaged and removed; %d chunk locations checked, %d wrong and forgotten\n",
		dir, r.Objects, humanBytes(r.Bytes), r.Bad, r.Chunks, r.BadChunks)
	if r.Bad > 0 || r.BadChunks > 0 {
		return errVerifyFailed
	}
	return nil
}

func verifyImage(ctx context.Context, e *env, ref string, platform *v1.Platform, fopts []fetch.Option) error {
	reg, err := fetch.New(ref, fopts...)
	if err != nil {
		return err
	}
	img, err := reg.Resolve(ctx, "", platform)
	if err != nil {
		return err
	}
	raw, err := reg.Blob(img.Manifest.Config.Digest, img.Manifest.Config.Size).ReadAll(ctx)
	if err != nil {
		return fmt.Errorf("image %s: config: %w", img.Name, err)
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(raw))
	if err != nil {
		return fmt.Errorf("image %s: config: %w", img.Name, err)
	}
	layers := img.Manifest.Layers
	if n := len(cfg.RootFS.DiffIDs); n != len(layers) {
		fmt.Fprintf(e.stdout, "image %s: the config lists %d diff IDs for %d layers\n", img.Name, n, len(layers))
		return errVerifyFailed
	}
	failed, lazy := 0, 0
	for i, desc := range layers {
		where := fmt.Sprintf("layer %d %s", i, desc.Digest)
		if !format.IsLayer(desc.Annotations) {
			fmt.Fprintf(e.stdout, "%s: not a lazypull layer (no %s annotation): no index to check; skipped\n", where, format.AnnotationIndexDigest)
			continue
		}
		lazy++
		res, err := verifyLayer(ctx, reg, desc, cfg.RootFS.DiffIDs[i])
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			failed++
			var m *format.MismatchError
			var d *format.RunDigestError
			switch {
			case errors.As(err, &m):
				fmt.Fprintf(e.stdout, "%s: MISMATCH entry %q: %s: index says %s, tar says %s\n", where, m.Entry, m.Field, m.Index, m.Tar)
			case errors.As(err, &d):
				fmt.Fprintf(e.stdout, "%s: MISMATCH header run %d (up to entry %q): run digest: index says %s, blob has %s\n", where, d.Run, d.Entry, d.Index, d.Got)
			default:
				fmt.Fprintf(e.stdout, "%s: MISMATCH %v\n", where, err)
			}
			continue
		}
		runs := "no header run digests (index version 1)"
		if res.Runs > 0 {
			runs = fmt.Sprintf("%d header runs", res.Runs)
		}
		fmt.Fprintf(e.stdout, "%s: ok (%d entries, %d chunks, %s, diff ID %s)\n", where, res.Entries, res.Chunks, runs, res.DiffID)
	}
	if failed > 0 {
		fmt.Fprintf(e.stdout, "image %s: %d of %d layers do not match\n", img.Name, failed, len(layers))
		return errVerifyFailed
	}
	if lazy == 0 {
		fmt.Fprintf(e.stdout, "image %s: not a lazypull image: no layer has an index\n", img.Name)
		return errVerifyFailed
	}
	fmt.Fprintf(e.stdout, "image %s: %d layers verified\n", img.Name, lazy)
	return nil
}

// verifyLayer streams one layer blob through format.VerifyLayer and compares what it
// found with the manifest (blob digest) and the config (diff ID).
func verifyLayer(ctx context.Context, reg *fetch.Registry, desc v1.Descriptor, diffID v1.Hash) (format.LayerCheck, error) {
	loc, err := format.LocationFromAnnotations(desc.Annotations)
	if err != nil {
		return format.LayerCheck{}, err
	}
	blob := reg.Layer(desc)
	ix, err := format.ReadIndex(blob.ReaderAt(ctx), desc.Size, &loc)
	if err != nil {
		return format.LayerCheck{}, fmt.Errorf("index: %w", err)
	}
	rc, err := blob.Open(ctx)
	if err != nil {
		return format.LayerCheck{}, err
	}
	defer rc.Close()
	// Open checks the blob's digest at its end: VerifyLayer reads to it.
	res, err := format.VerifyLayer(io.LimitReader(rc, desc.Size+1), ix, loc.Offset)
	if err != nil {
		return res, err
	}
	if res.Blob.String() != desc.Digest.String() {
		return res, fmt.Errorf("blob has digest %s, the manifest says %s", res.Blob, desc.Digest)
	}
	if res.DiffID.String() != diffID.String() {
		return res, fmt.Errorf("tar stream has digest %s, the config's diff ID is %s", res.DiffID, diffID)
	}
	return res, nil
}
