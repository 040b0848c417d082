package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"lazypull/internal/fetch"
	"lazypull/internal/profile"
)

// maxProfileManifest bounds the artifact manifest of a profile: one config, one layer.
const maxProfileManifest = 64 << 10

// ProfilePolicy says where a mount's prefetch profile may come from.
type ProfilePolicy string

// The profile policies (profile_policy in the snapshotter's config, --profile-policy).
const (
	// PolicyReferrers: a pinned profile if the operator gave one, else one found among
	// the image manifest's referrers (the referrers API, or the tag schema), chosen by
	// chooseReferrer.
	PolicyReferrers ProfilePolicy = "referrers"
	// PolicyPinned: only a profile whose digest the operator gave (ProfileChoice.Pin);
	// an image without one gets none, and the registry is not asked.
	PolicyPinned ProfilePolicy = "pinned"
	// PolicyOff: no profile; the registry is not asked.
	PolicyOff ProfilePolicy = "off"
)

// DefaultProfilePolicy is the policy of a mount and of the snapshotter unless configured;
// docs/design.md says why.
const DefaultProfilePolicy = PolicyReferrers

// ParseProfilePolicy reads a policy's name.
func ParseProfilePolicy(s string) (ProfilePolicy, error) {
	switch p := ProfilePolicy(s); p {
	case PolicyReferrers, PolicyPinned, PolicyOff:
		return p, nil
	}
	return "", fmt.Errorf("profile policy %q: want %q, %q or %q", s, PolicyReferrers, PolicyPinned, PolicyOff)
}

// ParseProfileDigest reads a pinned profile's digest: sha256:<64 hex digits>.
func ParseProfileDigest(s string) (v1.Hash, error) {
	h, err := v1.NewHash(s)
	if err != nil || h.Algorithm != "sha256" || len(h.Hex) != 64 {
		return v1.Hash{}, fmt.Errorf("profile digest %q: want sha256:<64 hex digits>", s)
	}
	return h, nil
}

// ProfileChoice is what an image's profile is chosen by: the policy, and the profile the
// operator pinned for the image, if any.
type ProfileChoice struct {
	Policy ProfilePolicy // "" is DefaultProfilePolicy
	Pin    v1.Hash       // zero: none pinned
	// Pins are profiles pinned by image manifest digest (the node's configuration), for
	// an image that Pin does not pin.
	Pins map[v1.Hash]v1.Hash
}

func (c ProfileChoice) policy() ProfilePolicy {
	if c.Policy == "" {
		return DefaultProfilePolicy
	}
	return c.Policy
}

// pinFor returns the profile pinned for the image manifest subject, if any.
func (c ProfileChoice) pinFor(subject v1.Hash) (v1.Hash, bool) {
	if c.Pin != (v1.Hash{}) {
		return c.Pin, true
	}
	p, ok := c.Pins[subject]
	return p, ok
}

// asks reports whether the choice may send the registry a request: off never does,
// pinned only with a pin (given, or among Pins).
func (c ProfileChoice) asks() bool {
	switch c.policy() {
	case PolicyOff:
		return false
	case PolicyPinned:
		return c.Pin != (v1.Hash{}) || len(c.Pins) > 0
	}
	return true
}

// Where a profile came from (Found.Source, PrefetchStats.Source).
const (
	SourcePin       = "pin"       // the operator's pin
	SourceReferrers = "referrers" // found among the image's referrers
)

// ErrProfileSubject: a profile does not refer to the image it was to be used for.
var ErrProfileSubject = errors.New("the profile does not refer to this image")

// FindProfile looks up the prefetch profile of the image manifest subject among its
// referrers (the referrers API, or the tag schema where the registry has none), chosen as
// chooseReferrer does, and reads it: its manifest and its document, both checked against
// their digests, the document parsed strictly (profile.Parse). No profile is (nil, empty
// descriptor, nil).
func FindProfile(ctx context.Context, reg *fetch.Registry, subject v1.Hash) (*profile.Profile, v1.Descriptor, error) {
	f, err := LookupProfile(ctx, reg, subject)
	return f.Profile, f.Desc, err
}

// Found is a profile LookupProfile found.
type Found struct {
	Profile *profile.Profile // the document; nil: none found
	Desc    v1.Descriptor    // the artifact manifest's descriptor
	Pack    *v1.Descriptor   // the pack's, if the profile has one
	// Source is where it came from (SourcePin, SourceReferrers); "" for none.
	Source string
	// Candidates is how many profiles the referrers listed (0 for a pin, or when they
	// were not asked).
	Candidates int
	// Why says how it was chosen, or why there is none, for the log.
	Why string

	subject *v1.Descriptor // its manifest's subject
}

// LookupProfile is FindProfile, and also says whether the profile has a pack.
func LookupProfile(ctx context.Context, reg *fetch.Registry, subject v1.Hash) (Found, error) {
	return ChooseProfile(ctx, reg, subject, ProfileChoice{Policy: PolicyReferrers})
}

// ChooseProfile returns the profile of the image manifest subject that the choice allows:
// under PolicyOff none, without a request; a pinned one, under PolicyPinned or
// PolicyReferrers, fetched by its digest from reg's repository (checked against it) and
// refused unless its subject is the image manifest (ErrProfileSubject); under
// PolicyPinned without a pin none, without a request; under PolicyReferrers without a pin,
// the one chooseReferrer picks among the image's referrers, also refused unless it refers
// to subject (the tag schema's index is a tag, which anyone with push rights can point
// anywhere).
func ChooseProfile(ctx context.Context, reg *fetch.Registry, subject v1.Hash, c ProfileChoice) (Found, error) {
	pin, pinned := c.pinFor(subject)
	switch {
	case c.policy() == PolicyOff:
		return Found{Why: "profile policy off"}, nil
	case pinned:
		where := fmt.Sprintf("pinned profile %s of %s", pin, subject)
		_, raw, err := reg.Manifest(ctx, pin)
		if err != nil {
			return Found{Desc: v1.Descriptor{Digest: pin}, Source: SourcePin}, fmt.Errorf("%s: %w", where, err)
		}
		f, err := parseProfileOf(ctx, reg, raw, subject, where)
		f.Desc = v1.Descriptor{MediaType: types.OCIManifestSchema1, ArtifactType: profile.ArtifactType, Digest: pin, Size: int64(len(raw))}
		f.Source, f.Why = SourcePin, "pinned by the operator"
		return f, err
	case c.policy() == PolicyPinned:
		return Found{Why: "profile policy pinned, and no profile pinned for the image"}, nil
	}
	refs, err := reg.Referrers(ctx, subject, profile.ArtifactType)
	if err != nil {
		return Found{}, fmt.Errorf("look up the profile of %s: %w", subject, err)
	}
	if len(refs) == 0 {
		return Found{Why: "no profile among the image's referrers"}, nil
	}
	best, why := chooseReferrer(refs, time.Now())
	where := fmt.Sprintf("profile %s of %s", best.Digest, subject)
	found := Found{Desc: best, Source: SourceReferrers, Candidates: len(refs), Why: why}
	if best.Size > maxProfileManifest {
		return found, fmt.Errorf("%s: manifest of %d bytes, more than %d: refused", where, best.Size, maxProfileManifest)
	}
	// The referrers tag index may carry the manifest itself (profile.Push embeds it there):
	// checked against the descriptor, it saves the round trip to fetch it.
	raw, err := embedded(best)
	if err != nil {
		return found, fmt.Errorf("%s: manifest: %w", where, err)
	}
	if raw == nil {
		if _, raw, err = reg.Manifest(ctx, best.Digest); err != nil {
			return found, fmt.Errorf("%s: %w", where, err)
		}
	}
	f, err := parseProfileOf(ctx, reg, raw, subject, where)
	f.Desc, f.Source, f.Candidates, f.Why = best, found.Source, found.Candidates, found.Why
	return f, err
}

// maxClockSkew is how far past the node's clock a profile's created time may be and
// still count: a time further ahead is a claim no recording made, and counts as none.
const maxClockSkew = 24 * time.Hour

// chooseReferrer picks one of the profiles the referrers list (at least one), and says
// why. The order is the registry's or the pusher's (the tag schema lists in push order),
// so it does not count: the newest by the created annotation wins, a time more than
// maxClockSkew past now counting as none (a pusher cannot claim a year far ahead to stay
// chosen over later recordings), and among equal times (or none) the greatest digest,
// which no pusher chooses. Every node with the same referrers and a clock within
// maxClockSkew of the truth picks the same.
func chooseReferrer(refs []v1.Descriptor, now time.Time) (v1.Descriptor, string) {
	created := func(d v1.Descriptor) time.Time {
		t, err := time.Parse(time.RFC3339, d.Annotations[profile.AnnotationCreated])
		if err != nil || t.After(now.Add(maxClockSkew)) {
			return time.Time{}
		}
		return t
	}
	best, bt := refs[0], created(refs[0])
	for _, d := range refs[1:] {
		t := created(d)
		if t.After(bt) || t.Equal(bt) && d.Digest.String() > best.Digest.String() {
			best, bt = d, t
		}
	}
	if len(refs) == 1 {
		return best, "the only profile among the image's referrers"
	}
	if bt.IsZero() {
		return best, fmt.Sprintf("%d profiles among the image's referrers, none with a creation time to trust: the greatest digest", len(refs))
	}
	return best, fmt.Sprintf("the newest of %d profiles among the image's referrers by creation time (%s), the greatest digest among equal times",
		len(refs), bt.UTC().Format(time.RFC3339))
}

// ErrNotProfile: a manifest is not a lazypull profile artifact.
var ErrNotProfile = errors.New("not a lazypull profile artifact")

// ReadProfile reads the profile artifact whose manifest has the given digest in reg's
// repository (what `lazypull profile` prints): its manifest and document, both checked
// against their digests, the document parsed strictly. A manifest that is not a profile's
// gives an error wrapping ErrNotProfile.
func ReadProfile(ctx context.Context, reg *fetch.Registry, digest v1.Hash) (*profile.Profile, error) {
	return readProfile(ctx, reg, digest, "profile "+digest.String())
}

func readProfile(ctx context.Context, reg *fetch.Registry, digest v1.Hash, where string) (*profile.Profile, error) {
	_, raw, err := reg.Manifest(ctx, digest)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	f, err := parseProfile(ctx, reg, raw, where)
	return f.Profile, err
}

// parseProfileOf is parseProfile for a profile that must refer to the image manifest
// subject: its manifest's subject must be subject, else ErrProfileSubject.
func parseProfileOf(ctx context.Context, reg *fetch.Registry, raw []byte, subject v1.Hash, where string) (Found, error) {
	f, err := parseProfile(ctx, reg, raw, where)
	switch {
	case err != nil:
		return f, err
	case f.subject == nil:
		return Found{}, fmt.Errorf("%s: %w: it names no subject; refused", where, ErrProfileSubject)
	case f.subject.Digest != subject:
		return Found{}, fmt.Errorf("%s: %w: its subject is %s; refused", where, ErrProfileSubject, f.subject.Digest)
	}
	return f, nil
}

// parseProfile reads the profile whose artifact manifest is raw (checked against its
// digest already): its document, embedded or from the registry, parsed strictly, and its
// pack's descriptor. The pack is the optional second layer.
func parseProfile(ctx context.Context, reg *fetch.Registry, raw []byte, where string) (Found, error) {
	if len(raw) > maxProfileManifest {
		return Found{}, fmt.Errorf("%s: manifest of %d bytes, more than %d: %w", where, len(raw), maxProfileManifest, ErrNotProfile)
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return Found{}, fmt.Errorf("%s: manifest: %w", where, err)
	}
	if m.ArtifactType != profile.ArtifactType || len(m.Layers) < 1 || len(m.Layers) > 2 || m.Layers[0].MediaType != types.MediaType(profile.MediaType) ||
		len(m.Layers) == 2 && m.Layers[1].MediaType != types.MediaType(profile.PackMediaType) {
		return Found{}, fmt.Errorf("%s: %w (artifactType %q, %d layers)", where, ErrNotProfile, m.ArtifactType, len(m.Layers))
	}
	var pack *v1.Descriptor
	if len(m.Layers) == 2 {
		pack = &m.Layers[1]
		if pack.Size > profile.MaxPack || pack.Size < 0 || pack.Digest.Algorithm != "sha256" {
			return Found{}, fmt.Errorf("%s: pack %s of %d bytes: want a sha256 digest and at most %d bytes; refused", where, pack.Digest, pack.Size, profile.MaxPack)
		}
	}
	doc := m.Layers[0]
	if doc.Size > profile.MaxSize || doc.Size < 0 {
		return Found{}, fmt.Errorf("%s: document of %d bytes, more than %d: %w; refused", where, doc.Size, profile.MaxSize, profile.ErrTooLarge)
	}
	b, err := embedded(doc)
	if err != nil {
		return Found{}, fmt.Errorf("%s: document: %w", where, err)
	}
	if b == nil {
		if b, err = reg.Blob(doc.Digest, doc.Size).ReadAll(ctx); err != nil {
			return Found{}, fmt.Errorf("%s: document: %w", where, err)
		}
	}
	p, err := profile.Parse(b)
	if err != nil {
		return Found{}, fmt.Errorf("%s: %w", where, err)
	}
	return Found{Profile: p, Pack: pack, subject: m.Subject}, nil
}

// embedded returns what d carries in its data field, checked against d's size and digest;
// nil if it carries none: the document in a profile manifest's layer (profile.Manifest
// embeds small ones), the profile manifest in the referrers tag index (profile.Push).
func embedded(d v1.Descriptor) ([]byte, error) {
	if len(d.Data) == 0 || d.Digest.Algorithm != "sha256" {
		return nil, nil // none, or not checkable here: the blob is fetched
	}
	if int64(len(d.Data)) != d.Size {
		return nil, fmt.Errorf("embedded data of %d bytes, the descriptor says %d", len(d.Data), d.Size)
	}
	h, _, err := v1.SHA256(bytes.NewReader(d.Data))
	if err != nil {
		return nil, err
	}
	if h != d.Digest {
		return nil, fmt.Errorf("embedded data has digest %s, the descriptor says %s", h, d.Digest)
	}
	return d.Data, nil
}
