// Package depcheck holds no code: its test pins lazypull's import graph, which package may
// import which, so that data keeps flowing one way (registry -> fetch -> store -> fusefs ->
// snapshot, wired together by internal/daemon only) and format keeps depending on nothing of
// ours.
//
// The table in depcheck_test.go lists, for every package of the module, the lazypull
// packages it imports (exactly: a new edge fails the test until the table says why it is
// allowed) and the third-party modules it may import (standard library always). Beside the
// table, the test checks the rules themselves over the whole graph, so that widening the
// table alone cannot undo them. It reads the graph with `go list`, so it needs the go
// command on PATH, as every test run has.
//
// Three more tests keep the documents that describe the graph in step with it: every
// package has a package comment, README.md's "Layout" lists every package, and
// docs/design.md points to nothing outside the repository.
package depcheck
