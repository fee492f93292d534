package vfs

import (
	"io"
	"os"
)

// Operation names passed to an Inject hook.
const (
	OpOpen     = "open"
	OpRead     = "read"
	OpWrite    = "write"
	OpTruncate = "truncate"
	OpDatasync = "datasync"
	OpRemove   = "remove"
	OpRename   = "rename"
	OpMkdir    = "mkdir"
	OpReadDir  = "readdir"
	OpSyncDir  = "syncdir"
	OpSyncAll  = "syncall"
	OpLock     = "lock"
)

const (
	osCreate     = os.O_CREATE
	osCreateExcl = os.O_CREATE | os.O_EXCL
)

// Inject wraps fs so that hook is called before every operation with its
// name (OpOpen, ...) and path. A non-nil result fails the operation, which
// then does nothing, except a failing write, which first writes the first
// half of its bytes (as a filesystem that fills up mid-write does).
func Inject(fs FS, hook func(op, path string) error) FS {
	return &injectFS{fs: fs, hook: hook}
}

type injectFS struct {
	fs   FS
	hook func(op, path string) error
}

func (i *injectFS) OpenFile(name string, flag int) (File, error) {
	if err := i.hook(OpOpen, name); err != nil {
		return nil, err
	}
	f, err := i.fs.OpenFile(name, flag)
	if err != nil {
		return nil, err
	}
	return &injectFile{File: f, hook: i.hook}, nil
}

func (i *injectFS) Remove(name string) error {
	if err := i.hook(OpRemove, name); err != nil {
		return err
	}
	return i.fs.Remove(name)
}

// Rename calls the hook with OpRename and the old name.
func (i *injectFS) Rename(oldname, newname string) error {
	if err := i.hook(OpRename, oldname); err != nil {
		return err
	}
	return i.fs.Rename(oldname, newname)
}

func (i *injectFS) Mkdir(name string) error {
	if err := i.hook(OpMkdir, name); err != nil {
		return err
	}
	return i.fs.Mkdir(name)
}

func (i *injectFS) MkdirAll(name string) error {
	if err := i.hook(OpMkdir, name); err != nil {
		return err
	}
	return i.fs.MkdirAll(name)
}

func (i *injectFS) ReadDir(name string) ([]DirEntry, error) {
	if err := i.hook(OpReadDir, name); err != nil {
		return nil, err
	}
	return i.fs.ReadDir(name)
}

func (i *injectFS) SyncDir(name string) error {
	if err := i.hook(OpSyncDir, name); err != nil {
		return err
	}
	return i.fs.SyncDir(name)
}

func (i *injectFS) SyncAll(dir string) error {
	if err := i.hook(OpSyncAll, dir); err != nil {
		return err
	}
	return i.fs.SyncAll(dir)
}

func (i *injectFS) Lock(name, holder string) (io.Closer, error) {
	if err := i.hook(OpLock, name); err != nil {
		return nil, err
	}
	return i.fs.Lock(name, holder)
}

type injectFile struct {
	File
	hook func(op, path string) error
}

func (f *injectFile) ReadAt(p []byte, off int64) (int, error) {
	if err := f.hook(OpRead, f.Name()); err != nil {
		return 0, err
	}
	return f.File.ReadAt(p, off)
}

func (f *injectFile) WriteAt(p []byte, off int64) (int, error) {
	if err := f.hook(OpWrite, f.Name()); err != nil {
		n, _ := f.File.WriteAt(p[:len(p)/2], off)
		return n, err
	}
	return f.File.WriteAt(p, off)
}

func (f *injectFile) Truncate(size int64) error {
	if err := f.hook(OpTruncate, f.Name()); err != nil {
		return err
	}
	return f.File.Truncate(size)
}

func (f *injectFile) Datasync() error {
	if err := f.hook(OpDatasync, f.Name()); err != nil {
		return err
	}
	return f.File.Datasync()
}
