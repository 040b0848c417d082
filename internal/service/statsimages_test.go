package service

import (
	"testing"

	"lazypull/internal/daemon"
	"lazypull/internal/fetch"
)

// TestWriteStatsImages: `lazypull stats` lists each image open, whether it is lazy, why
// the layers that are not lazy fell back, and what its registry served.
func TestWriteStatsImages(t *testing.T) {
	s := daemon.Stats{Open: []daemon.ImageStats{
		{Image: "r/lazy", Layers: 3, Lazy: 3, Fetch: &fetch.Stats{Requests: 5, Bytes: 2048}},
		{Image: "r/part", Layers: 3, Lazy: 1, Plain: 1, Fallbacks: map[string]int{daemon.ReasonIndex: 1}, Fetch: &fetch.Stats{}},
		{Image: "r/plain", Layers: 2, Plain: 2, Fetch: &fetch.Stats{}},
		{Image: "r/private", Err: "auth: fetch r/private: 401 Unauthorized"},
	}}
	wantStats(t, s,
		"image r/lazy: lazy, 3 of 3 layers; registry: 5 requests, 2.0 KiB read, 0 errors\n",
		"image r/part: partly lazy, 1 of 3 layers; 1 not lazypull layers; 1 downloaded whole (index); registry: 0 requests",
		"image r/plain: not lazy, 0 of 2 layers; 2 not lazypull layers;",
		"image r/private: not lazy, every layer downloaded whole: auth: fetch r/private: 401 Unauthorized\n",
	)
}
