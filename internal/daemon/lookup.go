package daemon

import (
	"context"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/internal/fetch"
)

// profileLookup is a ChooseProfile running in the background: the profile look-up of an
// image, started as it opens (lookupEarly, lookupOf) or by its prefetch.
type profileLookup struct {
	subject v1.Hash // the image manifest it looks up the profile of
	done    chan struct{}
	Found
	err      error
	requests int64 // the registry's requests while it ran (others' included)
	after    int64 // the registry's requests when it ended
}

func lookupProfile(ctx context.Context, reg *fetch.Registry, subject v1.Hash, c ProfileChoice) *profileLookup {
	l := &profileLookup{subject: subject, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		before := reg.Stats().Requests
		l.Found, l.err = ChooseProfile(ctx, reg, subject, c)
		l.after = reg.Stats().Requests
		l.requests = l.after - before
	}()
	return l
}

// lookupEarly starts the profile look-up of an image opened by a reference by digest,
// before its manifest is read: the digest names the profile's subject already, and the
// look-up runs beside the manifest's and the indexes' requests. Nil for a reference by
// tag.
func lookupEarly(bg context.Context, reg *fetch.Registry, ref string, c ProfileChoice) *profileLookup {
	r, err := name.NewDigest(ref)
	if err != nil {
		return nil
	}
	h, err := v1.NewHash(r.DigestStr())
	if err != nil {
		return nil
	}
	return lookupProfile(bg, reg, h, c)
}

// lookupOf returns the look-up of the image manifest subject: early when it is subject's,
// else a new one. The reference named an index (or nothing by digest): the subject is the
// platform's manifest, and an early look-up for the index finds nothing and ends.
func lookupOf(bg context.Context, reg *fetch.Registry, early *profileLookup, subject v1.Hash, c ProfileChoice) *profileLookup {
	if early != nil && early.subject == subject {
		return early
	}
	return lookupProfile(bg, reg, subject, c)
}
