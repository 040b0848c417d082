package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"lazypull/internal/cmdline"
)

func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = Main(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		code       int
		out, err   string // substrings expected on stdout, stderr
		quietOnOut bool
	}{
		{args: nil, code: 2, err: "usage: lazypull COMMAND", quietOnOut: true},
		{args: []string{"help"}, code: 0, out: "convert"},
		{args: []string{"--help"}, code: 0, out: "version"},
		{args: []string{"help", "convert"}, code: 0, out: "usage: lazypull convert [flags] SRC DST"},
		{args: []string{"convert", "-h"}, code: 0, out: "-plain-http"},
		{args: []string{"convert", "--help"}, code: 0, out: "-platform os/arch[/variant]"},
		{args: []string{"frobnicate"}, code: 2, err: `unknown command "frobnicate"`, quietOnOut: true},
		{args: []string{"help", "frobnicate"}, code: 2, err: `unknown command "frobnicate"`, quietOnOut: true},
		{args: []string{"convert", "--bogus", "a", "b"}, code: 2, err: "flag provided but not defined: -bogus", quietOnOut: true},
		{args: []string{"convert", "a", "b", "--bogus"}, code: 2, err: "flag provided but not defined: -bogus", quietOnOut: true},
		{args: []string{"convert", "a"}, code: 2, err: "want SRC and DST, got 1 argument(s)", quietOnOut: true},
		{args: []string{"convert", "--jobs", "0", "a", "b"}, code: 2, err: "-jobs must be at least 1", quietOnOut: true},
		{args: []string{"convert", "--jobs", "many", "a", "b"}, code: 2, err: `invalid value "many" for flag -jobs`, quietOnOut: true},
		{args: []string{"convert", "--platform", "linux", "a", "b"}, code: 2, err: "want os/arch[/variant]", quietOnOut: true},
		{args: []string{"version", "extra"}, code: 2, err: "takes no arguments", quietOnOut: true},
		{args: []string{"version"}, code: 0, out: "lazypull "},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, out, errOut := run(t, tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, out, errOut)
			}
			if !strings.Contains(out, tc.out) {
				t.Errorf("stdout %q does not contain %q", out, tc.out)
			}
			if !strings.Contains(errOut, tc.err) {
				t.Errorf("stderr %q does not contain %q", errOut, tc.err)
			}
			if tc.quietOnOut && out != "" {
				t.Errorf("stdout not empty: %q", out)
			}
		})
	}
}

func TestParseInterspersed(t *testing.T) {
	for _, tc := range []struct {
		args []string
		pos  []string
		json bool
	}{
		{[]string{"a", "b"}, []string{"a", "b"}, false},
		{[]string{"-json", "a", "b"}, []string{"a", "b"}, true},
		{[]string{"a", "-json", "b"}, []string{"a", "b"}, true},
		{[]string{"a", "b", "--json"}, []string{"a", "b"}, true},
		{[]string{"a", "--", "-json", "b"}, []string{"a", "-json", "b"}, false},
		{[]string{"--", "-x"}, []string{"-x"}, false},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		j := fs.Bool("json", false, "")
		pos, err := parseInterspersed(fs, tc.args)
		if err != nil || !slices.Equal(pos, tc.pos) || *j != tc.json {
			t.Errorf("%q: positional %q, json %v, err %v; want %q, %v", tc.args, pos, *j, err, tc.pos, tc.json)
		}
	}
}

// randomLayout writes a random image to an OCI layout tagged latest.
func randomLayout(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	img, err := random.Image(100<<10, 2, random.WithSource(rand.NewSource(1)))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "latest"})); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestConvertJSON(t *testing.T) {
	t.Setenv("DOCKER_CONFIG", t.TempDir()) // no credentials from the machine
	src := "oci:" + randomLayout(t)
	dst := "oci:" + filepath.Join(t.TempDir(), "out") + ":lazy"
	// Flags after the positional arguments too.
	code, out, errOut := run(t, "convert", "--jobs", "3", src, dst, "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var s map[string]any
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, out)
	}
	for _, k := range []string{"source", "destination", "digest", "layers", "files", "chunks", "bytes_in", "bytes_out", "seconds"} {
		if _, ok := s[k]; !ok {
			t.Errorf("summary has no %q: %s", k, out)
		}
	}
	if s["source"] != src || s["destination"] != dst || s["layers"] != 2.0 || !strings.HasPrefix(s["digest"].(string), "sha256:") {
		t.Errorf("summary %s", out)
	}
	// Not a terminal: one log line per event, layer starts and ends among them.
	if n := strings.Count(errOut, "msg=\"layer done\""); n != 2 {
		t.Errorf("stderr has %d layer done lines, want 2:\n%s", n, errOut)
	}
}

func TestConvertHumanLine(t *testing.T) {
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	src := "oci:" + randomLayout(t)
	dst := "oci:" + filepath.Join(t.TempDir(), "out")
	code, out, errOut := run(t, "convert", src, dst)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.HasPrefix(out, src+" -> "+dst+" sha256:") || !strings.Contains(out, "2 layers") || strings.Count(out, "\n") != 1 {
		t.Errorf("stdout %q", out)
	}
}

func TestConvertFailure(t *testing.T) {
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	dir := randomLayout(t)
	dst := filepath.Join(t.TempDir(), "out")
	code, out, errOut := run(t, "convert", "oci:"+dir+":nope", "oci:"+dst)
	if code != 1 || out != "" {
		t.Errorf("exit %d, stdout %q", code, out)
	}
	if !strings.HasSuffix(errOut, "\n") || strings.Count(errOut, "\n") != 1 || !strings.HasPrefix(errOut, "lazypull: read oci:"+dir+":nope: ") ||
		!strings.Contains(errOut, `tag "nope" not found`) {
		t.Errorf("stderr %q, want one line naming the image and the tag", errOut)
	}
	if _, err := os.Stat(dst); err == nil {
		t.Errorf("destination created for a source that does not exist")
	}
}

// TestConvertProfileDigestLayout: a --profile digest names a profile in SRC's repository, a
// usage error when SRC is an OCI layout.
func TestConvertProfileDigestLayout(t *testing.T) {
	code, _, errOut := run(t, "convert", "--profile", "sha256:"+strings.Repeat("c", 64), "oci:/nowhere:x", "oci:/nowhere2:y")
	if code != cmdline.ExitUsage || !strings.Contains(errOut, "OCI layout") {
		t.Errorf("exit %d, %q; want a usage error naming the OCI layout", code, errOut)
	}
}
