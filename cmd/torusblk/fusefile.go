package main

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/torus-storage/torus"
)

// fuseFile serves one torus.Device as the single regular file of a FUSE
// mount whose mount point is that file (`torusblk fuse VOLUME FILE`). It
// is the raw FUSE protocol (no node tree): the root inode is the file.
//
// Every open gets FOPEN_DIRECT_IO, so no page cache sits between a reader
// (the loop device) and the volume; fsync and flush are the volume's Flush
// (durable on the volume's MinReplicas); fallocate PUNCH_HOLE is Trim and
// ZERO_RANGE is WriteZeroes. The size is the device's at each GETATTR
// (attributes are never cached), so a grown volume shows its new size.
// Errors map to errno by class: ErrReadOnly EROFS, ErrOutOfRange EFBIG,
// ErrNoSpace ENOSPC, anything else (fenced, unavailable, closed) EIO —
// never a silent success.
type fuseFile struct {
	fuse.RawFileSystem
	dev torus.Device
	ctx context.Context // I/O context: lives until the device is closed
	log *slog.Logger
	uid uint32
	gid uint32
	// failed counts failed writes and flushes, so the first is logged at
	// Error and the rest at Debug.
	failed atomic.Int64
}

func newFuseFile(ctx context.Context, dev torus.Device, log *slog.Logger) *fuseFile {
	return &fuseFile{RawFileSystem: fuse.NewDefaultRawFileSystem(), dev: dev, ctx: ctx, log: log,
		uid: uint32(syscall.Geteuid()), gid: uint32(syscall.Getegid())}
}

func (f *fuseFile) String() string { return "torusblk-fuse" }

// errno classifies a device error.
func errno(err error) fuse.Status {
	switch {
	case err == nil:
		return fuse.OK
	case errors.Is(err, torus.ErrReadOnly):
		return fuse.EROFS
	case errors.Is(err, torus.ErrOutOfRange):
		return fuse.Status(syscall.EFBIG)
	case errors.Is(err, torus.ErrNoSpace):
		return fuse.Status(syscall.ENOSPC)
	default:
		return fuse.EIO
	}
}

// ioFailed logs a failed write or flush: data the caller thought written
// may not be, so the first one is an Error.
func (f *fuseFile) ioFailed(op string, off int64, err error) {
	if f.failed.Add(1) == 1 {
		f.log.Error("fuse: I/O failed; the file returns EIO (fenced or unavailable volume?)", "op", op, "off", off, "err", err)
		return
	}
	f.log.Debug("fuse: I/O failed", "op", op, "off", off, "err", err)
}

func (f *fuseFile) attr(out *fuse.Attr) {
	mode := uint32(0o600)
	if f.dev.ReadOnly() {
		mode = 0o400
	}
	size := uint64(f.dev.Size())
	now := uint64(time.Now().Unix())
	*out = fuse.Attr{Ino: fuse.FUSE_ROOT_ID, Size: size, Blocks: size / 512, Mode: fuse.S_IFREG | mode, Nlink: 1,
		Atime: now, Mtime: now, Ctime: now, Blksize: torus.BlockSize}
	out.Owner = fuse.Owner{Uid: f.uid, Gid: f.gid}
}

func (f *fuseFile) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	if in.NodeId != fuse.FUSE_ROOT_ID {
		return fuse.ENOENT
	}
	f.attr(&out.Attr)
	out.SetTimeout(0)
	return fuse.OK
}

// SetAttr accepts what does not change the data (times, owner, mode are
// ignored) and a truncate to the current size; a volume is resized with
// `torusctl volume resize`, not by truncating its file.
func (f *fuseFile) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	if in.NodeId != fuse.FUSE_ROOT_ID {
		return fuse.ENOENT
	}
	if in.Valid&fuse.FATTR_SIZE != 0 && int64(in.Size) != f.dev.Size() {
		return fuse.EPERM
	}
	f.attr(&out.Attr)
	out.SetTimeout(0)
	return fuse.OK
}

func (f *fuseFile) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	return fuse.ENOENT // the root is a file: it has no entries
}

func (f *fuseFile) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	if in.Mask&2 != 0 && f.dev.ReadOnly() { // W_OK
		return fuse.EROFS
	}
	return fuse.OK
}

func (f *fuseFile) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if in.NodeId != fuse.FUSE_ROOT_ID {
		return fuse.ENOENT
	}
	if in.Flags&syscall.O_ACCMODE != syscall.O_RDONLY && f.dev.ReadOnly() {
		return fuse.EROFS
	}
	if in.Flags&syscall.O_TRUNC != 0 {
		return fuse.EPERM
	}
	out.OpenFlags = fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES
	return fuse.OK
}

func (f *fuseFile) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	off, size := int64(in.Offset), f.dev.Size()
	if off >= size {
		return fuse.ReadResultData(nil), fuse.OK
	}
	n := min(int64(len(buf)), int64(in.Size), size-off)
	if err := f.dev.ReadAt(f.ctx, buf[:n], off); err != nil {
		f.log.Debug("fuse: read failed", "off", off, "len", n, "err", err)
		return nil, errno(err)
	}
	return fuse.ReadResultData(buf[:n]), fuse.OK
}

func (f *fuseFile) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	off := int64(in.Offset)
	if err := f.dev.WriteAt(f.ctx, data, off, false); err != nil {
		f.ioFailed("write", off, err)
		return 0, errno(err)
	}
	return uint32(len(data)), fuse.OK
}

func (f *fuseFile) flush(op string) fuse.Status {
	if f.dev.ReadOnly() {
		return fuse.OK
	}
	if err := f.dev.Flush(f.ctx); err != nil {
		f.ioFailed(op, -1, err)
		return errno(err)
	}
	return fuse.OK
}

// Flush is close(2) of a descriptor: writes through it are made durable,
// so a close that returns 0 lost nothing.
func (f *fuseFile) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	return f.flush("flush")
}

func (f *fuseFile) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	return f.flush("fsync")
}

func (f *fuseFile) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {}

// Linux fallocate(2) modes.
const (
	fallocKeepSize  = 0x01
	fallocPunchHole = 0x02
	fallocZeroRange = 0x10
)

func (f *fuseFile) Fallocate(cancel <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	off, length := int64(in.Offset), int64(in.Length)
	var err error
	switch in.Mode {
	case fallocPunchHole | fallocKeepSize:
		err = f.dev.Trim(f.ctx, off, length)
	case fallocZeroRange, fallocZeroRange | fallocKeepSize:
		err = f.dev.WriteZeroes(f.ctx, off, length, false)
	case 0, fallocKeepSize:
		// Allocation: every byte of a volume is already addressable.
		if off+length > f.dev.Size() && in.Mode == 0 {
			return fuse.Status(syscall.EFBIG)
		}
		return fuse.OK
	default:
		return fuse.Status(syscall.EOPNOTSUPP)
	}
	if err != nil {
		f.ioFailed("fallocate", off, err)
		return errno(err)
	}
	return fuse.OK
}

func (f *fuseFile) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	size := uint64(f.dev.Size())
	*out = fuse.StatfsOut{Blocks: size / torus.BlockSize, Bsize: torus.BlockSize, Frsize: torus.BlockSize, NameLen: 255, Files: 1}
	return fuse.OK
}
