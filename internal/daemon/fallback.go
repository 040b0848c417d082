package daemon

import (
	"errors"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"lazypull/internal/fetch"
	"lazypull/internal/snapshot"
)

// Why a lazypull layer was not mounted lazily and is downloaded whole instead: the values
// of lazypull_fallback_layers_total's reason label, a fixed set.
const (
	ReasonAuth        = "auth"        // the registry refused the credentials (401, 403)
	ReasonNotFound    = "not_found"   // the registry has no such manifest or blob (404)
	ReasonUnreachable = "unreachable" // the registry could not be reached, or failed (5xx, 429)
	ReasonRegistry    = "registry"    // the registry answered something else that did not work
	ReasonLabels      = "labels"      // the layer's labels are not trusted (not the pull's)
	ReasonIndex       = "index"       // the layer's index is missing, wrong or too large
	ReasonImage       = "image"       // the image could not be opened (manifest, platform)
	ReasonMount       = "mount"       // the FUSE mount failed
)

// FallbackReasons are the reasons, in the order the metric is described.
var FallbackReasons = []string{ReasonAuth, ReasonNotFound, ReasonUnreachable, ReasonRegistry, ReasonLabels, ReasonIndex, ReasonImage, ReasonMount}

// labelError is a layer's labels refused (layerOf, pinOf); indexError is a layer of an
// image that opened whose own index failed (Image.Failed); mountError is a FUSE mount that
// failed. They only mark the error for fallbackReason.
type (
	labelError struct{ error }
	indexError struct{ error }
	mountError struct{ error }
)

func (e labelError) Unwrap() error { return e.error }
func (e indexError) Unwrap() error { return e.error }
func (e mountError) Unwrap() error { return e.error }

// fallbackReason names why err kept a layer from being mounted lazily: what the registry
// said first (also of a layer's index), then where it failed.
func fallbackReason(err error) string {
	var fe *fetch.Error
	var ne net.Error
	switch {
	case errors.As(err, &fe) && (fe.StatusCode == http.StatusUnauthorized || fe.StatusCode == http.StatusForbidden):
		return ReasonAuth
	case errors.As(err, &fe) && fe.StatusCode == http.StatusNotFound:
		return ReasonNotFound
	case errors.As(err, &fe) && fe.Temporary(), errors.As(err, &ne):
		return ReasonUnreachable
	case errors.As(err, &fe):
		return ReasonRegistry
	case errors.As(err, new(labelError)):
		return ReasonLabels
	case errors.As(err, new(mountError)):
		return ReasonMount
	case errors.As(err, new(indexError)):
		return ReasonIndex
	}
	return ReasonImage
}

// fallbackError is a layer's failure to mount once it has been logged and counted: the
// snapshot package then takes the ordinary path without a warning of its own
// (snapshot.ErrNotRemote).
type fallbackError struct {
	reason string
	err    error
}

func (e *fallbackError) Error() string   { return e.reason + ": " + e.err.Error() }
func (e *fallbackError) Unwrap() []error { return []error{e.err, snapshot.ErrNotRemote} }

// FallbackMetrics counts the layers downloaded whole instead of mounted lazily:
//
//	lazypull_fallback_layers_total{reason}  reason one of FallbackReasons
//
// A layer that is not a lazypull layer is not counted: it has nothing to fall back from.
type FallbackMetrics struct{ layers *prometheus.CounterVec }

// NewFallbackMetrics returns the metrics, every reason at 0.
func NewFallbackMetrics() *FallbackMetrics {
	m := &FallbackMetrics{layers: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "lazypull_fallback_layers_total",
		Help: "Lazypull layers downloaded and unpacked whole instead of mounted lazily, by reason (auth, not_found, unreachable, registry, labels, index, image, mount).",
	}, []string{"reason"})}
	for _, r := range FallbackReasons {
		m.layers.WithLabelValues(r)
	}
	return m
}

func (m *FallbackMetrics) observe(reason string) {
	if m != nil {
		m.layers.WithLabelValues(reason).Inc()
	}
}

// Collectors returns the collectors to register.
func (m *FallbackMetrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.layers}
}

// maxNotLazy bounds the images notLazyImages remembers.
const maxNotLazy = 64

// notLazyImages remembers the last images opened none of whose layers is lazy (every
// layer downloaded whole, or none a lazypull layer), for `lazypull stats`: such an image
// is closed with its last Prepare (no mount holds it), so the images open do not show it.
// Not safe for concurrent use: SnapshotFS.mu guards it.
type notLazyImages struct {
	byRef map[string]ImageStats
	order []string // oldest first
}

func (n *notLazyImages) add(s ImageStats) {
	if n.byRef == nil {
		n.byRef = map[string]ImageStats{}
	}
	if _, ok := n.byRef[s.Image]; !ok {
		n.order = append(n.order, s.Image)
	}
	n.byRef[s.Image] = s
	if len(n.order) > maxNotLazy {
		delete(n.byRef, n.order[0])
		n.order = n.order[1:]
	}
}

func (n *notLazyImages) remove(ref string) {
	if _, ok := n.byRef[ref]; !ok {
		return
	}
	delete(n.byRef, ref)
	for i, r := range n.order {
		if r == ref {
			n.order = append(n.order[:i], n.order[i+1:]...)
			break
		}
	}
}

func (n *notLazyImages) list() []ImageStats {
	out := make([]ImageStats, 0, len(n.order))
	for _, r := range n.order {
		out = append(out, n.byRef[r])
	}
	return out
}
