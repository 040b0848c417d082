package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// A registry that sends headers and then nothing, or never answers at all, must not hold
// a place among the requests in flight for ever: with WithMaxConcurrency of them stuck,
// every other read of the image would wait behind them. Every request goes out through do,
// which cancels it once no byte of the answer has come for the idle timeout
// (WithIdleTimeout): while the headers are awaited, then while a Read of the body waits.
// One mechanism for every kind of request (manifests, indexes, referrers, blob ranges,
// multipart answers, whole-blob streams), rather than a deadline per reader.

// idleError is the reason a request idle past the timeout was cancelled. It is a
// net.Error that times out, so classify takes it as temporary and retry tries again.
type idleError struct {
	d     time.Duration
	phase string // "headers" or "body"
}

func (e *idleError) Error() string {
	return fmt.Sprintf("no bytes for %v (waiting for the %s): request cancelled", e.d, e.phase)
}
func (e *idleError) Timeout() bool   { return true }
func (e *idleError) Temporary() bool { return true }

// do sends a GET for path p under endpoint e's API root, with set (if not nil) adding
// headers, under the idle timeout. The body of the response it returns reads under the
// same timeout; closing it ends the request. The error is the client's, or an *idleError.
func (r *Registry) do(ctx context.Context, e *endpoint, p string, set func(*http.Request)) (*http.Response, error) {
	rctx, cancel := context.WithCancelCause(ctx)
	req, err := r.newRequest(rctx, e, p)
	if err != nil {
		cancel(nil)
		return nil, err
	}
	if set != nil {
		set(req)
	}
	headers := &idleError{d: r.idle, phase: "headers"}
	t := time.AfterFunc(r.idle, func() { cancel(headers) })
	start := time.Now()
	resp, err := e.client.Do(req)
	t.Stop()
	if err != nil {
		if cause := context.Cause(rctx); cause == headers {
			err = headers
		}
		cancel(nil)
		return nil, err
	}
	r.rtts.add(time.Since(start))
	resp.Body = &idleBody{
		rc:     resp.Body,
		ctx:    rctx,
		cancel: cancel,
		d:      r.idle,
		idle:   &idleError{d: r.idle, phase: "body"},
	}
	return resp, nil
}

// idleBody is a response body whose Reads cancel the request when the registry sends
// nothing for d. The timer runs only while a Read waits.
type idleBody struct {
	rc     io.ReadCloser
	ctx    context.Context
	cancel context.CancelCauseFunc
	t      *time.Timer // fires cancel(idle); stopped between Reads
	d      time.Duration
	idle   *idleError
	armed  bool
}

func (b *idleBody) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return b.rc.Read(p)
	}
	if !b.armed {
		// The timer of the header phase fires into the request's cancel with another
		// cause; re-aim it at the body's.
		b.armed = true
		b.t = time.AfterFunc(b.d, func() { b.cancel(b.idle) })
	} else {
		b.t.Reset(b.d)
	}
	n, err := b.rc.Read(p)
	b.t.Stop()
	if err != nil && !errors.Is(err, io.EOF) {
		var ie *idleError
		if errors.As(context.Cause(b.ctx), &ie) {
			err = ie
		}
	}
	return n, err
}

func (b *idleBody) Close() error {
	if b.armed {
		b.t.Stop()
	}
	err := b.rc.Close()
	b.cancel(nil)
	return err
}
