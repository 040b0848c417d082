package format

import (
	"bytes"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"lazypull/internal/testutil"
)

// TestSharedIndex: reading the index of a layer whose index is in use already gives that
// Index (by annotations, by footer, and from another blob with the same index), while the
// payload is still read and verified each time; once nobody uses the index, it is
// collected and its entry dropped.
func TestSharedIndex(t *testing.T) {
	blob, res := convert(t, edgeCases(t))
	want, err := ParseDigest(res.Annotations()[AnnotationIndexDigest])
	if err != nil {
		t.Fatal(err)
	}
	useShared(t, blob, res)
	// Nothing holds the index any more: it goes, and so does its entry.
	// A collection signals nothing a test can wait on: collect and look again until then.
	testutil.WaitFor(t, 5*time.Second, "the shared index to be dropped after its last user", func() bool {
		runtime.GC()
		_, ok := sharedIndexes.Load(want)
		return !ok
	})
}

func useShared(t *testing.T, blob []byte, res *Result) {
	first, err := Open(bytes.NewReader(blob), int64(len(blob)), res.Annotations())
	if err != nil {
		t.Fatal(err)
	}
	byFooter, err := Open(bytes.NewReader(blob), int64(len(blob)), nil)
	if err != nil {
		t.Fatal(err)
	}
	copyBlob := bytes.Clone(blob) // another image's blob of the same layer
	again, err := Open(bytes.NewReader(copyBlob), int64(len(copyBlob)), res.Annotations())
	if err != nil {
		t.Fatal(err)
	}
	if byFooter.Index != first.Index || again.Index != first.Index {
		t.Errorf("the same index read three times gave %p, %p, %p; want one Index", first.Index, byFooter.Index, again.Index)
	}

	// A corrupt payload is refused even though an index with the digest it should have is
	// in use: every read is verified.
	bad := bytes.Clone(blob)
	bad[res.IndexOffset+res.IndexSize/2] ^= 1
	if _, err := Open(bytes.NewReader(bad), int64(len(bad)), res.Annotations()); err == nil || !strings.Contains(err.Error(), "digest") {
		t.Errorf("corrupt index payload while the good one is shared: %v; want a digest error", err)
	}

	// Concurrent first reads of another index agree on one Index.
	blob2, res2 := convert(t, manyFiles(t, 50))
	ixs := make([]*Index, 8)
	var wg sync.WaitGroup
	for i := range ixs {
		wg.Go(func() {
			l, err := Open(bytes.NewReader(blob2), int64(len(blob2)), res2.Annotations())
			if err == nil {
				ixs[i] = l.Index
			}
		})
	}
	wg.Wait()
	for i, ix := range ixs {
		if ix == nil || ix != ixs[0] {
			t.Fatalf("concurrent read %d gave %p, read 0 %p", i, ix, ixs[0])
		}
	}

}
