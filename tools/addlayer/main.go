// Command addlayer makes a new image from an existing one by adding one layer on top: the
// image tagged SRCTAG in the OCI image layout SRC, plus LAYERDIR packed as an overlayfs upper
// directory (internal/imagebuild), written into the OCI layout DST (created if missing) under
// DSTTAG. The existing layers are kept byte for byte with their descriptors' annotations, so a
// lazypull image stays one and `lazypull convert` of the result converts the new layer only.
// lazypull-bench snapshotter (internal/bench) makes variants of the test image with it.
//
//	go run ./tools/addlayer -src DIR:TAG -dst DIR:TAG LAYERDIR
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/internal/imagebuild"
	"lazypull/internal/ocilayout"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "addlayer:", err)
		os.Exit(1)
	}
}

func run() error {
	src := flag.String("src", "", "`DIR:TAG` of the image to start from, in an OCI layout")
	dst := flag.String("dst", "", "`DIR:TAG` to write the new image to, in an OCI layout")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: addlayer -src DIR:TAG -dst DIR:TAG LAYERDIR\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	srcDir, srcTag, ok1 := strings.Cut(*src, ":")
	dstDir, dstTag, ok2 := strings.Cut(*dst, ":")
	if !ok1 || !ok2 || srcTag == "" || dstTag == "" || flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	base, err := imageByTag(srcDir, srcTag)
	if err != nil {
		return err
	}
	var tarBuf bytes.Buffer
	if err := imagebuild.WriteLayer(&tarBuf, flag.Arg(0), imagebuild.LayerOptions{Overlay: true}); err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(tarBuf.Bytes())), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return fmt.Errorf("layer from %s: %w", flag.Arg(0), err)
	}
	img, err := mutate.Append(base, mutate.Addendum{Layer: layer, MediaType: types.OCILayer})
	if err != nil {
		return fmt.Errorf("add layer: %w", err)
	}
	out := ocilayout.At(dstDir)
	if err := out.Init(); err != nil {
		return err
	}
	desc, err := out.WriteImage(img)
	if err != nil {
		return fmt.Errorf("write %s:%s: %w", dstDir, dstTag, err)
	}
	if err := out.Tag(desc, dstTag); err != nil {
		return fmt.Errorf("write %s:%s: %w", dstDir, dstTag, err)
	}
	fmt.Fprintf(os.Stderr, "%s:%s %s (%s:%s + %s)\n", dstDir, dstTag, desc.Digest, srcDir, srcTag, flag.Arg(0))
	return nil
}

// imageByTag finds the image that the layout at dir tags tag.
func imageByTag(dir, tag string) (v1.Image, error) {
	lay := ocilayout.At(dir)
	idx, err := lay.Index()
	if err != nil {
		return nil, fmt.Errorf("layout %s: %w", dir, err)
	}
	found := ocilayout.Tagged(idx, tag)
	if len(found) == 0 {
		return nil, fmt.Errorf("layout %s: no image tagged %q", dir, tag)
	}
	img, err := lay.Image(found[0])
	if err != nil {
		return nil, fmt.Errorf("layout %s: %w", dir, err)
	}
	return img, nil
}
