// Package server assembles a storage daemon (torusd): the local segment
// store, the peer protocol listener with its fencing, the etcd registration
// and heartbeat under a lease, ring membership, the HTTP endpoints (/metrics,
// /healthz, /readyz, /debug/pprof), and the maintenance loop that heals,
// rebalances and collects garbage.
//
// A Server owns every goroutine it starts; Close stops them all and waits.
// It receives its dependencies (the metadata store, a logger) from its
// caller: nothing registers itself globally, so tests can run several
// daemons in one process.
//
// Log levels: Debug is per-request detail; Info is lifecycle (start, join,
// ring change); Warn is a peer or etcd disconnect, a retry, a degraded
// volume; Error is possible data loss or a failed invariant.
package server
