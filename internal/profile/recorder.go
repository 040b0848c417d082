package profile

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"lazypull/format"
)

// Recorder collects the reads of a running workload, as the filesystem reports them
// (fusefs.WithRecorder). It is safe for concurrent use.
type Recorder struct {
	mu    sync.Mutex
	start time.Time
	now   func() time.Time
	files map[recKey]*File
	order []*File
	full  bool // MaxFiles reached: later files are not recorded
}

type recKey struct {
	layer int
	path  string
}

// NewRecorder starts a recording; first-access times count from now.
func NewRecorder() *Recorder {
	return &Recorder{start: time.Now(), now: time.Now, files: map[recKey]*File{}}
}

// Record notes that n bytes at off of entry e of layer (its position in the image, lowest
// first) were read. Its signature is what fusefs.WithRecorder takes.
func (r *Recorder) Record(layer int, e *format.Entry, off, n int64) {
	if n <= 0 || off < 0 || e == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	k := recKey{layer, e.Name}
	f := r.files[k]
	if f == nil {
		if len(r.order) >= MaxFiles {
			r.full = true
			return
		}
		f = &File{Layer: layer, Path: e.Name, AtUS: r.now().Sub(r.start).Microseconds()}
		r.files[k] = f
		r.order = append(r.order, f)
	}
	f.Ranges = addRange(f.Ranges, Range{off, n})
}

// addRange inserts r into rs (sorted, apart), merging what it touches. Past MaxRanges the
// two closest neighbours merge: the profile gets coarser, never longer.
func addRange(rs []Range, r Range) []Range {
	i, _ := slices.BinarySearchFunc(rs, r.Off, func(x Range, off int64) int {
		switch {
		case x.End() < off:
			return -1
		case x.Off > off:
			return 1
		}
		return 0
	})
	// rs[i:] are the ranges that end at or after r.Off; merge those that start by r's end.
	j := i
	for j < len(rs) && rs[j].Off <= r.End() {
		start := min(r.Off, rs[j].Off)
		r = Range{start, max(r.End(), rs[j].End()) - start}
		j++
	}
	return Coarsen(slices.Replace(rs, i, j, r))
}

// Coarsen merges the two closest neighbours of rs (sorted, apart) until it has at most
// MaxRanges: the ranges get coarser, never more.
func Coarsen(rs []Range) []Range {
	for len(rs) > MaxRanges {
		best := 0
		for k := 1; k+1 < len(rs); k++ {
			if rs[k+1].Off-rs[k].End() < rs[best+1].Off-rs[best].End() {
				best = k
			}
		}
		rs = slices.Replace(rs, best, best+2, Range{rs[best].Off, rs[best+1].End() - rs[best].Off})
	}
	return rs
}

// Files returns the number of files recorded so far.
func (r *Recorder) Files() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.order)
}

// Profile returns what was recorded as a profile of the image whose manifest has digest
// subject and whose layers have the given digests (lowest first), recorded by running
// command: only its program (command[0]) is kept, never its arguments (see
// Profile.Command). Truncated says that MaxFiles was reached and later files were left out.
func (r *Recorder) Profile(subject string, layers []string, command []string) (p *Profile, truncated bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p = &Profile{Subject: subject, Created: r.now().UTC().Truncate(time.Second), Command: command[:min(1, len(command))], Layers: layers}
	for _, f := range r.order {
		if f.Layer >= len(layers) {
			return nil, false, fmt.Errorf("profile: a read of layer %d, the image has %d layers", f.Layer, len(layers))
		}
		p.Files = append(p.Files, File{Layer: f.Layer, Path: f.Path, AtUS: f.AtUS, Ranges: slices.Clone(f.Ranges)})
	}
	return p, r.full, p.Validate()
}
