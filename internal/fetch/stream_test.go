package fetch

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"lazypull/internal/testutil"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// readStream reads r to its first error, which it returns as it came (io.EOF included).
func readStream(r io.Reader) ([]byte, error) {
	var out []byte
	p := make([]byte, 32<<10)
	for {
		n, err := r.Read(p)
		out = append(out, p[:n]...)
		if err != nil {
			return out, err
		}
	}
}

// openStream opens the blob d of size bytes, closed when the test ends.
func openStream(t *testing.T, reg *Registry, d v1.Hash, size int64) io.ReadCloser {
	t.Helper()
	rc, err := reg.Blob(d, size).Open(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close() })
	return rc
}

func TestOpenReadsWhole(t *testing.T) {
	f, blob, d, reg, _ := blobRegistry(t, 40, 3<<20+123)

	rc, err := reg.Blob(d, int64(len(blob))).Open(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	got, err := readStream(rc)
	if err != io.EOF {
		t.Fatalf("after %d bytes: %v, want io.EOF", len(got), err)
	}
	if !bytes.Equal(got, blob) {
		t.Fatalf("%d bytes read, not the blob's %d", len(got), len(blob))
	}
	if n, err := rc.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Fatalf("Read after the end: %d, %v", n, err)
	}
	if err := rc.Close(); err != nil {
		t.Fatal(err)
	}
	if n, err := rc.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Fatalf("Read after the end and Close: %d, %v", n, err)
	}
	if s := reg.Stats(); s.Requests != 1 || s.Bytes != int64(len(blob)) || s.Errors != 0 || s.Retries != 0 {
		t.Fatalf("stats %+v; want one request of the blob's bytes", s)
	}
	if h := f.rangeLog(); len(h) != 1 || h[0] != "" {
		t.Fatalf("Range headers %q; want one request without", h)
	}
}

func TestOpenEmptyBlob(t *testing.T) {
	f := newFake("r")
	d := f.addBlob(nil)
	_, host := serve(t, f)
	reg, _ := newReg(t, host, "r")
	rc := openStream(t, reg, d, 0)
	if got, err := readStream(rc); err != io.EOF || len(got) != 0 {
		t.Fatalf("%d bytes, %v", len(got), err)
	}
}

// A Read of nothing is no read: it neither ends the blob nor checks its digest.
func TestOpenEmptyRead(t *testing.T) {
	_, blob, d, reg, _ := blobRegistry(t, 41, 100000)
	rc := openStream(t, reg, d, int64(len(blob)))
	head := make([]byte, 1000)
	if _, err := io.ReadFull(rc, head); err != nil {
		t.Fatal(err)
	}
	if n, err := rc.Read(nil); n != 0 || err != nil {
		t.Fatalf("Read(nil) in the middle: %d, %v", n, err)
	}
	rest, err := readStream(rc)
	if err != io.EOF || !bytes.Equal(append(head, rest...), blob) {
		t.Fatalf("after %d bytes: %v", len(head)+len(rest), err)
	}
}

func TestOpenWrongContent(t *testing.T) {
	f, blob, d, reg, _ := blobRegistry(t, 42, 1<<20)
	wrong := bytes.Clone(blob)
	wrong[len(wrong)-1] ^= 1
	f.mu.Lock()
	f.blobs[d.String()] = wrong
	f.mu.Unlock()

	rc := openStream(t, reg, d, int64(len(blob)))
	got, err := readStream(rc)
	if len(got) != len(blob) {
		t.Fatalf("%d bytes before the error, want the %d the server sent", len(got), len(blob))
	}
	var fe *Error
	if err == io.EOF || !asError(err, &fe) || fe.Digest != d.String() || fe.Temporary() ||
		!strings.Contains(err.Error(), "content has digest "+sha(wrong).String()) {
		t.Fatalf("error %v, want a digest mismatch for %s", err, d)
	}
	if _, again := rc.Read(make([]byte, 10)); again != err {
		t.Fatalf("Read after the error: %v", again)
	}
	if s := reg.Stats(); s.Requests != 1 || s.Errors != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// A body cut short, however it is framed, ends in an error (the caller's to retry).
func TestOpenBodyCut(t *testing.T) {
	blob := testutil.RandBytes(43, 500000)
	for _, framed := range []bool{true, false} {
		t.Run("content-length "+strconv.FormatBool(framed), func(t *testing.T) {
			f := newFake("r")
			d := f.addBlob(blob)
			f.hook = func(_ int, w http.ResponseWriter, r *http.Request) bool {
				rec := httptest.NewRecorder()
				http.ServeContent(rec, r, "", time.Time{}, bytes.NewReader(blob))
				h := rec.Header()
				if !framed {
					h.Del("Content-Length") // the body ends with the connection
				}
				cutConn(w, rec.Code, h, rec.Body.Bytes()[:len(blob)/2])
				return true
			}
			_, host := serve(t, f)
			reg, _ := newReg(t, host, "r")
			rc := openStream(t, reg, d, int64(len(blob)))
			got, err := readStream(rc)
			if !bytes.Equal(got, blob[:len(got)]) {
				t.Fatal("wrong bytes before the cut")
			}
			var fe *Error
			if err == io.EOF || !asError(err, &fe) || !errors.Is(err, io.ErrUnexpectedEOF) || !fe.Temporary() ||
				fe.Range != (Range{Off: int64(len(got)), Len: int64(len(blob) - len(got))}) {
				t.Fatalf("after %d bytes: %v", len(got), err)
			}
			if len(got) != len(blob)/2 {
				t.Fatalf("%d bytes before the error, want the %d sent", len(got), len(blob)/2)
			}
			if s := reg.Stats(); s.Requests != 1 || s.Retries != 0 {
				t.Fatalf("stats %+v: the body is not retried", s)
			}
		})
	}
}

func TestOpenWrongLength(t *testing.T) {
	_, blob, d, reg, _ := blobRegistry(t, 44, 10000)
	// The descriptor says one byte more than the registry has.
	_, err := reg.Blob(d, int64(len(blob))+1).Open(t.Context())
	checkFinal(t, reg, err, "")
	if !errors.Is(err, errMalformed) {
		t.Fatalf("error %v; want a malformed answer", err)
	}
}

// A body without a length that runs on past the blob: the blob's bytes are read and
// checked, the rest left unread.
func TestOpenLongerBody(t *testing.T) {
	f, blob, d, reg, _ := blobRegistry(t, 47, 100000)
	f.hook = func(_ int, w http.ResponseWriter, _ *http.Request) bool {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush() // chunked: no Content-Length
		_, _ = w.Write(blob)
		_, _ = w.Write([]byte("and more"))
		return true
	}
	rc := openStream(t, reg, d, int64(len(blob)))
	if got, err := readStream(rc); err != io.EOF || !bytes.Equal(got, blob) {
		t.Fatalf("after %d bytes: %v", len(got), err)
	}
}

func TestOpenStatus(t *testing.T) {
	t.Run("404", func(t *testing.T) {
		f := newFake("r")
		_, host := serve(t, f)
		reg, _ := newReg(t, host, "r")
		d := sha([]byte("missing"))
		rc, err := reg.Blob(d, 100).Open(t.Context())
		var fe *Error
		if rc != nil || !asError(err, &fe) || fe.StatusCode != http.StatusNotFound || fe.Temporary() || fe.Digest != d.String() ||
			!strings.Contains(err.Error(), "BLOB_UNKNOWN") {
			t.Fatalf("Open: %v", err)
		}
		if s := reg.Stats(); s.Requests != 1 || s.Retries != 0 {
			t.Fatalf("stats %+v", s)
		}
	})
	t.Run("503 then 200", func(t *testing.T) {
		f := newFake("r")
		blob := testutil.RandBytes(45, 200000)
		d := f.addBlob(blob)
		f.hook = failFirst(2, http.StatusServiceUnavailable)
		_, host := serve(t, f)
		reg, _ := newReg(t, host, "r")
		rc := openStream(t, reg, d, int64(len(blob)))
		if got, err := readStream(rc); err != io.EOF || !bytes.Equal(got, blob) {
			t.Fatalf("after %d bytes: %v", len(got), err)
		}
		if s := reg.Stats(); s.Requests != 3 || s.Retries != 2 || s.Errors != 2 {
			t.Fatalf("stats %+v; want 3 requests, 2 retries", s)
		}
	})
	t.Run("503 for good", func(t *testing.T) {
		f := newFake("r")
		d := f.addBlob([]byte("x"))
		f.hook = failFirst(100, http.StatusServiceUnavailable)
		_, host := serve(t, f)
		reg, _ := newReg(t, host, "r", WithRetry(3, 0))
		_, err := reg.Blob(d, 1).Open(t.Context())
		var fe *Error
		if !asError(err, &fe) || fe.StatusCode != http.StatusServiceUnavailable || !fe.Temporary() {
			t.Fatalf("Open: %v", err)
		}
		if s := reg.Stats(); s.Requests != 3 {
			t.Fatalf("stats %+v", s)
		}
	})
}

// An open blob holds one of the Registry's places among the requests in flight until it
// is closed, read to its end or failed.
func TestOpenReleasesItsPlace(t *testing.T) {
	f, blob, d, reg, _ := blobRegistry(t, 46, 1<<20, WithMaxConcurrency(1))
	bad := sha([]byte("not the blob"))
	f.mu.Lock()
	f.blobs[bad.String()] = blob
	f.mu.Unlock()
	b := reg.Blob(d, int64(len(blob)))

	// open fails the test where Open waits for a place, instead of hanging it. The
	// context bounds the reading too: it is the request's.
	open := func(b *Blob) io.ReadCloser {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		t.Cleanup(cancel)
		rc, err := b.Open(ctx)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		return rc
	}

	rc := open(b)
	// While it is open, there is no place for another request.
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	_, err := b.Open(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a second Open with the only place taken: %v", err)
	}

	// Closed part-way.
	if _, err := io.ReadFull(rc, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	if err := rc.Close(); err != nil {
		t.Fatal(err)
	}
	var fe *Error
	if n, err := rc.Read(make([]byte, 10)); n != 0 || err == nil || err == io.EOF || asError(err, &fe) {
		t.Fatalf("Read after Close: %d, %v; want the stream's own error, not the request's", n, err)
	}
	if err := rc.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	// Read to its end, not closed.
	rc = open(b)
	if got, err := readStream(rc); err != io.EOF || !bytes.Equal(got, blob) {
		t.Fatalf("after %d bytes: %v", len(got), err)
	}

	// Failed at its end, not closed.
	rc = open(reg.Blob(bad, int64(len(blob))))
	if _, err := readStream(rc); err == io.EOF {
		t.Fatal("a wrong blob read through")
	}

	// Its request cancelled, not closed.
	ctx, cancel = context.WithCancel(t.Context())
	rc, err = b.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(rc, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := readStream(rc); !errors.Is(err, context.Canceled) {
		t.Fatalf("read on after its context ended: %v", err)
	}

	// A place is still there, for a request of another kind too.
	p := make([]byte, 100)
	ctx, cancel = context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := b.ReadAtContext(ctx, p, 5000); err != nil || !bytes.Equal(p, blob[5000:5100]) {
		t.Fatalf("ReadAt: %v", err)
	}
	rc = open(b)
	rc.Close()
}
