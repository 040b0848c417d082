package testutil

import "runtime"

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
