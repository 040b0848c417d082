package testutil

import (
	"runtime"
	"testing"
)

// Allocated returns the bytes the process allocated while f ran. The process's other
// goroutines count too: a test that measures runs its measurements serially (no
// t.Parallel) and lets nothing of its own run in the background meanwhile.
func Allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// DecodeWithin runs decode on p and fails t if that allocated more than limit bytes: the
// allocation bound of a decoder of hostile bytes. It returns what decode returned.
func DecodeWithin[T any](t testing.TB, p []byte, limit uint64, decode func([]byte) (T, error)) (T, error) {
	t.Helper()
	var v T
	var err error
	if n := Allocated(func() { v, err = decode(p) }); n > limit {
		t.Fatalf("decoding %d bytes allocated %d, over the bound of %d (err %v)", len(p), n, limit, err)
	}
	return v, err
}
