package store

import (
	"bytes"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"lazypull/format"
	"lazypull/internal/testutil"
)

// TestShareIndex: indexes decoded apart from one payload (by annotations, by footer, from
// another image's copy of the blob) are shared as one Index through the store, while
// format still reads and verifies every payload; concurrent first shares agree; once
// nobody uses the index, it is collected and its entry dropped.
func TestShareIndex(t *testing.T) {
	st := openStore(t, t.TempDir())
	var blob bytes.Buffer
	res, err := format.Write(t.Context(), &blob, bytes.NewReader(testutil.Tar(t, testutil.File("a", testutil.RandBytes(1, 300<<10)), testutil.File("b", []byte("b")))))
	if err != nil {
		t.Fatal(err)
	}
	b := blob.Bytes()
	want, err := format.ParseDigest(res.Annotations()[format.AnnotationIndexDigest])
	if err != nil {
		t.Fatal(err)
	}
	func() {
		open := func(b []byte, ann map[string]string) *format.Index {
			l, err := format.Open(bytes.NewReader(b), int64(len(b)), ann)
			if err != nil {
				t.Fatal(err)
			}
			return st.ShareIndex(want, l.Index)
		}
		if st.SharedIndex(want) != nil {
			t.Fatal("SharedIndex of an index never shared is not nil")
		}
		first := open(b, res.Annotations())
		if got := st.SharedIndex(want); got != first {
			t.Errorf("SharedIndex gave %p; want the shared %p", got, first)
		}
		byFooter := open(b, nil)
		again := open(bytes.Clone(b), res.Annotations())
		if byFooter != first || again != first {
			t.Errorf("the same index read three times gave %p, %p, %p; want one Index", first, byFooter, again)
		}
		bad := bytes.Clone(b)
		bad[res.IndexOffset+res.IndexSize/2] ^= 1
		if _, err := format.Open(bytes.NewReader(bad), int64(len(bad)), res.Annotations()); err == nil || !strings.Contains(err.Error(), "digest") {
			t.Errorf("corrupt index payload while the good one is shared: %v; want a digest error", err)
		}
		runtime.KeepAlive(first)
	}()
	testutil.WaitFor(t, 5*time.Second, "the shared index to be dropped after its last user", func() bool {
		runtime.GC()
		return !st.indexes.shared(want)
	})
	if st.SharedIndex(want) != nil {
		t.Error("SharedIndex of an index no image uses any more is not nil")
	}

	// Concurrent first shares of one digest agree on one Index.
	ixs := make([]*format.Index, 8)
	var wg sync.WaitGroup
	for i := range ixs {
		wg.Go(func() {
			l, err := format.Open(bytes.NewReader(b), int64(len(b)), res.Annotations())
			if err == nil {
				ixs[i] = st.ShareIndex(want, l.Index)
			}
		})
	}
	wg.Wait()
	for i, ix := range ixs {
		if ix == nil || ix != ixs[0] {
			t.Fatalf("concurrent share %d gave %p, share 0 %p", i, ix, ixs[0])
		}
	}
}
