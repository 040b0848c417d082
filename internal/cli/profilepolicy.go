package cli

import (
	"flag"
	"fmt"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/internal/daemon"
)

// addProfileFlags adds the settings of which prefetch profile an image gets, for mount
// and the snapshotter (profile_policy, profile_pin in the snapshotter's config).
func addProfileFlags(fs *flag.FlagSet, f *prefetchFlags) {
	fs.StringVar(&f.profilePolicy, "profile-policy", string(daemon.DefaultProfilePolicy),
		"where a prefetch profile may come from: `policy` referrers (one pinned, else found among the image's referrers), "+
			"pinned (only one pinned, by -profile-pin or a pull's --profile) or off (none; the registry is not asked)")
	fs.Var(&f.profilePins, "profile-pin", "pin a prefetch profile as `image=profile`: the image manifest's digest and the "+
		"profile's (sha256:...=sha256:...); repeat, or separate with commas")
}

// profilePins are profiles pinned by image manifest digest: a flag that may be repeated,
// each value a comma-separated list of IMAGE=PROFILE.
type profilePins map[v1.Hash]v1.Hash

func (p *profilePins) String() string {
	if p == nil || len(*p) == 0 {
		return ""
	}
	var out []string
	for img, prof := range *p {
		out = append(out, img.String()+"="+prof.String())
	}
	return strings.Join(out, ",")
}

func (p *profilePins) Set(s string) error {
	if *p == nil {
		*p = profilePins{}
	}
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		img, prof, ok := strings.Cut(item, "=")
		if !ok {
			return fmt.Errorf("%q: want IMAGE_DIGEST=PROFILE_DIGEST", item)
		}
		ih, err := v1.NewHash(img)
		if err != nil || ih.Algorithm != "sha256" || len(ih.Hex) != 64 {
			return fmt.Errorf("%q: image manifest digest %q: want sha256:<64 hex digits>", item, img)
		}
		ph, err := daemon.ParseProfileDigest(prof)
		if err != nil {
			return fmt.Errorf("%q: %w", item, err)
		}
		if old, ok := (*p)[ih]; ok && old != ph {
			return fmt.Errorf("%q: image %s is pinned to %s already", item, ih, old)
		}
		(*p)[ih] = ph
	}
	return nil
}

// checkProfile refuses a profile policy that does not exist.
func (f *prefetchFlags) checkProfile() error {
	if _, err := daemon.ParseProfilePolicy(f.profilePolicy); err != nil {
		return usagef("-profile-policy: %v", err)
	}
	return nil
}

// choice is how an image's profile is chosen under these settings, pinned to the profile
// of digest pin when not "".
func (f *prefetchFlags) choice(pin string) (daemon.ProfileChoice, error) {
	policy, err := daemon.ParseProfilePolicy(f.profilePolicy)
	if err != nil {
		return daemon.ProfileChoice{}, usagef("-profile-policy: %v", err)
	}
	c := daemon.ProfileChoice{Policy: policy, Pins: f.profilePins}
	if pin != "" {
		if !f.prefetch {
			return c, usagef("-profile %s with -prefetch=false: no profile would be used", pin)
		}
		if policy == daemon.PolicyOff {
			return c, usagef("-profile %s with -profile-policy off: no profile would be used", pin)
		}
		if c.Pin, err = daemon.ParseProfileDigest(pin); err != nil {
			return c, usagef("-profile: %v", err)
		}
	}
	return c, nil
}
