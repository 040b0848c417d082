package fetch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"lazypull/internal/testutil"
)

// OpenRange is one Range GET whose bytes come as they arrive, exactly the range's.
func TestOpenRange(t *testing.T) {
	f, blob, d, reg, _ := blobRegistry(t, 60, 3<<20+77)
	off, n := int64(1<<20+5), int64(2<<20)
	rc, err := reg.Blob(d, int64(len(blob))).OpenRange(t.Context(), off, n)
	if err != nil {
		t.Fatal(err)
	}
	got, err := readStream(rc)
	if err != io.EOF || !bytes.Equal(got, blob[off:off+n]) {
		t.Fatalf("%d bytes, %v; want the %d of the range, then io.EOF", len(got), err, n)
	}
	rc.Close()
	if h := f.rangeLog(); len(h) != 1 || h[0] != fmt.Sprintf("bytes=%d-%d", off, off+n-1) {
		t.Fatalf("Range headers %q; want one request for the range", h)
	}
	if s := reg.Stats(); s.Requests != 1 || s.Errors != 0 {
		t.Fatalf("stats %+v", s)
	}
	for _, r := range []Range{{-1, 10}, {0, 0}, {int64(len(blob)) - 5, 6}} {
		if _, err := reg.Blob(d, int64(len(blob))).OpenRange(t.Context(), r.Off, r.Len); err == nil || !strings.Contains(err.Error(), "outside") {
			t.Fatalf("range %s: %v", r, err)
		}
	}
	if s := reg.Stats(); s.Requests != 1 {
		t.Fatalf("a range outside the blob sent a request: %+v", s)
	}
}

// A range read to its last byte gives its place among the requests back before Close (a
// caller decoding what it read holds no request): with one place, a second range opens.
func TestOpenRangeReleasesAtItsEnd(t *testing.T) {
	_, blob, d, reg, _ := blobRegistry(t, 64, 10000, WithMaxConcurrency(1))
	rc, err := reg.Blob(d, int64(len(blob))).OpenRange(t.Context(), 10, 100)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.ReadFull(rc, make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	rc2, err := reg.Blob(d, int64(len(blob))).OpenRange(ctx, 200, 100)
	if err != nil {
		t.Fatalf("a second range while the first, read whole, is open: %v", err)
	}
	rc2.Close()
}

// Answers that are not the range asked for fail, naming why; a 200 with the whole blob
// serves a range near its start and fails one past what Fetch reads through.
func TestOpenRangeAnswers(t *testing.T) {
	blob := testutil.RandBytes(61, 100000)
	off, n := int64(1000), int64(5000)
	for _, c := range []struct {
		name  string
		serve func(w http.ResponseWriter, r *http.Request)
		max   int64  // WithCoalescing's maxRequest, 0 for the default
		want  string // "" for the range's bytes
	}{
		{"200-near-start", func(w http.ResponseWriter, r *http.Request) {
			w.Write(blob)
		}, 0, ""},
		{"200-past-read-through", func(w http.ResponseWriter, r *http.Request) {
			w.Write(blob)
		}, 4096, "past the 4096 bytes"},
		{"other-range", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, off+n-2, len(blob)))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(blob[off : off+n-1])
		}, 0, fmt.Sprintf("Content-Range %d-%d for the range", off, off+n-2)},
		{"multipart", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "multipart/byteranges; boundary=x")
			w.WriteHeader(http.StatusPartialContent)
		}, 0, "multipart answer"},
		{"416", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
		}, 0, "416"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFake("r")
			d := f.addBlob(blob)
			f.hook = func(_ int, w http.ResponseWriter, r *http.Request) bool { c.serve(w, r); return true }
			_, host := serve(t, f)
			var opts []Option
			if c.max > 0 {
				opts = append(opts, WithCoalescing(0, c.max))
			}
			opts = append(opts, WithRetry(1, time.Millisecond))
			reg, _ := newReg(t, host, "r", opts...)
			rc, err := reg.Blob(d, int64(len(blob))).OpenRange(t.Context(), off, n)
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				defer rc.Close()
				got, err := readStream(rc)
				if err != io.EOF || !bytes.Equal(got, blob[off:off+n]) {
					t.Fatalf("%d bytes, %v", len(got), err)
				}
				return
			}
			if err == nil {
				rc.Close()
				t.Fatalf("opened; want an error naming %q", c.want)
			}
			var fe *Error
			if !asError(err, &fe) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("%v; want an *Error naming %q", err, c.want)
			}
		})
	}
}

// A body that ends before the range does is asked again for what is left, within the
// Registry's attempts; then it is io.ErrUnexpectedEOF, with what is left.
func TestOpenRangeBodyCut(t *testing.T) {
	f, blob, d, reg, _ := blobRegistry(t, 62, 200000) // 4 attempts
	f.hook = func(_ int, w http.ResponseWriter, r *http.Request) bool {
		rec := httptest.NewRecorder()
		http.ServeContent(rec, r, "", time.Time{}, bytes.NewReader(blob))
		cutConn(w, rec.Code, rec.Header(), rec.Body.Bytes()[:3000])
		return true
	}
	rc, err := reg.Blob(d, int64(len(blob))).OpenRange(t.Context(), 100, 150000)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := readStream(rc)
	var fe *Error
	if !bytes.Equal(got, blob[100:12100]) || !asError(err, &fe) || !errors.Is(err, io.ErrUnexpectedEOF) || fe.Range != (Range{Off: 12100, Len: 138000}) {
		t.Fatalf("%d bytes, %v", len(got), err)
	}
	want := []string{"bytes=100-150099", "bytes=3100-150099", "bytes=6100-150099", "bytes=9100-150099"}
	if h := f.rangeLog(); fmt.Sprint(h) != fmt.Sprint(want) {
		t.Fatalf("Range headers %q, want %q", h, want)
	}
	if s := reg.Stats(); s.Requests != 4 || s.Retries != 3 {
		t.Fatalf("stats %+v", s)
	}

	// Cut once, then served: the bytes are the range's, in two requests.
	f.hook = func(n int, w http.ResponseWriter, r *http.Request) bool {
		if n > 5 {
			return false
		}
		rec := httptest.NewRecorder()
		http.ServeContent(rec, r, "", time.Time{}, bytes.NewReader(blob))
		cutConn(w, rec.Code, rec.Header(), rec.Body.Bytes()[:3000])
		return true
	}
	rc, err = reg.Blob(d, int64(len(blob))).OpenRange(t.Context(), 100, 150000)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if got, err := readStream(rc); err != io.EOF || !bytes.Equal(got, blob[100:150100]) {
		t.Fatalf("%d bytes, %v; want the range's 150000, then io.EOF", len(got), err)
	}
	if h := f.rangeLog()[4:]; fmt.Sprint(h) != "[bytes=100-150099 bytes=3100-150099]" {
		t.Fatalf("Range headers %q", h)
	}
}

// ReadAll refuses a blob whose descriptor claims more than MaxReadAll, before a request.
func TestReadAllBound(t *testing.T) {
	f := newFake("r")
	d := f.addBlob([]byte("{}"))
	_, host := serve(t, f)
	reg, _ := newReg(t, host, "r")
	var err error
	if _, err = reg.Blob(d, MaxReadAll+1).ReadAll(t.Context()); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("over the limit of %d", MaxReadAll)) {
		t.Fatalf("ReadAll of a blob claiming %d bytes: %v", MaxReadAll+1, err)
	}
	if s := reg.Stats(); s.Requests != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// A part's length is the answer's word, and the range it answers the caller's claim (an
// index's frame sizes, up to 72 MiB a frame): a 206 for a 64 MiB range that ended after
// 1 KiB allocated the 64 MiB before its first byte (on each try). Now a part past
// partUpfront grows as its bytes arrive; one that does arrive is read whole, as a stream
// (206) or from the whole blob (200).
func TestFetchPartGrowsAsItArrives(t *testing.T) {
	const claim, n = 100 << 20, 64 << 20
	f := newFake("r")
	d := f.addBlob([]byte("small"))
	f.hook = func(_ int, w http.ResponseWriter, r *http.Request) bool {
		h := http.Header{}
		h.Set("Content-Range", fmt.Sprintf("bytes 0-%d/%d", n-1, claim))
		h.Set("Content-Length", fmt.Sprint(n))
		cutConn(w, http.StatusPartialContent, h, make([]byte, 1024))
		return true
	}
	_, host := serve(t, f)
	reg, _ := newReg(t, host, "r", WithRetry(1, 0))
	var err error
	a := testutil.Allocated(func() {
		err = reg.Blob(d, claim).Fetch(t.Context(), []Range{{0, n}}, func(Range, []byte) error { return nil })
	})
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("a %d-byte part cut after 1 KiB: %v", n, err)
	}
	if a > partUpfront+4<<20 {
		t.Fatalf("a %d-byte part cut after 1 KiB allocated %d bytes", n, a)
	}

	blob := testutil.RandBytes(63, 3*partUpfront/2)
	for _, whole := range []bool{false, true} {
		f := newFake("r")
		d := f.addBlob(blob)
		if whole {
			f.hook = func(_ int, w http.ResponseWriter, r *http.Request) bool { w.Write(blob); return true }
		}
		_, host := serve(t, f)
		reg, _ := newReg(t, host, "r", WithCoalescing(0, int64(len(blob))))
		rg := Range{Off: 100, Len: int64(len(blob)) - 200}
		got, err := collect(t, reg.Blob(d, int64(len(blob))), []Range{rg})
		if err != nil || !bytes.Equal(got[rg], blob[rg.Off:rg.End()]) {
			t.Fatalf("a %d-byte range (200: %v): %d bytes, %v", rg.Len, whole, len(got[rg]), err)
		}
	}
}
