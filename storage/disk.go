package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/vfs"
)

// DefaultMaxOpenFiles is the default bound of Disk's open-file cache.
const DefaultMaxOpenFiles = 256

// DefaultWritebackChunk is the default DiskConfig.WritebackChunk.
const DefaultWritebackChunk = 4 << 20

// DiskConfig configures OpenDisk.
type DiskConfig struct {
	// Dir is the data directory. It is created if missing. Segments live
	// in Dir/segments/v<volume>/<SegmentID.String()>; Dir/LOCK is held
	// with an exclusive flock while the store is open; copies the store
	// stopped trusting are moved to Dir/quarantine at open (see the
	// package doc).
	Dir string
	// Capacity is the most bytes the store holds (the sum of its segments'
	// lengths). Required, > 0. See ParseSize.
	Capacity int64
	// Logger receives the store's log. Nil discards it. Levels: Debug for
	// segment creation and deletion, Info for opening and closing, Warn
	// for unexpected files in the data dir, Error for a failed fsync, a
	// failed cleanup that may leave a segment inconsistent, a failure mark
	// that cannot be written, and a copy quarantined at open.
	Logger *slog.Logger
	// FS is the filesystem; nil means the real one (vfs.OS). Tests pass
	// one that loses power (vfs.MemFS) or fails on demand (vfs.Inject).
	FS vfs.FS
	// MaxOpenFiles bounds the cache of open segment files (idle ones; files
	// in use by an operation are not counted). 0 means
	// DefaultMaxOpenFiles.
	MaxOpenFiles int
	// WritebackChunk: each time a segment has this many bytes appended
	// since the last time, the store asks the kernel to start writing them
	// back (sync_file_range, vfs.Writebacker), so the Sync that seals a
	// segment finds little left to write instead of the whole segment:
	// the stall of a sequential stream at each seal. It makes nothing
	// durable; Sync does. 0 means DefaultWritebackChunk, < 0 never.
	WritebackChunk int64
}

// EnsureDefaults fills zero optional fields.
func (c *DiskConfig) EnsureDefaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.FS == nil {
		c.FS = vfs.OS
	}
	if c.MaxOpenFiles == 0 {
		c.MaxOpenFiles = DefaultMaxOpenFiles
	}
	if c.WritebackChunk == 0 {
		c.WritebackChunk = DefaultWritebackChunk
	}
}

// Validate checks the settings; errors wrap torus.ErrInvalid.
func (c DiskConfig) Validate() error {
	switch {
	case c.Dir == "":
		return fmt.Errorf("storage: data dir not set: %w", torus.ErrInvalid)
	case c.Capacity <= 0:
		return fmt.Errorf("storage: capacity %d must be > 0: %w", c.Capacity, torus.ErrInvalid)
	case c.MaxOpenFiles < 0:
		return fmt.Errorf("storage: max open files %d must be >= 0: %w", c.MaxOpenFiles, torus.ErrInvalid)
	}
	return nil
}

// DirLockedError reports that a data dir is held by another process (or
// another Disk in this process). It matches torus.ErrLocked with errors.Is.
type DirLockedError struct {
	Dir    string
	Holder string // what the holder wrote into the lock file, e.g. "pid 123"; may be empty
}

func (e *DirLockedError) Error() string {
	msg := fmt.Sprintf("storage: data dir %s is in use by another torusd", e.Dir)
	if e.Holder != "" {
		msg += " (" + e.Holder + ")"
	}
	return msg + ": flock on " + filepath.Join(e.Dir, "LOCK") + " is held"
}

// Is makes errors.Is(err, torus.ErrLocked) hold.
func (e *DirLockedError) Is(target error) bool { return target == torus.ErrLocked }

// Disk is the on-disk torus.Store: one file per segment in a data dir. It is
// safe for concurrent use: appends to different segments run in parallel,
// reads run concurrently with appends, and Sync of a segment does not block
// appends to it.
type Disk struct {
	dir      string
	segDir   string
	capacity int64
	log      *slog.Logger
	fs       vfs.FS
	lockFile io.Closer
	fds      *fdCache
	wbChunk  int64 // DiskConfig.WritebackChunk

	inflight sync.WaitGroup // operations running; Close waits for them

	mu      sync.Mutex // guards the fields below
	closed  bool
	used    int64 // bytes stored, plus bytes reserved by appends in progress
	segs    map[torus.SegmentID]*diskSegment
	volDirs map[uint64]bool // volume directories known to exist durably
}

// diskSegment is the state of one segment. A segment exists for callers
// when length > 0; an entry with length 0 is a placeholder made by an Append
// in progress.
type diskSegment struct {
	// mu serializes Append and Delete of the segment and the bookkeeping
	// of Sync. Readers do not take it: they read length atomically, and
	// bytes below length never change.
	mu     sync.Mutex
	length atomic.Int64
	synced atomic.Int64
	// gone is set (under mu) before s leaves Disk.segs, so before a new
	// incarnation of the segment can create its file. A reader that finds
	// it set after reading may have read the new incarnation's file and
	// must report the segment missing instead.
	gone atomic.Bool

	// Guarded by mu.
	file     bool  // the file exists
	dirDirty bool  // the file was created and its directory not yet fsynced
	failed   error // a sync failed: the file's contents are unknown
	wbFrom   int64 // appended bytes from here on have not been handed to writeback
	// The failure mark (a file named <segment>.failed next to the
	// segment's) may exist (marker) or is known to be durable (marked).
	// A failed segment whose mark is not durable would be served as good
	// after a restart, so every refused Append or Sync, and Close, try to
	// write it again.
	marker, marked bool
}

// markerSuffix ends the name of a segment's failure mark: the file
// <segment>.failed in the segment's directory says that the store stopped
// trusting the segment's file (an fdatasync of it failed, or a failed append
// could not be cut away). It holds a few lines of text for the operator;
// only its existence counts.
const markerSuffix = ".failed"

// quarantineName is the directory under Dir that receives, at open, the files
// of segments marked failed: <segment>.<n> (the bytes, as found) and
// <segment>.<n>.reason (the mark), n = 1, 2, ... per segment ID.
const quarantineName = "quarantine"

// reasonSuffix ends the name of a quarantined copy's reason file.
const reasonSuffix = ".reason"

var _ torus.Store = (*Disk)(nil)

// OpenDisk opens (creating if needed) the store in cfg.Dir. It takes an
// exclusive flock on Dir/LOCK (failing with a *DirLockedError if another
// process holds it), scans the segment files to learn each segment's length
// and the space used, and syncs the filesystem once so every byte found is
// durable. Empty segment files (left by a crash before the first write) are
// removed; files that are not segments are logged and ignored.
//
// The space used may exceed cfg.Capacity (the capacity was lowered); the
// store then opens, and appends fail with ErrNoSpace until space is freed.
func OpenDisk(ctx context.Context, cfg DiskConfig) (*Disk, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &Disk{
		dir:      cfg.Dir,
		segDir:   filepath.Join(cfg.Dir, "segments"),
		capacity: cfg.Capacity,
		log:      cfg.Logger.With("dir", cfg.Dir),
		fs:       cfg.FS,
		fds:      newFDCache(cfg.MaxOpenFiles),
		wbChunk:  cfg.WritebackChunk,
		segs:     make(map[torus.SegmentID]*diskSegment),
		volDirs:  make(map[uint64]bool),
	}
	if err := d.fs.MkdirAll(cfg.Dir); err != nil {
		return nil, fmt.Errorf("storage: creating data dir: %w", err)
	}
	if err := d.lock(); err != nil {
		return nil, err
	}
	if err := d.scan(ctx); err != nil {
		_ = d.lockFile.Close()
		return nil, err
	}
	if d.used > d.capacity {
		d.log.Warn("store holds more than its capacity; appends will fail until space is freed",
			"used", d.used, "capacity", d.capacity)
	}
	d.log.Info("store opened", "segments", len(d.segs), "used", d.used, "capacity", d.capacity)
	return d, nil
}

// lock takes the exclusive flock on Dir/LOCK.
func (d *Disk) lock() error {
	l, err := d.fs.Lock(filepath.Join(d.dir, "LOCK"), fmt.Sprintf("pid %d", os.Getpid()))
	var le *vfs.LockedError
	if errors.As(err, &le) {
		return &DirLockedError{Dir: d.dir, Holder: le.Holder}
	}
	if err != nil {
		return fmt.Errorf("storage: locking data dir %s: %w", d.dir, err)
	}
	d.lockFile = l
	return nil
}

// scan learns the segments on disk, then syncs the filesystem.
func (d *Disk) scan(ctx context.Context) error {
	if err := d.fs.MkdirAll(d.segDir); err != nil {
		return fmt.Errorf("storage: creating segment dir: %w", err)
	}
	vols, err := d.fs.ReadDir(d.segDir)
	if err != nil {
		return fmt.Errorf("storage: reading segment dir: %w", err)
	}
	for _, v := range vols {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("storage: opening %s: %w", d.dir, err)
		}
		vol, ok := parseVolumeDir(v.Name)
		if !ok || !v.Dir {
			d.log.Warn("ignoring unexpected entry in segment dir", "name", v.Name)
			continue
		}
		d.volDirs[vol] = true
		vdir := filepath.Join(d.segDir, v.Name)
		files, err := d.fs.ReadDir(vdir)
		if err != nil {
			return fmt.Errorf("storage: reading %s: %w", vdir, err)
		}
		// Failure marks first: a marked copy is quarantined, not served.
		marks := map[torus.SegmentID]bool{}
		copies := map[torus.SegmentID]bool{} // marked copies quarantined
		for _, f := range files {
			name, ok := strings.CutSuffix(f.Name, markerSuffix)
			if !ok || !f.Regular {
				continue
			}
			if id, err := torus.ParseSegmentID(name); err == nil && id.Volume == vol {
				marks[id] = true
			}
		}
		for _, f := range files {
			if name, ok := strings.CutSuffix(f.Name, markerSuffix); ok && f.Regular {
				if id, err := torus.ParseSegmentID(name); err == nil && marks[id] {
					continue
				}
			}
			id, err := torus.ParseSegmentID(f.Name)
			if err != nil || id.Volume != vol || !f.Regular {
				d.log.Warn("ignoring unexpected file in volume dir", "dir", vdir, "name", f.Name)
				continue
			}
			if marks[id] {
				if err := d.quarantine(id, true, f.Size); err != nil {
					return err
				}
				copies[id] = true
				continue
			}
			if f.Size == 0 {
				// Created by an append that crashed before writing
				// anything: the segment does not exist.
				d.log.Info("removing empty segment file", "segment", id)
				if err := d.fs.Remove(filepath.Join(vdir, f.Name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("storage: removing empty segment file: %w", err)
				}
				continue
			}
			s := &diskSegment{file: true}
			s.length.Store(f.Size)
			s.synced.Store(f.Size)
			d.segs[id] = s
			d.used += f.Size
		}
		// Marks left without a segment file: a crash came after the copy
		// was moved (or deleted) and before its mark was; finish the job
		// before a new copy can be created under the same name.
		for id := range marks {
			if copies[id] {
				continue
			}
			if err := d.quarantine(id, false, 0); err != nil {
				return err
			}
		}
	}
	// After a process crash, the bytes found may still be only in the page
	// cache. One syncfs makes them (and the directory entries) durable, so
	// Synced = Length holds for every segment found.
	if err := d.fs.SyncAll(d.segDir); err != nil {
		return fmt.Errorf("storage: syncfs %s: %w", d.segDir, err)
	}
	return nil
}

func parseVolumeDir(name string) (uint64, bool) {
	if !strings.HasPrefix(name, "v") {
		return 0, false
	}
	v, err := strconv.ParseUint(name[1:], 10, 64)
	if err != nil || "v"+strconv.FormatUint(v, 10) != name {
		return 0, false
	}
	return v, true
}

func (d *Disk) volumeDir(vol uint64) string {
	return filepath.Join(d.segDir, "v"+strconv.FormatUint(vol, 10))
}

func (d *Disk) path(seg torus.SegmentID) string {
	return filepath.Join(d.volumeDir(seg.Volume), seg.String())
}

func (d *Disk) markerPath(seg torus.SegmentID) string {
	return d.path(seg) + markerSuffix
}

// quarantine takes a marked copy out of service at open: the segment's file
// (when hasFile) moves to Dir/quarantine/<segment>.<n>, then its mark to
// <segment>.<n>.reason, each move made durable before the next, so a crash
// at any point leaves either the mark in place (and the next open goes on)
// or the copy out of the segment dir.
func (d *Disk) quarantine(seg torus.SegmentID, hasFile bool, size int64) error {
	qdir := filepath.Join(d.dir, quarantineName)
	wrap := func(err error) error {
		return fmt.Errorf("storage: quarantining %s (marked failed before the restart): %w", seg, err)
	}
	if err := d.fs.MkdirAll(qdir); err != nil {
		return wrap(err)
	}
	if err := d.syncDir(d.dir); err != nil {
		return wrap(err)
	}
	ents, err := d.fs.ReadDir(qdir)
	if err != nil {
		return wrap(err)
	}
	n := quarantineSlot(seg, ents, hasFile)
	mark := d.readMarker(seg)
	vdir := d.volumeDir(seg.Volume)
	data := filepath.Join(qdir, seg.String()+"."+strconv.Itoa(n))
	if hasFile {
		if err := d.fs.Rename(d.path(seg), data); err != nil {
			return wrap(err)
		}
		if err := d.syncDir(qdir); err != nil {
			return wrap(err)
		}
		if err := d.syncDir(vdir); err != nil {
			return wrap(err)
		}
	}
	if err := d.fs.Rename(d.markerPath(seg), data+reasonSuffix); err != nil {
		return wrap(err)
	}
	if err := d.syncDir(qdir); err != nil {
		return wrap(err)
	}
	if err := d.syncDir(vdir); err != nil {
		return wrap(err)
	}
	if hasFile {
		d.log.Error("segment copy quarantined: the store stopped trusting it before the restart (an fsync failed, or a failed append could not be cut away); it is not served, so healing copies it again from a good replica",
			"segment", seg, "bytes", size, "moved_to", data, "reason", data+reasonSuffix, "mark", mark)
	} else {
		d.log.Warn("failure mark of a segment already quarantined or deleted moved to the quarantine dir",
			"segment", seg, "reason", data+reasonSuffix)
	}
	return nil
}

// quarantineSlot picks n for a segment's quarantine files: a new number for
// a copy; for a lone mark, the number of a copy that has no reason yet (the
// crash came between the two moves), else a new one.
func quarantineSlot(seg torus.SegmentID, ents []vfs.DirEntry, hasFile bool) int {
	data, reason := map[int]bool{}, map[int]bool{}
	top := 0
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name, seg.String()+".")
		if !ok {
			continue
		}
		isReason := false
		if r, ok := strings.CutSuffix(rest, reasonSuffix); ok {
			rest, isReason = r, true
		}
		n, err := strconv.Atoi(rest)
		if err != nil || n <= 0 {
			continue
		}
		if isReason {
			reason[n] = true
		} else {
			data[n] = true
		}
		top = max(top, n)
	}
	if !hasFile {
		best := 0
		for n := range data {
			if !reason[n] {
				best = max(best, n)
			}
		}
		if best > 0 {
			return best
		}
	}
	return top + 1
}

// fail stops trusting s's file: every further Append and Sync of seg fails
// with an error wrapping cause, and the failure is marked on disk so a
// restart does not serve the copy as good. Called with s.mu held.
func (d *Disk) fail(seg torus.SegmentID, s *diskSegment, cause error) {
	if s.failed == nil {
		s.failed = cause
	}
	d.mark(seg, s)
}

// mark writes s's failure mark, durably (file contents and directory
// entry), unless it already is. When it cannot, the failure is logged at
// Error and tried again by the next refused Append or Sync, and by Close.
// Called with s.mu held.
func (d *Disk) mark(seg torus.SegmentID, s *diskSegment) {
	if s.marked || s.gone.Load() {
		return
	}
	s.marker = true
	if err := d.writeMarker(seg, s); err != nil {
		d.log.Error("cannot write the failure mark of a segment: after a restart its copy would be served as good; appends and syncs of it stay refused and the mark is retried",
			"segment", seg, "marker", d.markerPath(seg), "err", err)
		return
	}
	s.marked = true
}

// readMarker returns the text of seg's failure mark, for the log (at most
// 1 KiB; empty if unreadable).
func (d *Disk) readMarker(seg torus.SegmentID) string {
	f, err := d.fs.OpenFile(d.markerPath(seg), os.O_RDWR)
	if err != nil {
		return ""
	}
	defer f.Close()
	p := make([]byte, 1024)
	n, _ := f.ReadAt(p, 0)
	return strings.TrimSpace(string(p[:n]))
}

func (d *Disk) writeMarker(seg torus.SegmentID, s *diskSegment) error {
	name := d.markerPath(seg)
	f, err := d.fs.OpenFile(name, os.O_RDWR|os.O_CREATE)
	if err != nil {
		return classify(err)
	}
	text := fmt.Sprintf("segment %s\nlength %d\nsynced %d\nerror %v\n",
		seg, s.length.Load(), s.synced.Load(), s.failed)
	err = f.Truncate(0)
	if err == nil {
		_, err = f.WriteAt([]byte(text), 0)
	}
	if err == nil {
		err = f.Datasync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = d.syncDir(d.volumeDir(seg.Volume))
	}
	return classify(err)
}

// begin starts an operation: it fails once the store is closed, and Close
// waits for the operations begun. The caller must call d.inflight.Done.
func (d *Disk) begin(ctx context.Context, op string, seg torus.SegmentID) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return fmt.Errorf("storage: %s %s: %w", op, seg, torus.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("storage: %s %s: %w", op, seg, err)
	}
	d.inflight.Add(1)
	return nil
}

// lookup returns the segment's state, or nil. With create, a placeholder is
// made for a missing segment.
func (d *Disk) lookup(seg torus.SegmentID, create bool) *diskSegment {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.segs[seg]
	if s == nil && create {
		s = &diskSegment{}
		d.segs[seg] = s
	}
	return s
}

// drop removes s from the map (if it is still seg's state). Called with
// s.mu held.
func (d *Disk) drop(seg torus.SegmentID, s *diskSegment) {
	s.gone.Store(true)
	d.mu.Lock()
	if d.segs[seg] == s {
		delete(d.segs, seg)
	}
	d.used -= s.length.Load()
	d.mu.Unlock()
	s.length.Store(0)
}

// Append implements torus.Store. The bytes are written with pwrite at the
// end of the segment's file; a write that fails (ENOSPC, EDQUOT: ErrNoSpace)
// is truncated away, so nothing is written.
func (d *Disk) Append(ctx context.Context, seg torus.SegmentID, off int64, p []byte) error {
	if err := d.begin(ctx, OpAppend, seg); err != nil {
		return err
	}
	defer d.inflight.Done()
	if off < 0 {
		return fmt.Errorf("storage: append %s at offset %d: %w", seg, off, torus.ErrInvalid)
	}
	for {
		s := d.lookup(seg, true)
		s.mu.Lock()
		if s.gone.Load() {
			s.mu.Unlock()
			continue
		}
		err := d.appendLocked(seg, s, off, p)
		if s.length.Load() == 0 {
			d.drop(seg, s) // placeholder: nothing was written
		}
		s.mu.Unlock()
		return err
	}
}

func (d *Disk) appendLocked(seg torus.SegmentID, s *diskSegment, off int64, p []byte) error {
	if s.failed != nil {
		d.mark(seg, s)
		return fmt.Errorf("storage: append %s: %w", seg, s.failed)
	}
	length := s.length.Load()
	if off != length {
		return appendMismatch(seg, off, length, p, func(q []byte) error {
			_, err := d.readFile(seg, q, off)
			return err
		})
	}
	if len(p) == 0 {
		return nil
	}
	n := int64(len(p))
	d.mu.Lock()
	if n > d.capacity-d.used {
		err := noSpace(seg, len(p), d.used, d.capacity)
		d.mu.Unlock()
		return err
	}
	d.used += n // reserved; given back on failure
	d.mu.Unlock()
	written := false
	defer func() {
		if !written {
			d.mu.Lock()
			d.used -= n
			d.mu.Unlock()
		}
	}()

	var e *fdEntry
	created := false
	if !s.file {
		f, err := d.create(seg)
		if err != nil {
			return err
		}
		e = d.fds.add(seg, f)
		s.file, s.dirDirty, created = true, true, true
		d.log.Debug("segment created", "segment", seg)
	} else {
		var err error
		if e, err = d.openCached(seg); err != nil {
			return fmt.Errorf("storage: append %s: %w", seg, err)
		}
	}
	defer d.fds.release(e)

	if _, err := e.f.WriteAt(p, off); err != nil {
		// Cut away whatever part was written, so the file is again the
		// segment's length.
		terr := e.f.Truncate(off)
		if created {
			d.fds.forget(seg)
			if rerr := d.fs.Remove(d.path(seg)); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
				d.log.Error("cannot remove a segment file after a failed first append", "segment", seg, "err", rerr)
			} else {
				s.file, s.dirDirty = false, false
			}
		}
		if terr != nil && s.file {
			// The file now ends in a torn tail that a restart would
			// count as segment bytes: stop using the segment, and mark
			// it so the next open quarantines the file. (A new segment's
			// placeholder is dropped; its marked file then blocks the
			// name until that open.)
			d.log.Error("cannot truncate a failed append; the segment file has a torn tail",
				"segment", seg, "length", off, "err", terr)
			d.fail(seg, s, fmt.Errorf("an append failed and could not be cut away (%v): %w", terr, torus.ErrCorrupt))
		}
		return fmt.Errorf("storage: append %s at %d (%d bytes): %w", seg, off, len(p), classify(err))
	}
	s.length.Store(off + n)
	written = true
	d.startWriteback(seg, s, e.f, off+n)
	return nil
}

// startWriteback hands s's bytes [s.wbFrom, end) to the kernel's writeback
// once they are at least wbChunk (DiskConfig.WritebackChunk). A failure
// costs only the head start: it is logged at Debug. s.mu is held.
func (d *Disk) startWriteback(seg torus.SegmentID, s *diskSegment, f vfs.File, end int64) {
	if d.wbChunk <= 0 || end-s.wbFrom < d.wbChunk {
		return
	}
	from := s.wbFrom
	s.wbFrom = end
	wb, ok := f.(vfs.Writebacker)
	if !ok {
		return
	}
	if err := wb.StartWriteback(from, end-from); err != nil {
		d.log.Debug("starting writeback failed", "segment", seg, "err", err)
	}
}

// create makes the file of a new segment (and its volume directory).
func (d *Disk) create(seg torus.SegmentID) (vfs.File, error) {
	if err := d.ensureVolumeDir(seg.Volume); err != nil {
		return nil, fmt.Errorf("storage: append %s: %w", seg, classify(err))
	}
	f, err := d.fs.OpenFile(d.path(seg), os.O_RDWR|os.O_CREATE)
	if err != nil {
		return nil, fmt.Errorf("storage: append %s: creating file: %w", seg, classify(err))
	}
	// The store believes the segment is new; a file with content would
	// mean the directory changed behind its back.
	if size, err := f.Size(); err != nil || size != 0 {
		_ = f.Close()
		if err == nil {
			err = fmt.Errorf("file %s exists with %d bytes unknown to the store: %w", d.path(seg), size, torus.ErrCorrupt)
		}
		return nil, fmt.Errorf("storage: append %s: %w", seg, err)
	}
	return f, nil
}

// ensureVolumeDir creates the volume's directory durably.
func (d *Disk) ensureVolumeDir(vol uint64) error {
	d.mu.Lock()
	ok := d.volDirs[vol]
	d.mu.Unlock()
	if ok {
		return nil
	}
	if err := d.fs.Mkdir(d.volumeDir(vol)); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("creating volume dir: %w", err)
	}
	if err := d.syncDir(d.segDir); err != nil {
		return err
	}
	d.mu.Lock()
	d.volDirs[vol] = true
	d.mu.Unlock()
	return nil
}

func (d *Disk) syncDir(dir string) error {
	if err := d.fs.SyncDir(dir); err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}

// classify maps filesystem-full errors to torus.ErrNoSpace, keeping the
// cause in the message.
func classify(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %w", torus.ErrNoSpace, err)
	}
	return err
}

// openCached returns the segment's open file from the cache.
func (d *Disk) openCached(seg torus.SegmentID) (*fdEntry, error) {
	return d.fds.get(seg, func() (vfs.File, error) {
		f, err := d.fs.OpenFile(d.path(seg), os.O_RDWR)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("segment file missing: %w", torus.ErrNotExist)
		}
		return f, err
	})
}

// readFile reads exactly len(p) bytes at off, which the caller knows lie
// below the segment's length.
func (d *Disk) readFile(seg torus.SegmentID, p []byte, off int64) (int, error) {
	e, err := d.openCached(seg)
	if err != nil {
		return 0, err
	}
	defer d.fds.release(e)
	n, err := e.f.ReadAt(p, off)
	if err == io.EOF {
		err = fmt.Errorf("segment file is shorter than its length %d: %w", off+int64(len(p)), torus.ErrCorrupt)
	}
	return n, err
}

// Sync implements torus.Store: fdatasync of the segment's file, and fsync of
// its directory the first time after the file was created. Appends to the
// segment may run meanwhile; Synced then covers the length at the start of
// the Sync, and that durable length is what it returns. After a failed fdatasync the segment's unsynced bytes are in an
// unknown state: every further Sync or Append of it fails (the writer moves
// to a new segment).
func (d *Disk) Sync(ctx context.Context, seg torus.SegmentID) (int64, error) {
	if err := d.begin(ctx, OpSync, seg); err != nil {
		return 0, err
	}
	defer d.inflight.Done()
	s := d.lookup(seg, false)
	if s == nil {
		return 0, fmt.Errorf("storage: sync %s: %w", seg, torus.ErrNotExist)
	}
	s.mu.Lock()
	length := s.length.Load()
	if s.gone.Load() || length == 0 {
		s.mu.Unlock()
		return 0, fmt.Errorf("storage: sync %s: %w", seg, torus.ErrNotExist)
	}
	if s.failed != nil {
		d.mark(seg, s)
		s.mu.Unlock()
		return 0, fmt.Errorf("storage: sync %s: %w", seg, s.failed)
	}
	dirDirty := s.dirDirty
	if synced := s.synced.Load(); synced >= length && !dirDirty {
		s.mu.Unlock()
		return synced, nil
	}
	e, err := d.openCached(seg)
	s.mu.Unlock()
	if err != nil {
		return 0, fmt.Errorf("storage: sync %s: %w", seg, err)
	}
	defer d.fds.release(e)

	err = e.f.Datasync()
	if err == nil && dirDirty {
		err = d.syncDir(d.volumeDir(seg.Volume))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		err = classify(err)
		d.log.Error("sync failed; unsynced bytes of the segment may be lost", "segment", seg, "err", err)
		if !s.gone.Load() {
			d.fail(seg, s, fmt.Errorf("an earlier sync failed (%v): %w", err, torus.ErrCorrupt))
		}
		return 0, fmt.Errorf("storage: sync %s: %w", seg, err)
	}
	if s.synced.Load() < length {
		s.synced.Store(length)
	}
	if dirDirty {
		s.dirDirty = false
	}
	return s.synced.Load(), nil
}

// ReadAt implements torus.Store, with pread; it may run concurrently with
// appends to the same segment.
func (d *Disk) ReadAt(ctx context.Context, seg torus.SegmentID, p []byte, off int64) (int, error) {
	if err := d.begin(ctx, OpRead, seg); err != nil {
		return 0, err
	}
	defer d.inflight.Done()
	if off < 0 {
		return 0, fmt.Errorf("storage: read %s at offset %d: %w", seg, off, torus.ErrInvalid)
	}
	s := d.lookup(seg, false)
	var length int64
	if s != nil {
		length = s.length.Load()
	}
	if length == 0 {
		return 0, fmt.Errorf("storage: read %s: %w", seg, torus.ErrNotExist)
	}
	if off >= length {
		return 0, io.EOF
	}
	want := int64(len(p))
	if rest := length - off; rest < want {
		want = rest
	}
	n, err := d.readFile(seg, p[:want], off)
	if s.gone.Load() {
		// Deleted meanwhile: what was read may come from a new segment
		// of the same name.
		return 0, fmt.Errorf("storage: read %s: deleted during the read: %w", seg, torus.ErrNotExist)
	}
	if err != nil {
		return n, fmt.Errorf("storage: read %s at %d: %w", seg, off, err)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Stat implements torus.Store.
func (d *Disk) Stat(ctx context.Context, seg torus.SegmentID) (torus.SegmentInfo, error) {
	if err := d.begin(ctx, OpStat, seg); err != nil {
		return torus.SegmentInfo{}, err
	}
	defer d.inflight.Done()
	if s := d.lookup(seg, false); s != nil {
		if info := s.info(seg); info.Length > 0 {
			return info, nil
		}
	}
	return torus.SegmentInfo{}, fmt.Errorf("storage: stat %s: %w", seg, torus.ErrNotExist)
}

func (s *diskSegment) info(id torus.SegmentID) torus.SegmentInfo {
	synced := s.synced.Load()
	length := s.length.Load()
	return torus.SegmentInfo{ID: id, Length: length, Synced: min(synced, length)}
}

// List implements torus.Store. It answers from the store's view of its
// directories, read when the store was opened and kept up to date since.
func (d *Disk) List(ctx context.Context, volume uint64) ([]torus.SegmentInfo, error) {
	if err := d.begin(ctx, OpList, torus.SegmentID{Volume: volume}); err != nil {
		return nil, err
	}
	defer d.inflight.Done()
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []torus.SegmentInfo
	for id, s := range d.segs {
		if volume != 0 && id.Volume != volume {
			continue
		}
		if info := s.info(id); info.Length > 0 {
			out = append(out, info)
		}
	}
	return out, nil
}

// Delete implements torus.Store: unlink, then fsync of the directory.
func (d *Disk) Delete(ctx context.Context, seg torus.SegmentID) error {
	if err := d.begin(ctx, OpDelete, seg); err != nil {
		return err
	}
	defer d.inflight.Done()
	for {
		s := d.lookup(seg, false)
		if s == nil {
			return nil
		}
		s.mu.Lock()
		if s.gone.Load() {
			s.mu.Unlock()
			continue
		}
		defer s.mu.Unlock()
		if s.file {
			d.fds.forget(seg)
			if err := d.fs.Remove(d.path(seg)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("storage: delete %s: %w", seg, err)
			}
			s.file = false
		}
		if s.marker {
			// The file's removal must be durable before the mark's: a
			// crash must not keep the file and lose the mark.
			if err := d.syncDir(d.volumeDir(seg.Volume)); err != nil {
				return fmt.Errorf("storage: delete %s: %w", seg, err)
			}
			if err := d.fs.Remove(d.markerPath(seg)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("storage: delete %s: removing its failure mark: %w", seg, err)
			}
			s.marker, s.marked = false, false
		}
		length := s.length.Load()
		d.drop(seg, s)
		d.log.Debug("segment deleted", "segment", seg, "length", length)
		if err := d.syncDir(d.volumeDir(seg.Volume)); err != nil {
			return fmt.Errorf("storage: delete %s: %w", seg, err)
		}
		return nil
	}
}

// Usage implements torus.Store. Used counts appends in progress too. It
// keeps working after Close.
func (d *Disk) Usage() torus.Usage {
	d.mu.Lock()
	defer d.mu.Unlock()
	return torus.Usage{Used: d.used, Capacity: d.capacity}
}

// Dir returns the data directory.
func (d *Disk) Dir() string { return d.dir }

// Close implements torus.Store. It waits for operations in progress, closes
// every file and releases the data dir's lock. It does not sync: call Sync
// for what must be durable. A second Close returns ErrClosed.
func (d *Disk) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return fmt.Errorf("storage: close %s: %w", d.dir, torus.ErrClosed)
	}
	d.closed = true
	d.mu.Unlock()
	d.inflight.Wait()
	unmarked := d.markAll()
	d.fds.closeAll()
	err := d.lockFile.Close()
	d.log.Info("store closed")
	if err != nil {
		return fmt.Errorf("storage: close %s: %w", d.dir, err)
	}
	if len(unmarked) > 0 {
		return fmt.Errorf("storage: close %s: the failure marks of %v could not be written; after a restart their copies would be served as good: %w",
			d.dir, unmarked, torus.ErrCorrupt)
	}
	return nil
}

// markAll tries once more to write the failure marks not yet durable, and
// returns the segments still without one. Called by Close, when no
// operation runs.
func (d *Disk) markAll() []torus.SegmentID {
	d.mu.Lock()
	type entry struct {
		id torus.SegmentID
		s  *diskSegment
	}
	var failed []entry
	for id, s := range d.segs {
		failed = append(failed, entry{id, s})
	}
	d.mu.Unlock()
	var unmarked []torus.SegmentID
	for _, e := range failed {
		e.s.mu.Lock()
		if e.s.failed != nil && !e.s.gone.Load() {
			d.mark(e.id, e.s)
			if !e.s.marked {
				unmarked = append(unmarked, e.id)
			}
		}
		e.s.mu.Unlock()
	}
	slices.SortFunc(unmarked, func(a, b torus.SegmentID) int { return strings.Compare(a.String(), b.String()) })
	return unmarked
}
