// Package storage holds the local segment stores of a storage daemon, the
// implementations of torus.Store, and small helpers the daemon needs at
// start (ParseSize, FormatSize, LoadOrCreateID).
//
// # Stores
//
// Memory keeps segments in memory. It is meant for unit tests of other
// packages: it is fast, has fault hooks (SetFault) and can simulate a power
// loss (Crash), after which only synced bytes survive.
//
// Both stores pass storage/storagetest, the conformance suite of the
// torus.Store contract.
package storage
