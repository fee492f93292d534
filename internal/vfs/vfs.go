package vfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// File is an open file.
type File interface {
	io.ReaderAt
	io.WriterAt
	io.Closer
	// Name is the path the file was opened with.
	Name() string
	// Truncate changes the file's size.
	Truncate(size int64) error
	// Datasync makes the file's contents durable (fdatasync). It does not
	// make its directory entry durable: see FS.SyncDir.
	Datasync() error
	// Size reports the file's current size.
	Size() (int64, error)
}

// Writebacker is a File that can start writing a range back to the disk
// ahead of its Datasync (the real filesystem's files). It is advisory: a
// store that cannot (other files, errors) loses only the head start.
type Writebacker interface {
	StartWriteback(off, n int64) error
}

// DirEntry describes one entry of a directory.
type DirEntry struct {
	Name    string
	Dir     bool
	Regular bool
	Size    int64 // of a regular file
}

// FS is a filesystem. Paths are slash-separated; errors wrap the fs
// package's (fs.ErrNotExist, fs.ErrExist).
type FS interface {
	// OpenFile opens a file for reading and writing; flag is os.O_RDWR,
	// optionally with os.O_CREATE and os.O_EXCL.
	OpenFile(name string, flag int) (File, error)
	Remove(name string) error
	// Rename moves oldname to newname, replacing a file there (rename(2)).
	// Like a created or removed entry, the move is durable only once both
	// directories are fsynced (SyncDir).
	Rename(oldname, newname string) error
	// Mkdir creates one directory; fs.ErrExist if it exists.
	Mkdir(name string) error
	MkdirAll(name string) error
	ReadDir(name string) ([]DirEntry, error)
	// SyncDir makes the directory's entries durable (fsync of the dir).
	SyncDir(name string) error
	// SyncAll makes everything on the filesystem holding dir durable
	// (syncfs).
	SyncAll(dir string) error
	// Lock takes an exclusive lock on the file name (created if missing)
	// and writes holder into it. It fails with a *LockedError while
	// another holder has it. Closing the result releases the lock.
	Lock(name, holder string) (io.Closer, error)
}

// ErrLocked is matched by *LockedError.
var ErrLocked = errors.New("vfs: lock is held")

// LockedError reports a lock held by someone else.
type LockedError struct {
	Path   string
	Holder string // what the holder wrote into the lock file; may be empty
}

func (e *LockedError) Error() string {
	return fmt.Sprintf("vfs: lock %s is held by %q", e.Path, e.Holder)
}

// Is makes errors.Is(err, ErrLocked) hold.
func (e *LockedError) Is(target error) bool { return target == ErrLocked }

// OS is the real filesystem.
var OS FS = osFS{}

type osFS struct{}

type osFile struct{ *os.File }

func (f osFile) Datasync() error {
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: err}
	}
	return nil
}

// StartWriteback asks the kernel to start writing [off, off+n) back to
// the disk without waiting for it (sync_file_range with
// SYNC_FILE_RANGE_WRITE): a later Datasync then finds little left to
// write. It makes nothing durable. See Writebacker.
func (f osFile) StartWriteback(off, n int64) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SyncFileRange(int(fd), off, n, unix.SYNC_FILE_RANGE_WRITE)
	}); err != nil {
		return err
	}
	if serr != nil {
		return &os.PathError{Op: "sync_file_range", Path: f.Name(), Err: serr}
	}
	return nil
}

func (f osFile) Size() (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

func (osFS) OpenFile(name string, flag int) (File, error) {
	f, err := os.OpenFile(name, flag, 0o644)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

func (osFS) Remove(name string) error             { return os.Remove(name) }
func (osFS) Rename(oldname, newname string) error { return os.Rename(oldname, newname) }
func (osFS) Mkdir(name string) error              { return os.Mkdir(name, 0o755) }
func (osFS) MkdirAll(name string) error           { return os.MkdirAll(name, 0o755) }

func (osFS) ReadDir(name string) ([]DirEntry, error) {
	ents, err := os.ReadDir(name)
	if err != nil {
		return nil, err
	}
	out := make([]DirEntry, 0, len(ents))
	for _, e := range ents {
		de := DirEntry{Name: e.Name(), Dir: e.IsDir(), Regular: e.Type().IsRegular()}
		if de.Regular {
			info, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue // removed meanwhile
			}
			if err != nil {
				return nil, err
			}
			de.Size = info.Size()
		}
		out = append(out, de)
	}
	return out, nil
}

func (osFS) SyncDir(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func (osFS) SyncAll(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return &os.PathError{Op: "syncfs", Path: dir, Err: err}
	}
	return nil
}

func (osFS) Lock(name, holder string) (io.Closer, error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		_ = f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			b, _ := os.ReadFile(name)
			return nil, &LockedError{Path: name, Holder: strings.TrimSpace(string(b))}
		}
		return nil, &os.PathError{Op: "flock", Path: name, Err: err}
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(holder+"\n"), 0)
	}
	return f, nil
}
