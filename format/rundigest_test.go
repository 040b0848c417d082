package format

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"testing"
)

// TestRunDigestsWritten: the writer gives every header run the sha256 of its compressed
// frames as the blob holds them, in a version 2 index, and the reader reads them back.
func TestRunDigestsWritten(t *testing.T) {
	for name, src := range map[string][]byte{"edge cases": edgeCases(t), "many headers": manyHeaders(t)} {
		blob, res := convert(t, src)
		payload := blob[res.IndexOffset : res.IndexOffset+res.IndexSize]
		if v := binary.LittleEndian.Uint16(payload[8:]); v != IndexVersion2 {
			t.Fatalf("%s: index version %d, want %d", name, v, IndexVersion2)
		}
		ix := freshIndex(t, blob, res)
		runs, _, err := ix.HeaderRuns()
		if err != nil {
			t.Fatal(err)
		}
		if len(runs) == 0 || len(ix.RunDigests) != len(runs) {
			t.Fatalf("%s: %d run digests for %d runs", name, len(ix.RunDigests), len(runs))
		}
		for i, r := range runs {
			start := ix.Frames[r.FirstFrame].Offset
			if got := Digest(sha256.Sum256(blob[start : start+r.CompSize(ix)])); got != ix.RunDigests[i] {
				t.Fatalf("%s: run %d: digest %s, blob bytes %s", name, i, ix.RunDigests[i], got)
			}
			fr, err := ix.SplitRun(r, blob[start:start+r.CompSize(ix)])
			if err != nil {
				t.Fatal(err)
			}
			if err := ix.CheckRunDigest(i, r, fr); err != nil {
				t.Fatalf("%s: run %d: %v", name, i, err)
			}
			// One byte changed in the run's frames: not the run's bytes.
			bad := bytes.Clone(blob[start : start+r.CompSize(ix)])
			bad[len(bad)-1] ^= 1
			fr, _ = ix.SplitRun(r, bad)
			var de *RunDigestError
			if err := ix.CheckRunDigest(i, r, fr); !errors.As(err, &de) || de.Run != i {
				t.Fatalf("%s: run %d with a byte changed: %v", name, i, err)
			}
		}
		c, err := VerifyLayer(bytes.NewReader(blob), ix, res.IndexOffset)
		if err != nil || c.Runs != len(runs) {
			t.Fatalf("%s: VerifyLayer = %+v, %v; want %d runs checked", name, c, err, len(runs))
		}
	}
}

// TestIndexVersion1 reads an index without run digests (version 1, as lazypull wrote
// before): it decodes with none, its runs are checked against nothing, and it encodes as
// version 1 again.
func TestIndexVersion1(t *testing.T) {
	blob, res := convert(t, edgeCases(t))
	ix := freshIndex(t, blob, res)
	ix.RunDigests = nil
	p, err := ix.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if v := binary.LittleEndian.Uint16(p[8:]); v != IndexVersion1 {
		t.Fatalf("index without run digests: version %d", v)
	}
	ix1, err := DecodeIndex(p)
	if err != nil {
		t.Fatal(err)
	}
	if ix1.RunDigests != nil {
		t.Fatalf("version 1 index decoded with run digests %v", ix1.RunDigests)
	}
	runs, _, err := ix1.HeaderRuns()
	if err != nil {
		t.Fatal(err)
	}
	if err := ix1.CheckRunDigest(0, runs[0], [][]byte{[]byte("anything")}); err != nil {
		t.Fatalf("version 1: %v", err)
	}
	if c, err := VerifyLayer(bytes.NewReader(blob), ix1, res.IndexOffset); err != nil || c.Runs != 0 {
		t.Fatalf("VerifyLayer of a version 1 index = %+v, %v", c, err)
	}
}

// TestRunDigestsRefused: a version 2 index with other run digests than the blob's is
// refused by VerifyLayer naming the run; one with more or fewer digests than runs does not
// decode.
func TestRunDigestsRefused(t *testing.T) {
	blob, res := convert(t, edgeCases(t))
	ix := freshIndex(t, blob, res)
	ix.RunDigests[1][0] ^= 1
	var de *RunDigestError
	if _, err := VerifyLayer(bytes.NewReader(blob), ix, res.IndexOffset); !errors.As(err, &de) || de.Run != 1 {
		t.Fatalf("VerifyLayer with run 1's digest changed: %v", err)
	}
	body, err := ix.encodeBody()
	if err != nil {
		t.Fatal(err)
	}
	// The run count (one byte here) and digests end the body: one digest fewer.
	n := len(ix.RunDigests)
	cut := bytes.Clone(body[:len(body)-32*n-1])
	cut = binary.AppendUvarint(cut, uint64(n-1))
	for _, d := range ix.RunDigests[:n-1] {
		cut = append(cut, d[:]...)
	}
	if _, err := decodeBody(cut, 1<<30, IndexVersion2); err == nil {
		t.Fatal("a body with a run digest missing decoded")
	}
	if _, err := decodeBody(body, 1<<30, IndexVersion1); err == nil {
		t.Fatal("a version 2 body decoded as version 1")
	}
	if _, err := decodeBody(body, 1<<30, IndexVersion2); err != nil {
		t.Fatal(err)
	}
	ix.RunDigests = ix.RunDigests[:n-1]
	if _, err := ix.Encode(); err == nil {
		t.Fatal("an index with a run digest missing encoded")
	}
}
