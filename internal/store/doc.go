// Package store is the node-wide content-addressed store that lazy mounts read through.
//
// One Store (one directory, DefaultDir unless configured) serves every layer of every image
// on the node. Everything in it is keyed by the sha256 of its content, which is what the
// layer index names (format.Entry.Digest, format.Chunk.Digest), so a file that two layers
// or two images share is stored once, and a chunk that any stored object holds is read
// (or copied) locally, never fetched again. The store imports lazypull/format and nothing
// else of ours: it declares the Source it fills from, and the fetch package implements it.
//
// # Use
//
//	s, err := store.Open(dir, store.WithMaxBytes(20<<30), store.WithLogger(log))
//	f, err := store.FileOf(layer.Index, entry)  // digest, size, chunks of one file
//	n, err := s.ReadAt(ctx, src, f, p, off)      // serve a FUSE read
//	err = s.ReadAhead(ctx, src, f, off, n)       // fetch a range ahead of a reader, no copy
//	r, err := s.OpenLocal(f)                     // complete local copy, for passthrough
//	err = s.Fill(ctx, src, files...)             // prefetch: make files complete
//	lease := s.NewLease(); lease.Pin(f)          // keep what a mount serves
//
// ReadAt serves what is local and fetches exactly the missing chunks that cover the range,
// all in one Source.Fetch call, so that the fetcher can coalesce them; a chunk that another
// read is fetching is waited for, never fetched twice (an in-flight map keyed by chunk
// digest). Each frame is decompressed and checked against its chunk's sha256
// (format.Chunk.Decode) before anything is served or stored; a frame that fails is an
// error wrapping ErrCorrupt and naming the chunk, and nothing of it is stored. Verified
// chunks are served at once and stored by background writers, so a read never waits for
// the disk; a chunk that cannot be stored (a full disk) is served from memory all the
// same, and the store logs one warning.
//
// # On disk
//
//	<dir>/store-version            "lazypull store 1": the mark of a store; another version is refused
//	<dir>/store.lock               flock'ed by the process that has the store open
//	<dir>/objects/<hh>/<hex>       content whose sha256 is <hex>; <hh> = <hex>[:2]; mode 0444
//	<dir>/meta/<hex>               a manifest or layer index whose sha256 is <hex> (meta.go)
//	<dir>/chunks.log               where the chunks of multi-chunk objects lie (chunklog.go)
//	<dir>/tmp/object-N, chunks-N.log   objects (files being filled too) and chunk logs being written
//
// A directory without store-version is made a store only if it is empty (but for
// lost+found, and the lock and temp file of an interrupted first Open); anything else is
// refused before Open writes or removes anything in it: a store pointed at /var by mistake
// refuses it instead of emptying /var/tmp. Every store a lazypull wrote carries the file
// (since the first version), so no directory is adopted without it.
//
// An object is either a complete file or one chunk of a file that is only partly local. A
// one-chunk file and its chunk are the same bytes, so the same object; small files, the
// most common, are just that. When every chunk of a multi-chunk file is local (in chunk
// objects, or inside other complete files), the file is assembled: its chunks are copied
// into a new object (copy_file_range: a filesystem with reflinks shares the blocks), the
// whole is checked against the file's digest, where each chunk lies in it is appended to
// the chunk log, and the chunk objects it now holds are dropped. A chunk held inside a
// complete file is found through the chunk log's index (chunk digest -> object, offset),
// rebuilt in memory on Open from that one sequential file, not by reading any object.
//
// Chunks fetched to make a file complete (Fill) or ahead of a sequential reader
// (ReadAhead) are not objects of their own: a multi-chunk file's are written straight into
// one temp file of its size (tmp/object-N, a "filling", direct.go) at their offsets, each
// verified (Decode) before it is written. The file's sha256 is computed over the prefix of
// chunks present as it grows; when the last chunk is in (the chunks it lacks copied from
// where they lie, as an assembly would), the file is checked against its digest, fsynced
// once, recorded in the chunk log and renamed to its name: no create, fsync, copy or
// unlink per chunk. Until then its chunks are read from the temp file, found by other
// files through the same index, and its bytes count against the bound; which chunks it
// holds is kept in memory only, so a filling does not outlive the process (Close removes
// it, Open removes what a crash left) and a restart fetches what it held again.
//
// The store touches nothing but these names, and of the temp files removes only those named
// as it names its own (tmp/object-N, tmp/chunks-N.log, meta/.<hex>-N, .store-version-N), so
// the directory may hold other state (the daemon's stats.json).
//
// # Crash safety
//
// The store's one invariant: a file named objects/<hh>/<hex> holds exactly the bytes
// whose sha256 is <hex>, and a chunk log record (whose checksum matches) says truly where
// chunks lie inside an object of that name. It holds across kill -9 and power loss:
//
//   - An object is written under tmp/, checked (a chunk by Decode, an assembled or filled file by its
//     digest), fsynced, made read-only, and only then renamed to its name. A process
//     that dies earlier leaves a temp file, which Open deletes; a name never points at a
//     partial or unsynced file (metadata is written the same way, in meta/). Fetched chunks are written in batches whose write-back
//     starts together before each is fsynced, so a batch costs about one journal commit.
//     The directory is not fsynced after the rename: a rename that a power loss undoes
//     leaves only the temp file, and costs a fetch.
//   - A chunk log record is appended and fsynced before its object is renamed into place.
//     A record whose object never appeared is ignored (and compacted away); a record torn
//     by a crash fails its checksum and is cut off. A record is only trusted for an object
//     whose size it matches.
//   - Losing anything is safe: this is a cache. A rename, an eviction or a dropped part that
//     a power loss undoes costs a fetch, never a wrong byte. A crash between an assembly
//     and the removal of its parts leaves duplicates, which Open drops.
//   - Open removes what is not named like an object (and empty files that are not the
//     empty object), and refuses a store of another version or one in use by another
//     process. Verify (or WithVerifyOnOpen) rehashes everything, for damage from outside
//     the store: a failing disk, a hand edit.
//
// Objects written by this package are verified before they are named, and not rehashed
// when read: reads of local data run at the speed of the filesystem.
//
// # Size and eviction
//
// WithMaxBytes bounds the bytes of objects and metadata together (meta/ holds manifests and
// indexes, which count like objects and are evicted in the same LRU order; their read or
// write is a use; Stats.Bytes includes them, Stats.MetaBytes says how much they are). Past
// it, the least recently used objects and metadata that no Lease pins and no read is using
// are evicted; access times are kept in memory and
// written to the objects' mtimes at most hourly, which is the order a restart begins with.
// Pinned bytes may take the store past its bound (it logs why). An evicted file that a
// passthrough mount still has open stays readable through that descriptor (Linux frees it
// on the last close); its bytes no longer count. Prune evicts down to a size on demand.
// Stats and Collectors (Prometheus, for a registry of the caller's) report objects, bytes,
// hits, misses, bytes fetched, evictions and errors.
//
// Assembly needs room for the file beside its chunk objects until they are dropped: on a
// filesystem without reflinks, twice the file for a moment.
package store
