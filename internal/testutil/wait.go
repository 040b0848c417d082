package testutil

import (
	"context"
	"testing"
	"time"
)

// Recv waits for a value on ch (an event the code under test sends) and fails the test
// if none comes within d, naming what it waited for.
func Recv[T any](t testing.TB, ch <-chan T, d time.Duration, what string) T {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("timed out after %v waiting for %s", d, what)
	case <-t.Context().Done():
		t.Fatalf("test ended waiting for %s", what)
	}
	var zero T
	return zero
}

// WaitFor polls cond until it holds and fails the test if it does not within d, naming
// what it waited for. It is for state nothing signals (a file that appears, a process
// that answers, another process's counter); where the code under test can send an event,
// wait for that instead. It polls every millisecond at first, backing off to every
// 100 ms, so that a cond that is costly (a process to run) is not run in a busy loop.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	Await(t, d, what, func() (bool, string) { return cond(), "" })
}

// Await is WaitFor for a check with something to show when it fails: besides whether it
// holds, check returns the state it saw (a process's output, the last answer), and a
// timeout names the last one, which says why.
func Await(t testing.TB, d time.Duration, what string, check func() (done bool, state string)) {
	t.Helper()
	var state string
	held := poll(t.Context(), d, func() (done bool) {
		done, state = check()
		return done
	})
	switch {
	case held:
	case t.Context().Err() != nil:
		t.Fatalf("test ended waiting for %s", what)
	case state != "":
		t.Fatalf("timed out after %v waiting for %s:\n%s", d, what, state)
	default:
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
}

// Eventually polls cond as WaitFor does, for up to d, and reports whether it came to hold:
// for a caller that goes on either way, such as a cleanup (whose test's context has ended)
// that reports what did not happen and cleans up the rest.
func Eventually(d time.Duration, cond func() bool) bool {
	return poll(context.Background(), d, cond)
}

// poll runs cond until it holds (true), d has passed or ctx ends (false): every millisecond
// at first, backing off to every 100 ms.
func poll(ctx context.Context, d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for every := time.Millisecond; !cond(); every = min(2*every, 100*time.Millisecond) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(every)
	}
	return true
}
