package profile

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"lazypull/internal/testutil"
)

// TestPackRunRecords: a version 2 pack carries header run records beside indexes and
// chunks, and reads back as written; a version 1 writer refuses them; a version 1 pack that
// holds a record of kind 3 is malformed there (as any unknown kind was before), and a
// version 1 reader, which knows only version 1, refuses a version 2 pack at its header.
func TestPackRunRecords(t *testing.T) {
	recs := samplePack()
	run := testutil.RandBytes(900, 3000)
	withRun := append(append(recs[:3:3], packRec{RecordRun, recDigest(run), run}), recs[3:]...)
	var buf bytes.Buffer
	pw := NewPackWriterVersion(&buf, PackVersion2)
	writeRecs(t, pw, withRun)
	if err := pw.Index(recs[0].d, recs[0].b); err == nil {
		t.Fatal("an index record after a header run record was written")
	}
	data := buf.Bytes()
	got, err := readPack(bytes.NewReader(data), int64(len(data)))
	if err != io.EOF {
		t.Fatal(err)
	}
	sameRecs(t, got, withRun)
	pr, err := NewPackReader(bytes.NewReader(data), int64(len(data)))
	if err != nil || pr.Version() != PackVersion2 {
		t.Fatalf("version %d, %v", pr.Version(), err)
	}

	if err := NewPackWriter(io.Discard).Run(recDigest(run), run); err == nil {
		t.Fatal("a version 1 pack took a header run record")
	}
	if err := NewPackWriterVersion(io.Discard, PackVersion2).Run(recDigest(nil), make([]byte, MaxRunRecord+1)); err == nil {
		t.Fatal("a header run record over the limit was written")
	}

	// The same records under a version 1 header: the run record is malformed, and the
	// reader stops there with what came before.
	v1 := bytes.Clone(data)
	binary.BigEndian.PutUint16(v1[len(packMagic):], PackVersion1)
	got, err = readPack(bytes.NewReader(v1), int64(len(v1)))
	if !errors.Is(err, ErrBadPack) || len(got) != 3 {
		t.Fatalf("version 1 pack with a header run record: %d records, %v", len(got), err)
	}
	// A version this reader does not know is refused at the header.
	v3 := bytes.Clone(data)
	binary.BigEndian.PutUint16(v3[len(packMagic):], 3)
	if _, err := NewPackReader(bytes.NewReader(v3), int64(len(v3))); !errors.Is(err, ErrBadPack) {
		t.Fatalf("version 3 pack: %v", err)
	}
	// A header run record claiming more than the limit is malformed.
	over := bytes.Clone(data)
	at := packHeader
	for _, r := range withRun[:3] {
		at += recHeader + len(r.b)
	}
	binary.BigEndian.PutUint32(over[at+33:], MaxRunRecord+1)
	if got, err := readPack(bytes.NewReader(over), int64(len(over))); !errors.Is(err, ErrBadPack) || len(got) != 3 {
		t.Fatalf("header run record over the limit: %d records, %v", len(got), err)
	}
}
