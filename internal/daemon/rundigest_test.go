package daemon

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"lazypull/format"
	"lazypull/internal/testutil"
)

// openBinLayer pushes binLayer's layer with its index edited by edit and opens it, its
// image logging to log.
func openBinLayer(t *testing.T, repoTag string, log *slog.Logger, edit func(ix *format.Index)) (*Layer, *requestLog) {
	t.Helper()
	blob, ann := binLayer(t, edit)
	ref, reqs, _ := pushCounted(t, imageOfLayer(t, blob, ann), repoTag)
	im, _ := openFreshLog(t, ref, log)
	return im.Layers[0], reqs
}

func readEntry(t *testing.T, l *Layer, name string) ([]byte, error) {
	t.Helper()
	e, ok := l.Index.Lookup(name)
	if !ok {
		t.Fatalf("%s not in the index", name)
	}
	b := make([]byte, e.Size)
	n, err := l.ReadAt(context.Background(), e, b, 0)
	return b[:n], err
}

// runOfEntry is the header run that holds the tar header of entry name.
func runOfEntry(t *testing.T, ix *format.Index, name string) int {
	t.Helper()
	_, runOf, err := ix.HeaderRuns()
	if err != nil {
		t.Fatal(err)
	}
	for i := range ix.Entries {
		if ix.Entries[i].Name == name {
			return int(runOf[i])
		}
	}
	t.Fatalf("%s not in the index", name)
	return -1
}

// TestTarCheckRunDigestRange: the header bytes a Range brings that are not those the run
// digest of a version 2 index names are refused before their headers are looked at: the
// entry is not served (EIO through fusefs), with one log line naming the layer and the run,
// although its headers would match; the other runs' entries are served. Here the index
// names other bytes than the blob's for bin/sh's run, which is what a Range answer with
// other bytes than the blob's looks like to the reader.
func TestTarCheckRunDigestRange(t *testing.T) {
	log, logb := testutil.NewLogAt(t, slog.LevelInfo)

	var run int
	l, _ := openBinLayer(t, "rundigest:v1", log, func(ix *format.Index) {
		run = runOfEntry(t, ix, "bin/sh")
		ix.RunDigests[run][0] ^= 1
	})
	for range 2 { // the second time from the verdict
		b, err := readEntry(t, l, "bin/sh")
		var de *format.RunDigestError
		if !errors.As(err, &de) || de.Run != run || de.Entry != "bin/sh" {
			t.Fatalf("bin/sh: served %q, %v; want its run %d's digest refused", b, err, run)
		}
		if !isRefused(err) {
			t.Fatalf("bin/sh: %v is not reported as refused (EIO, logged once)", err)
		}
	}
	for name, want := range map[string]string{"bin/bash": "#!bash, another program", "etc/motd": "welcome"} {
		if b, err := readEntry(t, l, name); err != nil || string(b) != want {
			t.Fatalf("%s: %q, %v", name, b, err)
		}
	}
	logs := logb.String()
	if n := strings.Count(logs, "field=\"run digest\""); n != 1 || !strings.Contains(logs, "layer="+l.Desc.Digest.String()) || !strings.Contains(logs, "entry=bin/sh") {
		t.Errorf("%d log lines name the run digest; want 1, naming layer and run:\n%s", n, logs)
	}
}

// isRefused: err is a refusal fusefs reports as EIO without logging it again.
func isRefused(err error) bool {
	var r interface{ Reported() bool }
	return errors.As(err, &r) && r.Reported()
}

// TestTarCheckIndexVersion1: a layer whose index has no run digests (version 1, as written
// before them) is served as before: headers by Range, checked against the index, a crafted
// entry refused, the others served.
func TestTarCheckIndexVersion1(t *testing.T) {
	l, _ := openBinLayer(t, "v1:v1", nil, func(ix *format.Index) { ix.RunDigests = nil })
	if l.Index.RunDigests != nil {
		t.Fatal("a version 1 index has run digests")
	}
	for name, want := range map[string]string{"bin/bash": "#!bash, another program", "bin/sh": "#!sh, the real one", "etc/motd": "welcome"} {
		if b, err := readEntry(t, l, name); err != nil || string(b) != want {
			t.Fatalf("%s: %q, %v", name, b, err)
		}
	}
	alt, _ := l.Index.Lookup("etc/alt")
	if err := l.Check(context.Background(), alt); err != nil {
		t.Fatal(err)
	}
	crafted, _ := openBinLayer(t, "v1crafted:v1", nil, func(ix *format.Index) { ix.RunDigests = nil; swapShBash(ix) })
	var m *format.MismatchError
	if _, err := readEntry(t, crafted, "bin/sh"); !errors.As(err, &m) || m.Field != "name" {
		t.Fatalf("crafted version 1 index: bin/sh: %v; want a name mismatch", err)
	}
}
