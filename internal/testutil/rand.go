package testutil

import "math/rand/v2"

// RandBytes returns n reproducible pseudo-random bytes: the same seed, the same bytes.
func RandBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}
