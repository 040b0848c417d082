package cli

import (
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/internal/cmdline"
	"lazypull/internal/daemon"
)

var (
	imgDigest  = "sha256:" + strings.Repeat("1", 64)
	profDigest = "sha256:" + strings.Repeat("2", 64)
)

// TestProfilePolicyConfig: profile_policy and profile_pin are keys of the snapshotter's
// config; the pins are read by image digest; a policy or a pin that does not parse is
// refused, saying which.
func TestProfilePolicyConfig(t *testing.T) {
	_, f := snapshotterFlagSet(t)
	p := writeConfig(t, "profile_policy = \"pinned\"\nprofile_pin = \""+imgDigest+"="+profDigest+"\"\n")
	if err := f.load(p, true); err != nil {
		t.Fatal(err)
	}
	if err := f.PrefetchConfig.Check(); err != nil {
		t.Fatal(err)
	}
	c, err := f.Choice("")
	ih, _ := v1.NewHash(imgDigest)
	if err != nil || c.Policy != daemon.PolicyPinned || c.Pins[ih].String() != profDigest {
		t.Errorf("choice %+v, %v; want policy pinned and the pin of %s", c, err, imgDigest)
	}

	_, f = snapshotterFlagSet(t)
	if err := f.load(writeConfig(t, "profile_policy = \"newest\"\n"), true); err != nil {
		t.Fatal(err)
	}
	if err := f.PrefetchConfig.Check(); err == nil || !strings.Contains(err.Error(), `"newest"`) {
		t.Errorf("profile_policy = \"newest\": %v; want it refused", err)
	}

	_, f = snapshotterFlagSet(t)
	err = f.load(writeConfig(t, "profile_pin = \""+imgDigest+"=sha256:12\"\n"), true)
	if err == nil || !strings.Contains(err.Error(), "profile_pin") || !strings.Contains(err.Error(), "sha256:12") {
		t.Errorf("a malformed pin: %v; want it refused, naming the key and the value", err)
	}
}

// TestProfileFlagUsage: mount --profile pins one image's profile by a digest; with two
// images, a malformed digest, or policy off, it is a usage error, as is a bad policy.
func TestProfileFlagUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"mount", "--profile", profDigest, "r1", "d1", "r2", "d2"}, "one image"},
		{[]string{"mount", "--profile", "sha256:abc", "r1", "d1"}, "profile digest"},
		{[]string{"mount", "--profile", profDigest, "--profile-policy", "off", "r1", "d1"}, "policy off"},
		{[]string{"mount", "--profile-policy", "any", "r1", "d1"}, "profile policy"},
		{[]string{"pull", "--profile", "sha256:abc", "r1"}, "profile digest"},
	} {
		code, _, stderr := run(t, c.args...)
		if code != cmdline.ExitUsage || !strings.Contains(stderr, c.want) {
			t.Errorf("%q: exit %d, %q; want usage error saying %q", c.args, code, stderr, c.want)
		}
	}
}
