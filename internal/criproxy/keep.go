package criproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
)

// keeperPrefix begins the keys of the credentials a Mirror hands to its Keeper.
const keeperPrefix = "cri-credential/"

// MaxEncodedBytes bounds a credential as a Mirror hands it to its Keeper: its
// MaxCredentialBytes and a few bytes of framing.
const MaxEncodedBytes = MaxCredentialBytes + 1 + 4*binary.MaxVarintLen64

// Keeper holds values in memory outside the process, so that they outlive it: the
// snapshotter's keeper process. An error that wraps errors.ErrUnsupported says it keeps
// none (a keeper of an older version).
type Keeper interface {
	PutValue(key string, v []byte) error
	DeleteValue(key string) error
}

// A Mirror keeps a Keeper holding what its Store keeps (Store.Kept), so that a restarted
// process gets the credentials back from the Keeper (Restore) instead of waiting for the
// next pull of each image. The Keeper is told each change, never a file; nothing of a
// credential is logged.
type Mirror struct {
	store *Store
	k     Keeper
	log   *slog.Logger
	kick  chan struct{}
	sent  map[string]authn.AuthConfig // what the Keeper holds, by Store key
}

// NewMirror returns a Mirror of store to k; Run hands the changes over.
func NewMirror(store *Store, k Keeper, log *slog.Logger) *Mirror {
	m := &Mirror{store: store, k: k, log: log, kick: make(chan struct{}, 1), sent: map[string]authn.AuthConfig{}}
	store.OnChange(func() {
		select {
		case m.kick <- struct{}{}:
		default: // a sync is due already
		}
	})
	return m
}

// Restore puts the credentials of values (the Keeper's, by its keys: those of other
// users are skipped) back into the Store, as pulls that succeeded, and returns how many.
// Call it before Run and before the Store is used.
func (m *Mirror) Restore(values iter.Seq2[string, []byte]) int {
	n := 0
	for k, v := range values {
		key, ok := strings.CutPrefix(k, keeperPrefix)
		if !ok {
			continue
		}
		auth, err := decodeAuth(v)
		if err == nil {
			err = m.store.Restore(Credential{Key: key, Auth: auth})
		}
		if err != nil {
			m.log.Warn("CRI credential from the keeper skipped", "repository", key, "err", err)
			continue
		}
		m.sent[key] = auth
		n++
	}
	return n
}

// Run hands the Store's changes to the Keeper until ctx ends, and the last ones then. A
// Keeper that keeps no values ends it, logged once.
func (m *Mirror) Run(ctx context.Context) {
	failing := false
	for {
		err := m.sync()
		switch {
		case errors.Is(err, errors.ErrUnsupported):
			m.log.Warn("the keeper keeps no credentials; kubelet's will not survive a restart of the snapshotter until the keeper is restarted", "err", err)
			return
		case err != nil && !failing:
			m.log.Warn("cannot hand CRI credentials to the keeper; they will not survive a restart of the snapshotter", "err", err)
		case err == nil && failing:
			m.log.Info("CRI credentials handed to the keeper again")
		}
		failing = err != nil
		select {
		case <-ctx.Done():
			if err := m.sync(); err != nil && !failing {
				m.log.Warn("cannot hand CRI credentials to the keeper", "err", err)
			}
			return
		case <-m.kick:
		}
	}
}

// sync makes the Keeper hold what the Store keeps.
func (m *Mirror) sync() error {
	kept := m.store.Kept()
	want := make(map[string]bool, len(kept))
	var errs []error
	for _, c := range kept {
		want[c.Key] = true
		if prev, ok := m.sent[c.Key]; ok && prev == c.Auth {
			continue
		}
		if err := m.k.PutValue(keeperPrefix+c.Key, encodeAuth(c.Auth)); err != nil {
			errs = append(errs, err)
			continue
		}
		m.sent[c.Key] = c.Auth
	}
	for k := range m.sent {
		if want[k] {
			continue
		}
		if err := m.k.DeleteValue(keeperPrefix + k); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(m.sent, k)
	}
	return errors.Join(errs...)
}

// authVersion is the first byte of an encoded credential.
const authVersion = 1

// encodeAuth encodes a credential: authVersion, then user name, password, identity
// token and registry token, each its length (uvarint) and its bytes.
func encodeAuth(a authn.AuthConfig) []byte {
	fields := []string{a.Username, a.Password, a.IdentityToken, a.RegistryToken}
	b := make([]byte, 0, 1+4*binary.MaxVarintLen64+len(a.Username)+len(a.Password)+len(a.IdentityToken)+len(a.RegistryToken))
	b = append(b, authVersion)
	for _, f := range fields {
		b = binary.AppendUvarint(b, uint64(len(f)))
		b = append(b, f...)
	}
	return b
}

func decodeAuth(b []byte) (authn.AuthConfig, error) {
	if len(b) == 0 || b[0] != authVersion {
		return authn.AuthConfig{}, errors.New("not a credential of version 1")
	}
	b = b[1:]
	var fields [4]string
	for i := range fields {
		n, w := binary.Uvarint(b)
		if w <= 0 || n > uint64(len(b)-w) {
			return authn.AuthConfig{}, fmt.Errorf("credential cut short (field %d)", i)
		}
		fields[i] = string(b[w : w+int(n)])
		b = b[w+int(n):]
	}
	if len(b) != 0 {
		return authn.AuthConfig{}, errors.New("credential followed by more bytes")
	}
	return authn.AuthConfig{Username: fields[0], Password: fields[1], IdentityToken: fields[2], RegistryToken: fields[3]}, nil
}
