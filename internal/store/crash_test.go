package store

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lazypull/format"
	"lazypull/internal/testutil"
)

// What a process that died leaves behind is cleaned up by Open, and the store then serves
// every file correctly, fetching only what it did not have.
func TestReopenCleansLeftovers(t *testing.T) {
	dir := t.TempDir()
	l := buildLayer(t, mixedFiles(61)...)
	src := newSource(l)
	s := openStore(t, dir)
	var complete []File
	for _, name := range l.names {
		if name != "many-chunks" {
			complete = append(complete, l.files[name])
		}
	}
	if err := s.Fill(context.Background(), src, complete...); err != nil {
		t.Fatal(err)
	}
	partial := l.files["many-chunks"]
	for _, c := range partial.Chunks[:len(partial.Chunks)/2] {
		if _, err := s.ReadAt(context.Background(), src, partial, make([]byte, 1), c.FileOffset); err != nil {
			t.Fatal(err)
		}
	}
	s.idle()
	before := s.Stats()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, chunkLogName)
	logInfo, err := os.Stat(logPath)
	if err != nil {
		t.Fatal(err)
	}

	// The debris of a crash, and things that were never ours.
	write := func(rel string, b []byte) { testutil.WriteFile(t, filepath.Join(dir, rel), b, 0o600) }
	someHex := hex.EncodeToString(testutil.RandBytes(1, 32))
	write("tmp/object-123456", []byte("half an obj"))
	write("tmp/chunks-99.log", []byte("LZPCHLOG"))
	write("objects/zz/whatever", []byte("x"))
	write("objects/stray-file", []byte("x"))
	write("objects/ab/not-an-object", []byte("x"))
	write("objects/00/"+someHex, []byte("wrong directory"))
	write("objects/"+someHex[:2]+"/"+someHex, nil) // empty, but not the empty digest
	// A chunk object that a complete file already holds: a crash between an assembly's
	// rename and the removal of its parts.
	few := l.files["few-chunks"]
	dup := few.Chunks[1]
	write(strings.TrimPrefix(s.objectPath(dup.Digest), dir+"/"), l.data["few-chunks"][dup.FileOffset:dup.FileOffset+dup.Size])
	// A chunk log record torn by a crash.
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	torn := appendRecord(nil, recordOf(few))
	if _, err := f.Write(torn[:len(torn)-7]); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()

	lg, logs := testutil.NewLog(t)
	s2 := openStore(t, dir, WithLogger(lg))
	if ents, _ := os.ReadDir(filepath.Join(dir, tmpName)); len(ents) != 0 {
		t.Errorf("tmp/ not emptied: %v", ents)
	}
	onDisk := dirFiles(t, filepath.Join(dir, objectsName))
	for _, p := range onDisk {
		if strings.Contains(p, "not-an-object") || strings.Contains(p, "zz") || strings.Contains(p, "stray") || strings.Contains(p, someHex) {
			t.Errorf("garbage left: %s", p)
		}
	}
	after := s2.Stats()
	if after.Objects != before.Objects || after.Bytes != before.Bytes || len(onDisk) != after.Objects {
		t.Errorf("reopened: %d objects (%d on disk), %d bytes; before: %d, %d", after.Objects, len(onDisk), after.Bytes, before.Objects, before.Bytes)
	}
	if after.Chunks != before.Chunks {
		t.Errorf("chunk locations: %d after reopening, %d before", after.Chunks, before.Chunks)
	}
	if st, _ := os.Stat(logPath); st.Size() != logInfo.Size() {
		t.Errorf("chunk log is %d bytes, want its torn tail cut back to %d", st.Size(), logInfo.Size())
	}
	for _, want := range []string{"removed temp files", "not an object", "torn", "dropped chunk objects"} {
		if logs.Count(want) == 0 {
			t.Errorf("log does not mention %q:\n%s", want, logs)
		}
	}
	if r, err := s2.Verify(context.Background()); err != nil || r.Bad != 0 || r.BadChunks != 0 || r.Chunks == 0 {
		t.Fatalf("verify after reopening: %+v, %v", r, err)
	}
	src2 := newSource(l)
	for _, name := range l.names {
		if got := readAll(t, s2, src2, l.files[name], 100_000); !bytes.Equal(got, l.data[name]) {
			t.Fatalf("%s differs after reopening", name)
		}
	}
	if _, chunks := src2.counts(); chunks != len(partial.Chunks)-len(partial.Chunks)/2 {
		t.Errorf("fetched %d chunks after reopening, want the %d never fetched", chunks, len(partial.Chunks)-len(partial.Chunks)/2)
	}
}

// Damage from outside (a bad disk, a hand edit) is found by Verify (or WithVerifyOnOpen),
// dropped, and fetched again.
func TestVerifyDropsDamage(t *testing.T) {
	dir := t.TempDir()
	l := buildLayer(t, mixedFiles(62)...)
	s := openStore(t, dir)
	all := l.all()
	if err := s.Fill(context.Background(), newSource(l), all...); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	victim := l.files["many-chunks"]
	p := s.objectPath(victim.Digest)
	b, _ := os.ReadFile(p)
	b[len(b)/3] ^= 1
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s2 := openStore(t, dir, WithVerifyOnOpen())
	if _, ok := s2.LocalPath(victim); ok {
		t.Fatal("damaged object kept")
	}
	src := newSource(l)
	for _, name := range l.names {
		if got := readAll(t, s2, src, l.files[name], 1<<20); !bytes.Equal(got, l.data[name]) {
			t.Fatalf("%s differs", name)
		}
	}
	if _, chunks := src.counts(); chunks == 0 || chunks > len(victim.Chunks) {
		t.Errorf("fetched %d chunks; want the damaged file's (%d at most)", chunks, len(victim.Chunks))
	}
}

// crashChildEnv names the directory a child process of TestKilledWhileWriting works in.
const crashChildEnv = "LAZYPULL_STORE_CRASH_DIR"

const crashReady = "LAZYPULL-STORE-CHILD-READY"

func crashFiles() []tfile {
	files := mixedFiles(81)
	for i := range 12 {
		files = append(files, tfile{fmt.Sprintf("more/%d", i), testutil.RandBytes(uint64(100+i), 10_000+i*90_000)})
	}
	return files
}

// TestCrashChild is the child of TestKilledWhileWriting: it writes to the store without
// pause (reads, reads ahead, fills, prunes, under a small bound) until it is killed.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashChildEnv)
	if dir == "" {
		t.Skip("the child process of TestKilledWhileWriting")
	}
	blob, err := os.ReadFile(filepath.Join(dir, "layer"))
	if err != nil {
		t.Fatal(err)
	}
	l := openLayer(t, blob, crashFiles())
	src := newSource(l)
	s, err := Open(filepath.Join(dir, "store"), WithMaxBytes(2<<20))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0))
	for i := 0; ; i++ {
		if i == 3 {
			fmt.Println(crashReady)
		}
		name := l.names[r.IntN(len(l.names))]
		f := l.files[name]
		switch op := r.IntN(12); {
		case op < 6:
			off := r.Int64N(f.Size + 1)
			p := make([]byte, r.IntN(400_000)+1)
			k, err := s.ReadAt(ctx, src, f, p, off)
			if k == 0 && err != nil && off < f.Size {
				t.Fatal(err)
			}
			if !bytes.Equal(p[:k], l.data[name][off:off+int64(k)]) {
				t.Fatalf("%s at %d: wrong bytes", name, off)
			}
		case op < 8: // read ahead, into the file's filling
			off := r.Int64N(f.Size + 1)
			n := min(r.Int64N(2<<20), f.Size-off)
			if err := s.ReadAhead(ctx, src, f, off, n); err != nil {
				t.Fatal(err)
			}
		case op < 11:
			if err := s.Fill(ctx, src, f, l.files[l.names[r.IntN(len(l.names))]]); err != nil {
				t.Fatal(err)
			}
		default:
			if _, err := s.Prune(ctx, r.Int64N(2<<20)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// A process killed (SIGKILL) at a random moment while it writes leaves a store that opens,
// has only objects that match their digests, and serves every file right.
func TestKilledWhileWriting(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills child processes")
	}
	dir := t.TempDir()
	files := crashFiles()
	l := buildLayer(t, files...)
	if err := os.WriteFile(filepath.Join(dir, "layer"), l.blob, 0o600); err != nil {
		t.Fatal(err)
	}
	storeDir := filepath.Join(dir, "store")
	r := rand.New(rand.NewPCG(5, 5))
	for round := range 8 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		var before []string
		ready := false
		for !ready && sc.Scan() {
			ready = sc.Text() == crashReady
			before = append(before, sc.Text())
		}
		if !ready {
			_ = cmd.Wait()
			t.Fatalf("round %d: child never got ready:\n%s\n%s", round, strings.Join(before, "\n"), stderr.String())
		}
		var after bytes.Buffer
		drained := make(chan struct{})
		go func() { // keep draining, so the child never blocks on a full pipe
			_, _ = io.Copy(&after, out)
			close(drained)
		}()
		wait := time.Duration(20+r.IntN(400)) * time.Millisecond
		time.Sleep(wait)
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		<-drained
		err = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(interface{ Signaled() bool }); !ok || !ws.Signaled() {
			t.Fatalf("round %d: child did not die by the signal (%v): it failed on its own:\n%s\n%s", round, err, after.String(), stderr.String())
		}

		lg, logs := testutil.NewLog(t)
		s, err := Open(storeDir, WithLogger(lg))
		if err != nil {
			t.Fatalf("round %d: reopen: %v", round, err)
		}
		res, err := s.Verify(context.Background())
		if err != nil || res.Bad != 0 || res.BadChunks != 0 {
			t.Fatalf("round %d: verify after kill: %+v, %v\n%s", round, res, err, logs)
		}
		st := s.Stats()
		if onDisk := dirFiles(t, filepath.Join(storeDir, objectsName)); len(onDisk) != st.Objects {
			t.Fatalf("round %d: %d files under objects/, %d objects indexed", round, len(onDisk), st.Objects)
		}
		if ents, _ := os.ReadDir(filepath.Join(storeDir, tmpName)); len(ents) != 0 {
			t.Fatalf("round %d: tmp/ not emptied", round)
		}
		t.Logf("round %d: killed %v after it got going: %d objects, %d bytes, %d chunk locations checked; temp files left: %v", round, wait, st.Objects, st.Bytes, res.Chunks, logs.Count("removed temp files") > 0)
		src := newSource(l)
		for _, name := range l.names {
			if got := readAll(t, s, src, l.files[name], 256<<10); !bytes.Equal(got, l.data[name]) {
				t.Fatalf("round %d: %s differs", round, name)
			}
		}
		s.idle()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// The chunk log: records round-trip; a torn or damaged tail is cut off, nothing before it
// is lost; compaction keeps what is live.
func TestChunkLog(t *testing.T) {
	dir := t.TempDir()
	lg, _ := testutil.NewLog(t)
	p := filepath.Join(dir, "chunks.log")
	l, recs, err := openChunkLog(p, dir, lg)
	if err != nil || len(recs) != 0 {
		t.Fatal(recs, err)
	}
	mk := func(seed uint64, n int) chunkRecord {
		r := chunkRecord{object: format.Digest(testutil.RandBytes(seed, 32))}
		for i := range n {
			r.chunks = append(r.chunks, recChunk{format.Digest(testutil.RandBytes(seed+uint64(i)+1, 32)), int64(1000 + i)})
		}
		return r
	}
	want := []chunkRecord{mk(1, 2), mk(10, 300), mk(1000, 5)}
	for _, r := range want {
		if err := l.append(r); err != nil {
			t.Fatal(err)
		}
	}
	_ = l.close()
	check := func(wantN int) {
		t.Helper()
		l, got, err := openChunkLog(p, dir, lg)
		if err != nil {
			t.Fatal(err)
		}
		_ = l.close()
		if len(got) != wantN {
			t.Fatalf("%d records, want %d", len(got), wantN)
		}
		for i := range got {
			if got[i].object != want[i].object || len(got[i].chunks) != len(want[i].chunks) || got[i].chunks[len(got[i].chunks)-1] != want[i].chunks[len(want[i].chunks)-1] {
				t.Fatalf("record %d differs", i)
			}
		}
	}
	check(3)
	// Damage in the last record: it goes, the others stay.
	b, _ := os.ReadFile(p)
	b[len(b)-3] ^= 0xff
	_ = os.WriteFile(p, b, 0o600)
	check(2)
	// A torn length prefix at the end.
	f, _ := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	_, _ = f.Write([]byte{1, 2, 3})
	_ = f.Close()
	check(2)
	// Compaction.
	l, _, err = openChunkLog(p, dir, lg)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.compact(want[1:2]); err != nil {
		t.Fatal(err)
	}
	if err := l.append(want[2]); err != nil {
		t.Fatal(err)
	}
	_ = l.close()
	want = want[1:]
	check(2)
	// Not a chunk log at all: started anew, with a warning.
	_ = os.WriteFile(p, []byte("garbage garbage garbage"), 0o600)
	want = nil
	check(0)
}
