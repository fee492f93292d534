// Package volume implements Torus block volumes on top of replicated,
// append-only segments: the data path of docs/design/data-path.md.
//
// The pure parts need no I/O and are tested and fuzzed on their own:
//
//   - record.go: the record format of data segments (AppendWriteRecord,
//     AppendZeroRecord, AppendMoveRecord) and ScanRecords, which finds the valid prefix of a
//     segment's bytes.
//   - index.go: Index, the block → {segment slot, data offset, CRC32C} map
//     held in memory, in lazily allocated chunks of 256 blocks, with
//     Extents queries and live-bytes-per-segment accounting.
//   - checkpoint.go: EncodeCheckpoint and DecodeCheckpoint, the serialized
//     index with its segment table.
//
// Volume (volume.go) ties them to a torus.Metadata (the head, the lock, the
// epoch) and a torus.PeerPool (the segment replicas). Open a writer with
// Open; it implements torus.Device. A writer locks the volume, fences every
// ring member with its new epoch, rebuilds the index (checkpoint, sealed
// segments, the longest valid prefix of the open segment) and names a new
// open segment in the head before writing to it. Writes are batched by one
// appender goroutine (group commit) into one Append per replica; Flush syncs
// every replica of every segment with unsynced appends and needs no etcd
// request. Reads go to the first replica in ring order that returns data
// matching the index's CRC.
//
// Compaction (compact.go) runs after each checkpoint: the live blocks of
// sealed segments under 25 % live that no snapshot names are rewritten as
// move records, which apply only to blocks still mapped to their source, so
// a racing client write is never undone. Snapshot freezes the head
// (checkpoint, no open segment); SnapshotClosed does it for a volume without
// a writer; LiveSegments gives the daemons' GC sweep the set to keep.
//
// Errors wrap the torus sentinels: ErrOutOfRange for I/O outside the
// volume, ErrReadOnly for writes to a read-only open, ErrFenced once a newer
// writer has taken the volume or the session is lost, ErrUnavailable when
// too few replicas answer, ErrCorrupt when no replica has a block that
// matches its checksum, ErrClosed after Close, and *torus.LockedError
// (ErrLocked) when another writer holds the volume.
//
// Logging levels: Debug for per-segment events (roll, seal, checkpoint),
// Warn for a replica dropped or a read retried elsewhere, Error for possible
// data loss (a sealed segment shorter than its recorded length on every
// replica).
package volume
