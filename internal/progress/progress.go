package progress

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/term"

	"lazypull/internal/convert"
)

// Log reports layers as log lines: for an output that is not a terminal.
type Log struct{ Logger *slog.Logger }

var _ convert.Progress = Log{}

func (p Log) LayerStart(l convert.Layer) {
	p.Logger.Info("layer start", "image", l.Image, "layer", l.Source.Digest.String(), "mediaType", string(l.Source.MediaType), "size", l.Source.Size)
}

func (p Log) LayerRead(v1.Hash, int64) {}

func (p Log) LayerPush(convert.Layer) {}

func (p Log) LayerDone(l convert.Layer) {
	p.Logger.Info("layer done", "layer", l.Source.Digest.String(), "result", l.Result.Digest.String(),
		"bytesIn", l.Source.Size, "bytesOut", l.Result.Size, "files", l.Files, "chunks", l.Chunks, "copied", l.Copied)
}

// Term draws one live line per layer in flight below the lines already printed, and
// a permanent line for each finished layer. Log lines are written through it (it is an
// io.Writer) so they land above the live lines instead of through them.
type Term struct {
	w  io.Writer
	fd int

	mu     sync.Mutex
	layers []*termLayer // in flight, in start order
	drawn  int          // live lines on screen now
	closed bool

	done chan struct{}
	wg   sync.WaitGroup
}

type termLayer struct {
	l       convert.Layer
	read    atomic.Int64
	pushing atomic.Bool
}

// termRedraw is how often the live lines are redrawn.
const termRedraw = 150 * time.Millisecond

var (
	_ convert.Progress = (*Term)(nil)
	_ io.Writer        = (*Term)(nil)
)

// NewTerm starts drawing on w, a terminal whose size fd tells (lines are not cut when it
// tells none); Stop ends it.
func NewTerm(w io.Writer, fd int) *Term {
	p := &Term{w: w, fd: fd, done: make(chan struct{})}
	p.wg.Go(func() {
		t := time.NewTicker(termRedraw)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				p.mu.Lock()
				p.redrawLocked(nil)
				p.mu.Unlock()
			case <-p.done:
				return
			}
		}
	})
	return p
}

func (p *Term) LayerStart(l convert.Layer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.layers = append(p.layers, &termLayer{l: l})
}

func (p *Term) find(d v1.Hash) *termLayer {
	for _, t := range p.layers {
		if t.l.Source.Digest == d {
			return t
		}
	}
	return nil
}

func (p *Term) LayerRead(d v1.Hash, n int64) {
	p.mu.Lock()
	t := p.find(d)
	p.mu.Unlock()
	if t != nil {
		t.read.Store(n)
	}
}

func (p *Term) LayerPush(l convert.Layer) {
	p.mu.Lock()
	t := p.find(l.Source.Digest)
	p.mu.Unlock()
	if t != nil {
		t.pushing.Store(true)
	}
}

func (p *Term) LayerDone(l convert.Layer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, t := range p.layers {
		if t.l.Source.Digest == l.Source.Digest {
			p.layers = append(p.layers[:i], p.layers[i+1:]...)
			break
		}
	}
	var line string
	if l.Copied {
		line = fmt.Sprintf("done %s  %s (already lazypull, copied)", short(l.Source.Digest), HumanBytes(l.Source.Size))
	} else {
		line = fmt.Sprintf("done %s  %s -> %s  %d files  %d chunks", short(l.Source.Digest),
			HumanBytes(l.Source.Size), HumanBytes(l.Result.Size), l.Files, l.Chunks)
	}
	p.redrawLocked([]byte(line + "\n"))
}

// Write prints log output above the live lines.
func (p *Term) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return p.w.Write(b)
	}
	p.redrawLocked(b)
	return len(b), nil
}

// Stop clears the live lines and stops redrawing; later writes go straight through.
func (p *Term) Stop() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.layers = nil
	p.redrawLocked(nil)
	p.closed = true
	p.mu.Unlock()
	close(p.done)
	p.wg.Wait()
}

// redrawLocked erases the live lines, prints above (permanent output, may be nil) and draws
// the live lines again.
func (p *Term) redrawLocked(above []byte) {
	if p.closed {
		return
	}
	var buf bytes.Buffer
	if p.drawn > 0 {
		fmt.Fprintf(&buf, "\x1b[%dF\x1b[J", p.drawn) // to the start of the first live line; clear below
	}
	buf.Write(above)
	width := 0
	if w, _, err := term.GetSize(p.fd); err == nil {
		width = w
	}
	p.drawn = 0
	for _, t := range p.layers {
		size := t.l.Source.Size
		read := t.read.Load()
		state := "reading"
		switch {
		case t.pushing.Load():
			state = "writing"
		case t.l.Copied:
			state = "copying"
		}
		pct := 100
		if size > 0 {
			pct = int(read * 100 / size)
		}
		line := fmt.Sprintf("%s %s %s / %s %3d%%", state, short(t.l.Source.Digest), HumanBytes(read), HumanBytes(size), pct)
		if width > 1 && len(line) >= width {
			line = line[:width-1]
		}
		buf.WriteString(line + "\n")
		p.drawn++
	}
	p.w.Write(buf.Bytes()) // a terminal that fails writes has nowhere to report it
}

// short is a digest cut to what a person compares: sha256:0123456789ab.
func short(h v1.Hash) string {
	s := h.String()
	if i := strings.IndexByte(s, ':'); i >= 0 && len(s) > i+13 {
		return s[:i+13]
	}
	return s
}

// HumanBytes formats n in binary units: 512 B, 1.5 KiB, 12.3 MiB.
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
