// Package vfs is the small filesystem interface the on-disk store uses, so
// that its tests can run it on a filesystem that loses power (MemFS.Crash:
// only what was synced survives; MemFS.CrashTorn: unsynced tails are also
// torn into zeros or garbage, from a seed) or fails on demand (Inject).
//
// The interface holds exactly what storage.Disk needs: files written with
// pwrite and read with pread, fdatasync, rename, directory fsync, syncfs, and an
// exclusive lock file. OS is the real one.
package vfs
