package bench

import (
	"slices"
	"testing"
)

// TestParseUserImage: a user's image is read from what skopeo copies (as given, a layout
// directory, a reference), with its command as a JSON array or words.
func TestParseUserImage(t *testing.T) {
	for _, tc := range []struct {
		src, cmd, source string
		want             []string
		srcArgs          []string
	}{
		{src: "oci:/x/y:tag", source: "oci:/x/y:tag"},
		{src: "registry.example/app:1", cmd: `python3 -c 'import a, b' "x \"y\"" z\ w ''`, source: "docker://registry.example/app:1",
			want: []string{"python3", "-c", "import a, b", `x "y"`, "z w", ""}},
		{src: "docker://127.0.0.1:5000/app", cmd: `["sh", "-c", "echo a b"]`, source: "docker://127.0.0.1:5000/app", want: []string{"sh", "-c", "echo a b"},
			srcArgs: []string{"--src-tls-verify=false"}},
		{src: "localhost:5000/app", source: "docker://localhost:5000/app", srcArgs: []string{"--src-tls-verify=false"}},
	} {
		im, err := ParseUserImage("app", tc.src, tc.cmd, "", false)
		if err != nil {
			t.Fatalf("%s: %v", tc.src, err)
		}
		if im.Source != tc.source || !slices.Equal(im.Cmd, tc.want) || !slices.Equal(skopeoSourceArgs(im.Source), tc.srcArgs) {
			t.Errorf("%s %q: source %q cmd %q src args %q; want %q %q %q", tc.src, tc.cmd, im.Source, im.Cmd, skopeoSourceArgs(im.Source), tc.source, tc.want, tc.srcArgs)
		}
	}
	if _, err := ParseUserImage("app", "oci:/a", `sh -c 'echo`, "", false); err == nil {
		t.Error("an unterminated quote is accepted")
	}
	cfg := Config{User: []Image{{Name: "app", Source: "oci:/a"}}}
	if im, ok := cfg.workload("app"); !ok || im.Source != "oci:/a" {
		t.Errorf("workload(app) = %+v, %v", im, ok)
	}
	if got := cfg.toBuild([]string{"python", "app", "node"}); !slices.Equal(got, []string{"python", "node"}) {
		t.Errorf("toBuild = %v; the user's image is not built", got)
	}
	if got := optimizeCmdArgs([]string{"python3", "-c", "1"}); !slices.Equal(got, []string{"--entrypoint", `["python3"]`, "--args", `["-c","1"]`}) {
		t.Errorf("optimizeCmdArgs = %q", got)
	}
}
