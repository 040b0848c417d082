package store

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

type counters struct {
	hits, misses                atomic.Int64
	chunksFetched, bytesFetched atomic.Int64
	corrupt                     atomic.Int64
	evictions, evictedBytes     atomic.Int64
	writeErrors                 atomic.Int64
	assembled, dropped          atomic.Int64
}

// Stats is a snapshot of the store's state and of its counters since Open.
type Stats struct {
	Objects     int   // objects on disk: complete files and chunks of partly present ones
	Bytes       int64 // the total size of the objects and of the metadata: what MaxBytes bounds
	Meta        int   // manifests and indexes kept under meta/
	MetaBytes   int64 // their total size (part of Bytes)
	MaxBytes    int64 // the bound; 0 for none
	PinnedBytes int64 // bytes of objects that leases pin
	Chunks      int   // chunks located inside complete multi-chunk files

	Hits          int64 // reads served from local data alone
	Misses        int64 // reads that waited for a fetch
	ChunksFetched int64 // chunks fetched from sources and verified
	BytesFetched  int64 // compressed bytes of those chunks
	Corrupt       int64 // frames from sources that failed verification
	Evictions     int64 // objects and metadata evicted (or pruned)
	EvictedBytes  int64
	WriteErrors   int64 // objects that could not be stored (a full disk, say)
	Assembled     int64 // files assembled from their chunks
	DroppedParts  int64 // chunk objects dropped because an assembled file holds them
}

// Stats returns a snapshot of the store's state and counters.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	st := Stats{Objects: len(s.objects), Bytes: s.bytes, Meta: len(s.metas), MetaBytes: s.metaBytes, MaxBytes: s.maxBytes, Chunks: len(s.chunks)}
	for _, o := range s.objects {
		if s.pinnedLocked(o) {
			st.PinnedBytes += o.size
		}
	}
	s.mu.Unlock()
	st.Hits = s.st.hits.Load()
	st.Misses = s.st.misses.Load()
	st.ChunksFetched = s.st.chunksFetched.Load()
	st.BytesFetched = s.st.bytesFetched.Load()
	st.Corrupt = s.st.corrupt.Load()
	st.Evictions = s.st.evictions.Load()
	st.EvictedBytes = s.st.evictedBytes.Load()
	st.WriteErrors = s.st.writeErrors.Load()
	st.Assembled = s.st.assembled.Load()
	st.DroppedParts = s.st.dropped.Load()
	return st
}

// Collectors returns Prometheus collectors of the store's stats, for the caller to
// register where it likes (never the global registry).
func (s *Store) Collectors() []prometheus.Collector {
	return []prometheus.Collector{&collector{s: s}}
}

type metric struct {
	desc  *prometheus.Desc
	vt    prometheus.ValueType
	value func(*Stats) float64
}

func newMetric(name, help string, vt prometheus.ValueType, value func(*Stats) float64) metric {
	return metric{prometheus.NewDesc("lazypull_store_"+name, help, nil, nil), vt, value}
}

var metrics = []metric{
	newMetric("objects", "Objects in the store: complete files and chunks of partly present ones.", prometheus.GaugeValue, func(s *Stats) float64 { return float64(s.Objects) }),
	newMetric("bytes", "Bytes of the objects and metadata in the store (what max_bytes bounds).", prometheus.GaugeValue, func(s *Stats) float64 { return float64(s.Bytes) }),
	newMetric("meta_bytes", "Bytes of the manifests and indexes the store keeps (part of bytes).", prometheus.GaugeValue, func(s *Stats) float64 { return float64(s.MetaBytes) }),
	newMetric("max_bytes", "The store's bound in bytes; 0 for none.", prometheus.GaugeValue, func(s *Stats) float64 { return float64(s.MaxBytes) }),
	newMetric("pinned_bytes", "Bytes of objects that mounts pin.", prometheus.GaugeValue, func(s *Stats) float64 { return float64(s.PinnedBytes) }),
	newMetric("hits_total", "Reads served from local data alone.", prometheus.CounterValue, func(s *Stats) float64 { return float64(s.Hits) }),
	newMetric("misses_total", "Reads that waited for a fetch.", prometheus.CounterValue, func(s *Stats) float64 { return float64(s.Misses) }),
	newMetric("fetched_chunks_total", "Chunks fetched from sources and verified.", prometheus.CounterValue, func(s *Stats) float64 { return float64(s.ChunksFetched) }),
	newMetric("fetched_bytes_total", "Compressed bytes of the chunks fetched.", prometheus.CounterValue, func(s *Stats) float64 { return float64(s.BytesFetched) }),
	newMetric("corrupt_total", "Frames from sources that failed verification.", prometheus.CounterValue, func(s *Stats) float64 { return float64(s.Corrupt) }),
	newMetric("evictions_total", "Objects evicted or pruned.", prometheus.CounterValue, func(s *Stats) float64 { return float64(s.Evictions) }),
	newMetric("evicted_bytes_total", "Bytes of the objects evicted or pruned.", prometheus.CounterValue, func(s *Stats) float64 { return float64(s.EvictedBytes) }),
	newMetric("write_errors_total", "Objects that could not be stored.", prometheus.CounterValue, func(s *Stats) float64 { return float64(s.WriteErrors) }),
	newMetric("assembled_total", "Files assembled from their chunks.", prometheus.CounterValue, func(s *Stats) float64 { return float64(s.Assembled) }),
}

type collector struct{ s *Store }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range metrics {
		ch <- m.desc
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Stats()
	for _, m := range metrics {
		if cm, err := prometheus.NewConstMetric(m.desc, m.vt, m.value(&st)); err == nil {
			ch <- cm
		}
	}
}
