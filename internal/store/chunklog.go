package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"lazypull/format"
)

// The chunk log says which chunks lie where inside multi-chunk objects, so that a chunk any
// complete file holds is found without fetching it. It is append-only; each record is
// checksummed, so a record torn by a crash is found and cut off at the next Open.
//
//	header  "LZPCHLOG" | uint32 LE version (1) | uint32 LE 0
//	record  uint32 LE len(body) | uint32 LE crc32c(body) | body
//	body    object digest [32] | uvarint n | n x (chunk digest [32] | uvarint size)
//
// A record's chunks are in file order; each one's offset is the sum of the sizes before
// it, and the sizes add up to the object's size. Records of objects that no longer exist
// are ignored, and dropped when Open compacts the log.
const (
	chunkLogMagic   = "LZPCHLOG"
	chunkLogVersion = 1
	chunkLogHeader  = 16
	// maxRecordBody bounds one record: a file of MaxChunks chunks.
	maxRecordBody = 32 + binary.MaxVarintLen64 + maxChunksPerFile*(32+binary.MaxVarintLen64)
	// maxChunksPerFile bounds the chunks of one file the log records (a 64 GiB file of
	// 32 KiB chunks); bigger files are still stored, their chunks just not indexed.
	maxChunksPerFile = 1 << 21
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type chunkRecord struct {
	object format.Digest
	chunks []recChunk
}

type recChunk struct {
	digest format.Digest
	size   int64
}

type chunkLog struct {
	path, tmpDir string
	log          *slog.Logger

	mu     sync.Mutex
	f      *os.File
	size   int64 // bytes of good records: an append that fails is cut back to it
	broken error // set when a failed append could not be cut back
}

// openChunkLog reads the log, cutting off a torn tail, and opens it for appending.
func openChunkLog(path, tmpDir string, log *slog.Logger) (*chunkLog, []chunkRecord, error) {
	l := &chunkLog{path: path, tmpDir: tmpDir, log: log}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && len(b) == 0) {
		if err := l.compact(nil); err != nil {
			return nil, nil, err
		}
		return l, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("chunk log: %w", err)
	}
	if len(b) < chunkLogHeader || string(b[:8]) != chunkLogMagic {
		log.Warn("store: chunk log has no valid header; starting a new one (chunks inside complete files are found again as those files are read)", "path", path)
		return l, nil, l.compact(nil)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != chunkLogVersion {
		return nil, nil, fmt.Errorf("chunk log %s: version %d, this lazypull reads version %d", path, v, chunkLogVersion)
	}
	recs, good, why := parseRecords(b[chunkLogHeader:])
	end := int64(chunkLogHeader + good)
	f, err := os.OpenFile(path, os.O_RDWR, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("chunk log: %w", err)
	}
	if end < int64(len(b)) {
		log.Warn("store: cutting off the damaged tail of the chunk log (a write torn by a crash)", "path", path, "at", end, "bytes", int64(len(b))-end, "why", why)
		err := f.Truncate(end)
		if err == nil {
			err = f.Sync()
		}
		if err != nil {
			_ = f.Close()
			return nil, nil, fmt.Errorf("chunk log: cut off torn tail: %w", err)
		}
	}
	if _, err := f.Seek(end, 0); err != nil {
		_ = f.Close()
		return nil, nil, fmt.Errorf("chunk log: %w", err)
	}
	l.f, l.size = f, end
	return l, recs, nil
}

// parseRecords returns the good records and the length they take; why says what stopped
// it before the end.
func parseRecords(b []byte) (recs []chunkRecord, n int, why string) {
	for n < len(b) {
		if len(b)-n < 8 {
			return recs, n, "short record header"
		}
		blen := int(binary.LittleEndian.Uint32(b[n:]))
		sum := binary.LittleEndian.Uint32(b[n+4:])
		if blen > maxRecordBody || blen > len(b)-n-8 {
			return recs, n, "record longer than the log"
		}
		body := b[n+8 : n+8+blen]
		if crc32.Checksum(body, castagnoli) != sum {
			return recs, n, "record checksum mismatch"
		}
		r, ok := decodeRecord(body)
		if !ok {
			return recs, n, "malformed record"
		}
		recs = append(recs, r)
		n += 8 + blen
	}
	return recs, n, ""
}

func decodeRecord(b []byte) (chunkRecord, bool) {
	var r chunkRecord
	if len(b) < 32 {
		return r, false
	}
	copy(r.object[:], b)
	b = b[32:]
	cnt, k := binary.Uvarint(b)
	if k <= 0 || cnt < 2 || cnt > uint64(len(b)/33) {
		return r, false
	}
	b = b[k:]
	r.chunks = make([]recChunk, cnt)
	for i := range r.chunks {
		if len(b) < 33 {
			return r, false
		}
		copy(r.chunks[i].digest[:], b)
		sz, k := binary.Uvarint(b[32:])
		if k <= 0 || sz == 0 || sz > format.MaxChunkSize {
			return r, false
		}
		r.chunks[i].size = int64(sz)
		b = b[32+k:]
	}
	return r, len(b) == 0
}

func appendRecord(dst []byte, r chunkRecord) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, 8)...)
	dst = append(dst, r.object[:]...)
	dst = binary.AppendUvarint(dst, uint64(len(r.chunks)))
	for _, c := range r.chunks {
		dst = append(dst, c.digest[:]...)
		dst = binary.AppendUvarint(dst, uint64(c.size))
	}
	body := dst[start+8:]
	binary.LittleEndian.PutUint32(dst[start:], uint32(len(body)))
	binary.LittleEndian.PutUint32(dst[start+4:], crc32.Checksum(body, castagnoli))
	return dst
}

func recordOf(f File) chunkRecord {
	r := chunkRecord{object: f.Digest, chunks: make([]recChunk, len(f.Chunks))}
	for i, c := range f.Chunks {
		r.chunks[i] = recChunk{digest: c.Digest, size: c.Size}
	}
	return r
}

// append writes one record and syncs it. A failed append is cut back off, so the log
// never holds garbage followed by good records.
func (l *chunkLog) append(r chunkRecord) error {
	if len(r.chunks) > maxChunksPerFile {
		return nil
	}
	b := appendRecord(nil, r)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.broken != nil {
		return fmt.Errorf("chunk log %s: %w", l.path, l.broken)
	}
	_, err := l.f.Write(b)
	if err == nil {
		err = l.f.Sync()
	}
	if err != nil {
		if terr := l.f.Truncate(l.size); terr != nil {
			l.broken = fmt.Errorf("unusable until the store is reopened: a failed append could not be cut off: %w", terr)
		} else if _, serr := l.f.Seek(l.size, 0); serr != nil {
			l.broken = fmt.Errorf("unusable until the store is reopened: %w", serr)
		}
		return fmt.Errorf("chunk log %s: append: %w", l.path, err)
	}
	l.size += int64(len(b))
	return nil
}

// compact replaces the log with the given records (temp + fsync + rename + fsync dir).
func (l *chunkLog) compact(recs []chunkRecord) error {
	b := make([]byte, chunkLogHeader, 4096)
	copy(b, chunkLogMagic)
	binary.LittleEndian.PutUint32(b[8:], chunkLogVersion)
	for _, r := range recs {
		b = appendRecord(b, r)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	f, err := os.CreateTemp(l.tmpDir, chunkLogTemp)
	if err != nil {
		return fmt.Errorf("chunk log: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = os.Rename(f.Name(), l.path)
	}
	if err == nil {
		err = syncDir(filepath.Dir(l.path))
	}
	if err != nil {
		_ = f.Close()
		_ = os.Remove(f.Name())
		return fmt.Errorf("chunk log: rewrite: %w", err)
	}
	// f now is the log: append to it.
	if l.f != nil {
		_ = l.f.Close()
	}
	l.f, l.size, l.broken = f, int64(len(b)), nil
	return nil
}

func (l *chunkLog) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
