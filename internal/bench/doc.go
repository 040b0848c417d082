// Package bench is the harness behind cmd/lazypull-bench, a binary of its own (nothing of it
// is linked into bin/lazypull). Its main benchmark, `lazypull-bench e2e`, is a HelloBench-like
// measurement of the time from "start this image" to "the container is ready for work", cold
// every time, on real images and emulated links, for plain containerd, lazypull and
// stargz-snapshotter side by side. Three more measure one component's bars each, on loopback:
// the converter against ctr-remote (convert.go, `lazypull-bench convert`), the lazy mount's
// reads (mount.go, `lazypull-bench mount`) and the snapshotter's memory and cold pull
// (snapshotter.go, `lazypull-bench snapshotter`); they share bars.go (work directory,
// process CPU, manifests, stats.json, markdown report appended to
// docs/benchmarks-history.md) and the registry and node lifecycle of env.go.
//
// What it owns:
//   - Proxy (shaper.go): a TCP proxy in user space, in front of the registry on loopback, that
//     emulates a link: a bandwidth per direction shared by every connection through it, one
//     round trip of latency per connection set-up and half a round trip each way for every
//     byte, and counts of the bytes and HTTP requests it forwarded.
//   - the runner (run.go, env.go): registry, images, one containerd (and snapshotter) started
//     on fresh roots for every run, page cache dropped, runs in random order, N repetitions.
//   - aggregation (stats.go): median and min-max per image, mode and link, the physical limit
//     per image and each mode's ratio to it.
//   - the stargz modes (stargz.go): eStargz and optimized eStargz images made by ctr-remote
//     (cached), run on containerd-stargz-grpc (tools/stargz-grpc) as proxy plugin "stargz",
//     and every mode's ratios to optimized eStargz.
//   - the scenarios besides the cold starts (scenario.go): the image update (update.go: v1
//     started, then v2 timed, its bytes against plain's) and the scale start (scale.go: one
//     pull, then N containers at once).
//   - reports (report.go, chart.go, scenario_report.go): JSON, a text table per link and per
//     scenario, a PNG chart of the cold starts, an HTML page.
//   - the bar benchmarks (bars.go, convert.go, mount.go, snapshotter.go), ported from the
//     shell scripts they replace with the same measurements, bars and report.
//
// It runs the real components (docker-registry, containerd, runc, `lazypull snapshotter`,
// containerd-stargz-grpc, ctr-remote) as processes, through the project's scripts; it never
// imports the daemon.
package bench
