package storage

import "os"

// OpenFiles reports how many files d's cache holds.
func OpenFiles(d *Disk) int { return d.fds.len() }

// SetWriteHook replaces the pwrite of d's appends.
func SetWriteHook(d *Disk, f func(f *os.File, p []byte, off int64) (int, error)) { d.writeAt = f }

// SetSyncHook replaces the fdatasync of d's Sync.
func SetSyncHook(d *Disk, f func(f *os.File) error) { d.fdatasync = f }
