// Package lsm is the block index of a volume as a stack of immutable
// sorted runs over a memtable (docs/design/index-runs.md): the encoding of
// a run, lookups through a stack of runs and a shared page cache of fixed
// size, the merge of adjacent runs and the tiered plan that chooses them.
//
// It is pure: runs are read through a ReaderAt the caller supplies (a
// segment on its replicas), and nothing here starts a goroutine, touches a
// disk or reads a clock.
package lsm
