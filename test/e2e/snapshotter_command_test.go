package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"lazypull/internal/daemon"
	"lazypull/internal/testutil"
)

// TestSnapshotterCommandWalk: with speculation on whatever the registry's round trip
// (speculate_min_rtt = 0s, as across a region's network), `lazypull pull` alone brings
// what the image's command runs, read from its config: python3.11 and its libraries are
// fetched before any container starts, well past the layer indexes the pull needs
// (about 0.6 MB); the container then runs from them.
func TestSnapshotterCommandWalk(t *testing.T) {
	e := setup(t)
	ref := e.lazyImage(t, "python")
	const ns = "lazypull-e2e"
	s := e.startSnapshotterWith(t, "speculate_min_rtt = \"0s\"\n")
	s.pull(t, e.bin, ns, ref)
	const least = 2 << 20 // python3.11's code alone is 2.5 MB compressed
	testutil.Await(t, 30*time.Second, "the command's program fetched before any container runs", func() (bool, string) {
		st, err := daemon.ReadStats(s.store)
		if err != nil {
			return false, err.Error()
		}
		if st.Fetch == nil {
			return false, "no fetch figures"
		}
		return st.Fetch.Bytes >= least, fmt.Sprintf("%d bytes in %d requests", st.Fetch.Bytes, st.Fetch.Requests)
	})
	if log := s.log.String(); !strings.Contains(log, "prefetching what the image's command names") {
		t.Errorf("the snapshotter logged no walk of the image's command:\n%s", log)
	}
	s.runPython(t, ns, ref, "walked")
}
