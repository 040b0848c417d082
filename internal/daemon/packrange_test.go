package daemon

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"lazypull/format"
	"lazypull/internal/profile"
	"lazypull/internal/store"
)

// warmNode is the store of a node that read the files named of the image ref without a
// profile (an earlier version of the image shared them), and then lost the index of
// layer drop (the new version's changed layer), or none (drop < 0). It returns the store,
// reopened.
func warmNode(t *testing.T, ref string, drop int, read ...string) *store.Store {
	t.Helper()
	dir := t.TempDir()
	st, im := openIn(t, dir, ref)
	for _, path := range read {
		readFile(t, im, path)
	}
	im.waitKept()
	var lost format.Digest
	if drop >= 0 {
		loc, err := format.LocationFromAnnotations(im.Image.Manifest.Layers[drop].Annotations)
		if err != nil {
			t.Fatal(err)
		}
		lost = loc.Digest
	}
	im.Close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if drop >= 0 {
		if err := os.Remove(filepath.Join(dir, "meta", hex.EncodeToString(lost[:]))); err != nil {
			t.Fatal(err)
		}
	}
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// packRequests counts the requests for the blob pack among the registry's and the bytes of
// the pack they asked for, each byte once (the whole pack for a request without a Range:
// this registry answers a multi-range request with its first range, and the client asks
// again for the rest), and the requests for other blobs.
func packRequests(t *testing.T, reqs *requestLog, pack []byte) (n int, bytes int64, others int) {
	t.Helper()
	d := fmt.Sprintf("sha256:%x", sha256.Sum256(pack))
	asked := make([]bool, len(pack))
	for _, line := range reqs.reg.Requests() {
		method, rest, _ := strings.Cut(line, " ")
		path, rg, _ := strings.Cut(rest, " Range: bytes=")
		if method != "GET" || requestKind(path) != "blobs" {
			continue
		}
		if !strings.HasSuffix(path, d) {
			others++
			continue
		}
		n++
		if rg == "" {
			rg = fmt.Sprintf("0-%d", len(pack)-1)
		}
		for _, r := range strings.Split(rg, ",") {
			a, b, _ := strings.Cut(strings.TrimSpace(r), "-")
			first, err1 := strconv.ParseInt(a, 10, 64)
			last, err2 := strconv.ParseInt(b, 10, 64)
			if err1 != nil || err2 != nil || first > last || last >= int64(len(pack)) {
				t.Fatalf("range %q of %q", r, line)
			}
			for i := first; i <= last; i++ {
				asked[i] = true
			}
		}
	}
	for _, a := range asked {
		if a {
			bytes++
		}
	}
	return n, bytes, others
}

// TestPackSkipsLocal: a node that holds most of a profile's chunks (it ran an image sharing
// them) and lacks a layer's index asks the pack for its indexes alone, then, by range, for
// the records it lacks: a tenth of the pack at most, from the pack alone; every file reads
// right.
func TestPackSkipsLocal(t *testing.T) {
	ref, files, p, pack, subject, reqs := packFixture(t)
	pushProfile(t, ref, subject, p, pack)
	st := warmNode(t, ref, 1, "lib/libc.so", "etc/passwd", "bin/app")
	reqs.reset()
	im, ps := openPrefetchedIn(t, st, ref)
	n, bytes, others := packRequests(t, reqs, pack)
	if n < 2 || n > 3 || others != 0 || bytes > int64(len(pack))/10 {
		t.Errorf("%d pack requests for %d of its %d bytes, %d other blob requests; want the index it lacks, then the records it lacks (header runs and chunks, side by side), a tenth of the pack, nothing from the layers",
			n, bytes, len(pack), others)
	}
	checkServed(t, im, ps, files)
}

// TestPackSkipsLocalIndexesKept: a node that keeps every index and holds some of the
// chunks asks the pack for the records it lacks alone, by range.
func TestPackSkipsLocalIndexesKept(t *testing.T) {
	ref, files, p, pack, subject, reqs := packFixture(t)
	pushProfile(t, ref, subject, p, pack)
	st := warmNode(t, ref, -1, "lib/libc.so")
	reqs.reset()
	im, ps := openPrefetchedIn(t, st, ref)
	n, bytes, others := packRequests(t, reqs, pack)
	if n < 1 || others != 0 || bytes > int64(len(pack))/2 {
		t.Errorf("%d pack requests for %d of its %d bytes, %d other blob requests; want the records the node lacks alone", n, bytes, len(pack), others)
	}
	checkServed(t, im, ps, files)
}

// TestPackSkipsLocalHostile: records that are not where the layout puts them (a header
// changed) are refused, and what the node lacks comes from the layers; a pack whose layout
// does not end at its size (written in another order) is read whole after its indexes,
// as a cold node reads it. Either way the prefetch ends without error and every file reads
// right.
func TestPackSkipsLocalHostile(t *testing.T) {
	for _, c := range []struct {
		name       string
		damage     func(t *testing.T, pack []byte) []byte
		fromLayers bool
	}{
		{"chunk header", func(t *testing.T, pack []byte) []byte {
			kinds, at, _ := packRecords(t, pack)
			for i, k := range kinds {
				if k == byte(profile.RecordChunk) {
					pack[at[i]-37+1] ^= 0xff // the digest of every chunk record
				}
			}
			return pack
		}, true},
		{"run header", func(t *testing.T, pack []byte) []byte {
			kinds, at, _ := packRecords(t, pack)
			for i, k := range kinds {
				if k == byte(profile.RecordRun) {
					pack[at[i]-37] = byte(profile.RecordChunk)
				}
			}
			return pack
		}, true},
		{"chunk bytes", func(t *testing.T, pack []byte) []byte {
			kinds, at, lens := packRecords(t, pack)
			for i, k := range kinds {
				if k == byte(profile.RecordChunk) {
					pack[at[i]+lens[i]/2] ^= 0xff
				}
			}
			return pack
		}, true},
		{"longer", func(t *testing.T, pack []byte) []byte {
			return append(pack, make([]byte, 100)...)
		}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			ref, files, p, pack, subject, reqs := packFixture(t)
			pack = c.damage(t, pack)
			pushProfile(t, ref, subject, p, pack)
			st := warmNode(t, ref, 1, "lib/libc.so", "etc/passwd")
			reqs.reset()
			im, ps := openPrefetchedIn(t, st, ref)
			n, _, others := packRequests(t, reqs, pack)
			if c.fromLayers && others == 0 {
				t.Errorf("no layer request: want what the pack could not give from the layers")
			}
			if !c.fromLayers && (n != 2 || others != 0) {
				t.Errorf("%d pack requests, %d other blob requests; want 2 (the index it lacks, the rest), none from the layers", n, others)
			}
			checkServed(t, im, ps, files)
		})
	}
}
