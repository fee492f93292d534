// Package storage holds a storage daemon's local segment stores, the
// implementations of torus.Store, and small helpers the daemon needs at
// start: ParseSize and FormatSize for its --size flag, LoadOrCreateID for
// its stable peer ID.
//
// Both stores pass storage/storagetest, the conformance suite of the
// torus.Store contract; a new implementation must run it too.
//
// # Memory
//
// NewMemory returns a store that keeps segments in memory, for unit tests of
// other packages. SetFault injects errors into any operation; Crash
// simulates a power loss, after which only synced bytes survive (a clean
// cut); CrashTorn(seed) one that also leaves torn tails past the synced
// bytes (part of them, zeros or garbage), as real disks do.
//
// # Disk
//
// OpenDisk opens the real store in a data dir:
//
//	<Dir>/LOCK                               exclusive flock while open ("pid N")
//	<Dir>/peer-id                            the daemon's ID (LoadOrCreateID)
//	<Dir>/segments/v<volume>/<SegmentID>     one file per segment, e.g. v7-e2-s3-k0
//	<Dir>/segments/v<volume>/<SegmentID>.failed   failure mark: the store stopped trusting that file
//	<Dir>/quarantine/<SegmentID>.<n>         a marked copy taken out of service at open (n = 1, 2, ...)
//	<Dir>/quarantine/<SegmentID>.<n>.reason  its failure mark (the error, length and synced length)
//
// A segment file holds exactly the bytes appended to the segment, nothing
// else: no header, no checksum, no padding. Append is a pwrite at the end
// of the file, after checking that the offset is the segment's length (a
// retry compares the bytes already there). Sync is fdatasync, plus an fsync
// of the volume directory the first time after the file was created. Delete
// is unlink plus an fsync of the directory. ReadAt is pread, concurrent with
// appends.
//
// Open files are kept in a bounded LRU cache (DiskConfig.MaxOpenFiles).
// Each segment has its own lock, so appends to different segments run in
// parallel and a Sync does not hold up appends to its segment.
//
// Capacity is the sum of the segments' lengths, counted at open by scanning
// the directories. An append that would exceed DiskConfig.Capacity fails
// with torus.ErrNoSpace before writing anything; so does one that hits
// ENOSPC or EDQUOT from the filesystem, and whatever part of it was written
// is truncated away.
//
// # Crash safety: what the store guarantees and what it does not
//
// The store guarantees that, after a process crash (SIGKILL) or a power
// loss, reopening the data dir yields every segment at its length on disk,
// and that every byte covered by a successful Sync is intact and in place.
// After a SIGKILL nothing is lost at all: the kernel still holds the
// unsynced bytes, and OpenDisk makes them durable with one syncfs, so
// Synced = Length for every segment found.
//
// The store does not guarantee anything about bytes appended but not
// synced when the power went: the file may be shorter than the appends, or
// its tail may hold zeros or garbage (a torn write), and a segment never
// synced may be missing. The store keeps no checksums and cannot tell. That
// split of responsibility is deliberate: the volume layer frames every
// record with a header CRC and per-block CRCs (docs/design/data-path.md), and
// a reader of a segment takes its valid prefix, ending at the first record
// that does not verify. Torn tails are therefore cut by record validation,
// not by the store. Bytes past a sealed segment's recorded length are ignored
// by everyone.
//
// A failed fdatasync leaves the unsynced bytes of a segment in an unknown
// state (Linux reports a writeback error once, to the descriptors open at
// the time, then forgets it), so the store fails every further Sync and
// Append of that segment with an error wrapping torus.ErrCorrupt; the writer
// seals it and moves to a new one. (So does an append that failed and could
// not be truncated away.) The store also writes the failure mark
// <SegmentID>.failed next to the file, and makes it durable (fdatasync of
// the mark, fsync of the directory) before the failed Sync returns. Reads of
// the segment go on until the store is closed; the volume layer's CRCs judge
// the bytes.
//
// At the next open, a file with a mark is not trusted: after a restart a
// fresh descriptor reports no error and the size looks right, but the
// bytes on disk may be stale, zeros or short. The copy is treated as lost:
// the file moves to <Dir>/quarantine/<SegmentID>.<n> and the mark beside it
// as <SegmentID>.<n>.reason (each move durable before the next, so a crash
// during the open leaves the mark in place or the file out of the segment
// dir), and the open logs it at Error. Stat, ReadAt and List then report the
// segment missing (ErrNotExist), so healing copies it again from a good
// replica under the same name. Quarantined bytes do not count in Usage and
// are never deleted by the store: an operator inspects and removes them.
//
// If the mark itself cannot be written (EIO, a full filesystem), the store
// logs at Error, keeps refusing Append and Sync of the segment, writes the
// mark again on each refused call, and Close tries once more and fails with
// an error wrapping torus.ErrCorrupt that names the segments still without a
// mark: after a restart their copies would be served as good. Deleting the
// segment (the writer or the GC) ends the matter; its mark is removed after
// its file, durably in that order.
//
// All file access goes through internal/vfs. The tests run the store on
// vfs.MemFS and cut the power at random points (MemFS.Crash keeps only
// synced file contents and fsynced directory entries, optionally with torn
// tails; MemFS.CrashTorn also zeroes tails or fills them with garbage),
// checking the guarantees above; a SIGKILL test does the same with a real
// process on a real filesystem.
//
// A data dir is used by one process at a time: OpenDisk fails with a
// *DirLockedError (matching torus.ErrLocked) naming the dir and the holder
// while another store has it open.
package storage
