// Package testutil is what lazypull's tests share: reproducible random bytes, a log
// capture, waits, tar builders (GNU tar's sparse forms too), an in-process registry that
// logs its requests and pushes to it, the bytes a call allocates, a skip unless root.
//
// It is for _test.go files only: internal/depcheck fails if a package's own files import
// it. It imports nothing of lazypull's, so that any package's tests may use it (format's
// among them: a testutil that imported format would be a cycle for format's tests).
package testutil
