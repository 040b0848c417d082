package depcheck

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// module is lazypull's module path. Rules and messages name packages relative to it
// ("internal/fetch"), third-party ones by their full path.
const module = "lazypull"

// rule is what one package may import. Only the package's own files count, not its tests':
// a test may import a fixture builder its package must not.
type rule struct {
	// ours lists the lazypull packages the package imports, exactly: an import not listed
	// fails the test (adding an edge to the graph is a decision, written down here with its
	// reason), and so does one listed but no longer imported (the table stays the graph).
	ours []string
	// ext lists the third-party modules (path prefixes) the package may import; the
	// standard library is always allowed. Dropping one is not an error.
	ext []string
}

// Third-party modules, by what they are to lazypull.
const (
	containerd    = "github.com/containerd/containerd/v2"
	containerdAPI = "github.com/containerd/containerd/api"
	continuity    = "github.com/containerd/continuity"
	errdefs       = "github.com/containerd/errdefs"
	mountinfo     = "github.com/moby/sys/mountinfo"
	bbolt         = "go.etcd.io/bbolt"
	ggcr          = "github.com/google/go-containerregistry"
	digest        = "github.com/opencontainers/go-digest"
	imageSpec     = "github.com/opencontainers/image-spec"
	runtimeSpec   = "github.com/opencontainers/runtime-spec"
	compress      = "github.com/klauspost/compress"
	gofuse        = "github.com/hanwen/go-fuse/v2"
	toml          = "github.com/BurntSushi/toml"
	prometheus    = "github.com/prometheus/client_golang"
	grpc          = "google.golang.org/grpc"
	protobuf      = "google.golang.org/protobuf"
	xsys          = "golang.org/x/sys"
	xsync         = "golang.org/x/sync"
	xtime         = "golang.org/x/time"
	xterm         = "golang.org/x/term"
	ximage        = "golang.org/x/image"
	criAPI        = "k8s.io/cri-api"

	// Packages of ours, relative to the module.
	format         = "format"
	chunker        = "format/chunker"
	gzindex        = "format/gzindex"
	zstdindex      = "format/zstdindex"
	spans          = "format/internal/spans"
	wire           = "format/internal/wire"
	fetch          = "internal/fetch"
	store          = "internal/store"
	fusefs         = "internal/fusefs"
	snapshot       = "internal/snapshot"
	daemon         = "internal/daemon"
	cli            = "internal/cli"
	cmdline        = "internal/cmdline"
	service        = "internal/service"
	verify         = "internal/verify"
	imageindex     = "internal/imageindex"
	artifact       = "internal/artifact"
	bench          = "internal/bench"
	convert        = "internal/convert"
	profile        = "internal/profile"
	progress       = "internal/progress"
	pull           = "internal/pull"
	record         = "internal/record"
	keeper         = "internal/keeper"
	warm           = "internal/warm"
	criproxy       = "internal/criproxy"
	unixsock       = "internal/unixsock"
	jsonlimit      = "internal/jsonlimit"
	elfdeps        = "internal/elfdeps"
	imagebuild     = "internal/imagebuild"
	ocilayout      = "internal/ocilayout"
	testutil       = "internal/testutil"
	layertest      = "internal/testutil/layertest"
	elftest        = "internal/testutil/elftest"
	lazypullBinary = "cmd/lazypull"
	benchBinary    = "cmd/lazypull-bench"
)

// allowed is lazypull's import graph as it is, one rule per package of the module, each
// with the reason for its edges. Data flows one way: registry -> fetch -> store -> fusefs
// -> snapshot. Each of those four declares the interface it consumes (store.Source,
// fusefs.Content, snapshot.FileSystem) and imports none of the others; internal/daemon
// adapts each to the next. checkFlow below checks that independently of this table.
func allowed() map[string]rule {
	return map[string]rule{
		// The binary is main() over cli.Run: flags and subcommands live in internal/cli,
		// where tests run them in-process.
		lazypullBinary: {ours: []string{cli}},

		// The layer format and its reference implementation, written to be read without
		// lazypull: a second implementation, a scanner or a tool uses it without pulling in
		// registry, store or FUSE code. zstd is the only thing it needs beyond the
		// standard library. The chunker is part of the
		// format: its cut rule decides the chunk boundaries the index records.
		format:  {ours: []string{chunker}, ext: []string{compress}},
		chunker: {},
		// Random access into unconverted gzip layers (checkpoints, a resumable inflater,
		// the index's encoding): a format beside the layer format, read by tools without
		// lazypull, so the standard library only, like format; format does not import it.
		// spans and wire: the reading side and the encoding it shares with zstdindex.
		gzindex: {ours: []string{spans, wire}},
		// Random access into unconverted zstd layers: the same for zstd, with the zstd
		// decoder (spans are decoded by a stock decoder from a dictionary of the
		// checkpoint's state, Huffman literals by huff0 in the build pass).
		zstdindex: {ours: []string{spans, wire}, ext: []string{compress}},
		// The reading side gzindex and zstdindex share: spans decoded whole and checked
		// before they are served, kept up to a number of bytes, decodes in flight held to
		// a budget. The standard library only, as both.
		spans: {},
		// The index encoding gzindex and zstdindex share: magic and version, canonical
		// uvarints, a trailing sha256; read as hostile. The standard library only.
		wire: {},

		// The registry end of the flow: manifests whole, blobs by byte ranges, auth, mirrors
		// (hosts.toml), retries. It knows nothing of chunks, files or mounts; daemon hands
		// a Registry's blobs to the store as its Source. jsonlimit bounds the JSON it
		// decodes from the network before decoding it.
		fetch: {ours: []string{jsonlimit}, ext: []string{ggcr, toml, prometheus}},

		// The node-wide content-addressed store: keyed by the digests a layer index names
		// (format), filled from the Source it declares (never fetch itself), read through
		// by anyone (never fusefs itself).
		store: {ours: []string{format}, ext: []string{prometheus, xsys}},

		// Read-only FUSE views of a layer index; file content comes through the Content it
		// declares, so it knows neither the store nor the registry, and nothing of
		// containerd.
		fusefs: {ours: []string{format}, ext: []string{gofuse, xsys, mountinfo}},

		// containerd's overlayfs snapshotter plus remote snapshots, which the FileSystem it
		// declares mounts. It sees layers as snapshot labels, not as images, chunks or FUSE
		// mounts: none of ours. bbolt: its metadata read-only by a process that is not
		// the snapshotter (ReadRemote, for a prune while it is stopped).
		snapshot: {ext: []string{containerd, continuity, errdefs, mountinfo, bbolt}},

		// The composition: opens images (manifest, indexes, profile), adapts fetch to
		// store.Source, the store to fusefs.Content and its mounts to snapshot.FileSystem,
		// hands mounts' FUSE connections to the keeper, prefetches profiles. The one place
		// that sees every stage of the flow. imageindex, gzindex and zstdindex: an
		// unconverted image is served from its index artifact (decoded by imageindex, read
		// through gzindex or zstdindex). elfdeps: a program's first read starts the fetch of
		// the libraries it needs (elfspec.go).
		daemon: {
			ours: []string{format, fetch, store, fusefs, snapshot, profile, keeper, jsonlimit, imageindex, gzindex, zstdindex, elfdeps},
			ext:  []string{ggcr, prometheus, xsync, xtime},
		},

		// The subcommands: flags parsed into service's settings for `lazypull snapshotter`
		// and `lazypull mount` (service assembles them), and into the options of the
		// packages that do the work: pull, record, convert with progress, verify, index
		// (imageindex), the keeper process, stats; exit statuses and usage errors as the
		// bench binary has them (cmdline).
		cli: {
			ours: []string{fetch, daemon, convert, profile, progress, pull, record, keeper,
				service, verify, imageindex, cmdline},
			ext: []string{containerd, containerdAPI, errdefs, ggcr, digest, imageSpec,
				runtimeSpec, xsys, xterm, mountinfo},
		},

		// Records a profile (`lazypull profile`): opens the image as the daemon does, on a
		// store of its own (store, fetch options), runs the workload on a recording fusefs
		// view (the profile package's Recorder) in a containerd container (containerd's
		// client and runc spec, errdefs) or chrooted in a private mount namespace
		// (mountinfo, openat2 from x/sys), then pushes the profile (ggcr). Apart from
		// profile, which daemon imports: recording needs daemon.
		record: {
			ours: []string{fetch, store, fusefs, daemon, profile},
			ext:  []string{containerd, errdefs, ggcr, mountinfo, runtimeSpec, xsys},
		},

		// The composition root: owns the daemon's configuration (a TOML file, hence toml;
		// the socket's directory checked with x/sys) and assembles the store, the fetch
		// options, the filesystem (daemon), the keeper, the snapshotter and its gRPC
		// services (containerd's snapshots API, warm; its socket owner-only by unixsock),
		// metrics (prometheus), and the check of containerd's config, over containerd's
		// version API. fusefs: the mounts of `lazypull mount`. progress: the stats and
		// prune reports print sizes as the converter's progress does (HumanBytes).
		// criproxy: the CRI proxy it serves beside the snapshotter, whose Store is the
		// fetch client's credentials.
		service: {
			ours: []string{fetch, store, fusefs, snapshot, daemon, keeper, warm, unixsock, progress, criproxy},
			ext:  []string{containerd, containerdAPI, ggcr, toml, prometheus, grpc, xsys},
		},

		// Checks an image's layer indexes against its layers (format), read whole from the
		// registry (fetch).
		verify: {ours: []string{format, fetch}, ext: []string{ggcr}},

		// Indexes an unconverted image (`lazypull index`): reads its layers whole from the
		// registry (fetch), builds gzindex or zstdindex checkpoints and a file table of
		// format's entries, several layers at once (x/sync), and pushes the artifact (ggcr:
		// fetch only reads).
		imageindex: {ours: []string{format, gzindex, zstdindex, fetch, artifact}, ext: []string{ggcr, xsync}},

		// Converts an image: reads and writes whole blobs and manifests with
		// go-containerregistry (fetch is the lazy read path, by range), writes layers with
		// format, lays them out by a profile; reads and writes OCI layouts with ocilayout.
		convert: {ours: []string{format, profile, ocilayout, artifact}, ext: []string{ggcr, compress, xsync}},

		// The profile document, its recorder, the pack and Push (a write: fetch only reads,
		// so it pushes with go-containerregistry). What it plans is in terms of the layer
		// index (format); the daemon fetches what it plans.
		profile: {ours: []string{format, jsonlimit, artifact}, ext: []string{ggcr}},

		// OCI artifacts referring to an image manifest (the index artifact, profiles):
		// their manifest, and pushing it and their blobs with go-containerregistry. The
		// manifest bytes pushed as they are (Raw) serve convert too; the referrers tag
		// index they embed their manifests in is checked (jsonlimit) before it is parsed.
		artifact: {ours: []string{jsonlimit}, ext: []string{ggcr}},

		// `lazypull pull`: fetches the manifest itself (fetch), hands it to containerd
		// (its client, resolver and image handlers) and to the snapshotter (warm), and
		// labels the layers as the snapshotter reads them (daemon.SnapshotLabels).
		pull: {
			ours: []string{fetch, daemon, warm},
			ext:  []string{containerd, ggcr, digest, imageSpec},
		},

		// A conversion's progress on a terminal or in the log: it implements
		// convert.Progress, and sizes its lines to the terminal (x/term).
		progress: {ours: []string{convert}, ext: []string{ggcr, xterm}},

		// Holds descriptors in a process of its own; they are opaque to it (no FUSE, no
		// daemon). Its socket is owner-only from the start (unixsock).
		keeper: {ours: []string{unixsock}, ext: []string{xsys}},

		// The warm-up gRPC API between `lazypull pull` and the snapshotter: both ends
		// import it, it imports neither.
		warm: {ext: []string{grpc, protobuf}},

		// The CRI image service proxy that learns kubelet's pull credentials: it forwards
		// gRPC (CRI's messages only decoded to read a pull's credentials, with cri-api),
		// keys them by repository with go-containerregistry's name and hands them out as
		// its authn form; its socket is owner-only from the start (unixsock). It knows
		// nothing of fetch: fetch's user asks its Store.
		criproxy: {ours: []string{unixsock}, ext: []string{grpc, protobuf, criAPI, ggcr}},

		// Leaves: a unix socket only its owner may connect to; bounds on JSON decoding; what
		// an ELF file needs loaded with it.
		unixsock:  {ext: []string{xsys}},
		jsonlimit: {},
		elfdeps:   {},

		// The harness of cmd/lazypull-bench: parses recorded profiles, finds the FUSE mounts
		// a run left behind (fusefs.MountsUnder) to clean them up, and reads process CPU
		// and mounts from the kernel (x/sys) for the mount and snapshotter bars.
		// ocilayout says whether the test image's layout is there.
		bench: {ours: []string{fusefs, profile, ocilayout}, ext: []string{ggcr, ximage, xsys}},

		// The benchmark binary, apart from the product: flags over internal/bench, with
		// the exit statuses, usage errors and terminal check of lazypull's (cmdline).
		benchBinary: {ours: []string{bench, cmdline}},

		// What the two binaries' command lines share: exit statuses, the usage error, the
		// terminal check (x/term).
		cmdline: {ext: []string{xterm}},

		// Packs rootfs directories into OCI layouts for test images; tools and tests only.
		// The layout itself is ocilayout's (ggcr's v1 types at its API).
		imagebuild: {ours: []string{ocilayout}, ext: []string{ggcr, compress, xsync, xsys}},

		// OCI image layout directories, read and written: the one implementation of
		// convert, imagebuild and the tools. Bounds index.json with jsonlimit, speaks ggcr's
		// v1 types, locks a layout with flock (x/sys).
		ocilayout: {ours: []string{jsonlimit}, ext: []string{ggcr, xsys}},

		// What tests share (random bytes, log capture, waits, tar builders, an in-process
		// registry): imported by _test.go files only (checkFlow checks that nothing's own
		// files import it), and itself of nothing of ours, so that format's tests may use it.
		// compress: zstd layers, as skopeo writes them (ZstdLayer).
		testutil: {ext: []string{ggcr, compress}},
		// Lazypull layers built byte by byte for tests (an index that is not the tar's):
		// for _test.go files only too; apart from testutil because it needs format.
		layertest: {ours: []string{format}},
		// ELF files built for tests (what internal/elfdeps reads): for _test.go files only.
		elftest: {},

		// This package: a test and nothing else.
		"internal/depcheck": {},

		// End-to-end tests only (test files, which this table does not pin).
		"test/e2e": {},

		// Tools of the tests and benchmarks, each a main package.
		"tools/addlayer":  {ours: []string{imagebuild, ocilayout}, ext: []string{ggcr}},
		"tools/indexsize": {ours: []string{format, ocilayout}, ext: []string{ggcr, compress}},
		"tools/mkimage":   {ours: []string{imagebuild}},
		"tools/pause":     {},
	}
}

// graph maps a package to its imports, all by their full import paths.
type graph map[string][]string

func TestImportGraph(t *testing.T) {
	g, _ := load(t)
	if len(g) < 10 {
		t.Fatalf("go list found %d packages of %s, want all of them: %v", len(g), module, g)
	}
	for _, v := range check(g, allowed()) {
		t.Error(v)
	}
}

// TestCheckCatches shows that check fails for each kind of edge the rules forbid, on
// today's graph plus that edge; and, for the edges against the flow, that checkFlow alone
// does too, so that widening the table would not let them in.
func TestCheckCatches(t *testing.T) {
	g, _ := load(t)
	if v := check(g, allowed()); len(v) > 0 {
		t.Fatalf("today's graph already violates the rules: %v", v)
	}
	cases := []struct {
		name string
		edit func(graph)
		want string // in what check reports
		flow string // in what checkFlow alone reports; "" for the table's rules only
	}{
		{"fusefs imports fetch", func(g graph) { add(g, fusefs, our(fetch)) },
			"internal/fusefs imports internal/fetch", "internal/fusefs depends on internal/fetch"},
		{"store imports fusefs", func(g graph) { add(g, store, our(fusefs)) },
			"internal/store imports internal/fusefs", "internal/store depends on internal/fusefs"},
		{"snapshot imports daemon", func(g graph) { add(g, snapshot, our(daemon)) },
			"internal/snapshot imports internal/daemon", "internal/snapshot depends on internal/daemon"},
		{"fetch imports store through a new package", func(g graph) {
			add(g, "internal/newpkg", our(store))
			add(g, fetch, our("internal/newpkg"))
		}, "internal/fetch imports internal/newpkg", "internal/fetch depends on internal/store"},
		{"a new top directory is ours", func(g graph) {
			add(g, "pkg/newpkg")
			add(g, fusefs, our("pkg/newpkg"))
		}, "internal/fusefs imports pkg/newpkg", ""},
		{"format imports ours", func(g graph) { add(g, format, our(jsonlimit)) },
			"format imports internal/jsonlimit", "format depends on internal/jsonlimit"},
		{"format imports a registry library", func(g graph) { add(g, format, ggcr+"/pkg/v1") },
			"format imports " + ggcr + "/pkg/v1", "format needs the standard library and compression only"},
		{"chunker imports compression", func(g graph) { add(g, chunker, compress+"/zstd") },
			"format/chunker imports " + compress + "/zstd", ""},
		{"fusefs imports a registry library", func(g graph) { add(g, fusefs, ggcr+"/pkg/name") },
			"internal/fusefs imports " + ggcr + "/pkg/name", ""},
		{"the binary imports fetch", func(g graph) { add(g, lazypullBinary, our(fetch)) },
			"cmd/lazypull imports internal/fetch", "it is thin over internal/cli"},
		{"a package without a rule", func(g graph) { add(g, "internal/newpkg") },
			"internal/newpkg has no rule", ""},
		{"a rule without a package", func(g graph) { delete(g, our(keeper)) },
			"rule for internal/keeper", ""},
		{"an edge the table lists that is gone", func(g graph) { g[our(store)] = nil },
			"internal/store no longer imports format", ""},
		{"convert composes the flow", func(g graph) { add(g, convert, our(fetch), our(store), our(fusefs)) },
			"internal/convert imports internal/fetch", "internal/convert imports fetch, store and fusefs"},
		{"the binary contains imagebuild", func(g graph) { add(g, warm, our(imagebuild)) },
			"internal/warm imports internal/imagebuild", "cmd/lazypull contains internal/imagebuild"},
		{"a package's own files import testutil", func(g graph) { add(g, store, our(testutil)) },
			"internal/store imports internal/testutil", "internal/store imports internal/testutil, which is for _test.go files only"},
		{"a package's own files import layertest", func(g graph) { add(g, cli, our(layertest)) },
			"internal/cli imports internal/testutil/layertest", "internal/cli imports internal/testutil/layertest, which is for _test.go files only"},
		{"testutil imports ours", func(g graph) { add(g, testutil, our(format)) },
			"internal/testutil imports format", "internal/testutil imports format: it imports nothing of ours"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := make(graph, len(g))
			for p, imps := range g {
				h[p] = slices.Clone(imps)
			}
			c.edit(h)
			has := func(v []string, want string) bool {
				return slices.ContainsFunc(v, func(s string) bool { return strings.Contains(s, want) })
			}
			if v := check(h, allowed()); !has(v, c.want) {
				t.Errorf("check did not report %q; it reported %q", c.want, v)
			}
			if v := checkFlow(h); c.flow != "" && !has(v, c.flow) {
				t.Errorf("checkFlow did not report %q; it reported %q", c.flow, v)
			}
		})
	}
}

// check returns every way g breaks the rules: the table's, then the flow's.
func check(g graph, rules map[string]rule) []string {
	var v []string
	for _, p := range sorted(g) {
		r, ok := rules[rel(p)]
		if !ok {
			v = append(v, fmt.Sprintf("%s has no rule: add one to allowed() in internal/depcheck, with why it imports what it imports (it imports %q)", rel(p), g[p]))
			continue
		}
		seen := map[string]bool{}
		for _, imp := range g[p] {
			switch {
			case isOurs(imp):
				seen[rel(imp)] = true
				if !slices.Contains(r.ours, rel(imp)) {
					v = append(v, fmt.Sprintf("%s imports %s, which its rule does not allow", rel(p), rel(imp)))
				}
			case !isStd(imp) && !slices.ContainsFunc(r.ext, func(m string) bool { return within(imp, m) }):
				v = append(v, fmt.Sprintf("%s imports %s, a module its rule does not allow", rel(p), imp))
			}
		}
		for _, imp := range r.ours {
			if !seen[imp] {
				v = append(v, fmt.Sprintf("%s no longer imports %s: remove it from its rule", rel(p), imp))
			}
		}
	}
	for _, p := range sorted(rules) {
		if _, ok := g[our(p)]; !ok {
			v = append(v, fmt.Sprintf("rule for %s, which is no package of %s: remove it", p, module))
		}
	}
	return append(v, checkFlow(g)...)
}

// checkFlow checks the rules the table must keep, whatever it says.
func checkFlow(g graph) []string {
	// The stages data flows through, registry side first. None imports another, nor
	// anything that composes them: each declares the interface it consumes.
	stages := []string{fetch, store, fusefs, snapshot}
	// composers may import fetch, store and fusefs together: daemon, which composes the
	// stages, service, which assembles the daemon, and record (lazypull profile's
	// recording view builds its own fetch -> store -> fusefs).
	composers := []string{daemon, service, record}
	// notInBinary are packages the lazypull binary must not contain: test-image tooling.
	notInBinary := []string{imagebuild}
	// testOnly are packages only _test.go files import.
	testOnly := []string{testutil, layertest, elftest}

	var v []string
	// format depends on nothing of ours outside format/, and on the standard library and
	// compression only, all the way down.
	for _, p := range sorted(g) {
		if !within(p, our(format)) {
			continue
		}
		for _, d := range deps(g, p) {
			if !within(d, our(format)) {
				v = append(v, fmt.Sprintf("%s depends on %s: format depends on nothing of ours", rel(p), rel(d)))
			}
		}
		for _, imp := range g[p] {
			if !isOurs(imp) && !isStd(imp) && !within(imp, compress) {
				v = append(v, fmt.Sprintf("%s imports %s: format needs the standard library and compression only", rel(p), imp))
			}
		}
	}
	// No stage depends on another stage or on what composes them.
	for _, s := range stages {
		for _, d := range deps(g, our(s)) {
			if slices.Contains(stages, rel(d)) || slices.Contains(composers, rel(d)) {
				v = append(v, fmt.Sprintf("%s depends on %s: a stage of the flow declares what it consumes and imports no other stage", s, rel(d)))
			}
		}
	}
	// Only the composition imports fetch, store and fusefs together.
	for _, p := range sorted(g) {
		imps := g[p]
		if slices.Contains(imps, our(fetch)) && slices.Contains(imps, our(store)) && slices.Contains(imps, our(fusefs)) && !slices.Contains(composers, rel(p)) {
			v = append(v, fmt.Sprintf("%s imports fetch, store and fusefs: only internal/daemon composes them", rel(p)))
		}
	}
	// The binary is thin over internal/cli.
	for _, imp := range g[our(lazypullBinary)] {
		if isOurs(imp) && imp != our(cli) {
			v = append(v, fmt.Sprintf("cmd/lazypull imports %s: it is thin over internal/cli", rel(imp)))
		}
	}
	for _, d := range deps(g, our(lazypullBinary)) {
		if slices.Contains(notInBinary, rel(d)) {
			v = append(v, fmt.Sprintf("cmd/lazypull contains %s, which is for tests only", rel(d)))
		}
	}
	// testutil and layertest are for _test.go files: no package's own files import them
	// (the graph is of non-test imports, so any edge to them is one), and testutil imports
	// nothing of ours, so that the tests of any package, format's among them, may import it
	// without a cycle.
	for _, p := range sorted(g) {
		for _, imp := range g[p] {
			if slices.Contains(testOnly, rel(imp)) {
				v = append(v, fmt.Sprintf("%s imports %s, which is for _test.go files only", rel(p), rel(imp)))
			}
		}
	}
	for _, imp := range g[our(testutil)] {
		if isOurs(imp) {
			v = append(v, fmt.Sprintf("%s imports %s: it imports nothing of ours", testutil, rel(imp)))
		}
	}
	return v
}

// deps returns the lazypull packages p depends on, directly or not.
func deps(g graph, p string) []string {
	seen := map[string]bool{}
	var walk func(string)
	walk = func(p string) {
		for _, imp := range g[p] {
			if isOurs(imp) && !seen[imp] {
				seen[imp] = true
				walk(imp)
			}
		}
	}
	walk(p)
	return sorted(seen)
}

// load reads the module's import graph (non-test imports) with go list, and the packages
// with Go files but no package comment.
func load(t *testing.T) (g graph, undocumented []string) {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the import graph is read with the go command: %v", err)
	}
	cmd := exec.CommandContext(t.Context(), gobin, "list", "-e", "-json=ImportPath,Dir,Doc,GoFiles,Imports,Error", module+"/...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v: %s", err, stderr.Bytes())
	}
	g = graph{}
	var dirs []string
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct {
			ImportPath string
			Dir        string
			Doc        string
			GoFiles    []string
			Imports    []string
			Error      *struct{ Err string }
		}
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("go list output: %v", err)
		}
		if p.Error != nil {
			t.Fatalf("go list %s: %s", p.ImportPath, p.Error.Err)
		}
		g[p.ImportPath] = p.Imports
		if len(p.GoFiles) > 0 && p.Doc == "" {
			undocumented = append(undocumented, rel(p.ImportPath))
		}
		dirs = append(dirs, p.Dir)
	}
	consult(t, dirs)
	return g, undocumented
}

// consult reads the directories of the module's packages, and those above them, and stats
// their Go files, so that go test's cache (which knows the files a test opens, not those
// its go list child does) runs this test again when a source file, a package or a
// directory changes, instead of reporting a stale pass.
func consult(t *testing.T, dirs []string) {
	t.Helper()
	seen := map[string]bool{}
	for _, dir := range dirs {
		for d := dir; !seen[d]; d = filepath.Dir(d) {
			seen[d] = true
			ents, err := os.ReadDir(d)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				if strings.HasSuffix(e.Name(), ".go") || e.Name() == "go.mod" {
					if _, err := os.Stat(filepath.Join(d, e.Name())); err != nil {
						t.Fatal(err)
					}
				}
			}
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil || filepath.Dir(d) == d {
				break // the module's root, or the file system's
			}
		}
	}
}

// rel names a lazypull package relative to the module and leaves others as they are.
func rel(path string) string {
	if s, ok := strings.CutPrefix(path, module+"/"); ok {
		return s
	}
	return path
}

// our is the import path of the lazypull package p names relative to the module.
func our(p string) string { return module + "/" + p }

// isOurs tells a package of the module by its import path.
func isOurs(path string) bool { return within(path, module) }

// isStd tells a standard library package: no dot in its first path element (and not ours:
// the module's path has none either).
func isStd(path string) bool {
	first, _, _ := strings.Cut(path, "/")
	return !isOurs(path) && !strings.Contains(first, ".")
}

// within tells whether path is pkg or below it.
func within(path, pkg string) bool {
	return path == pkg || strings.HasPrefix(path, pkg+"/")
}

// add adds imports to the package p names relative to the module, creating it if new.
func add(g graph, p string, imps ...string) { g[our(p)] = append(g[our(p)], imps...) }

func sorted[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
