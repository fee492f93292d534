// Package cli is torusctl: the cobra command tree, argument parsing and
// output formatting of the cluster administration tool. main only calls
// Main. Everything reaches the cluster through torus.Metadata, opened by
// Deps.Open, so the commands can be exercised against metadata.Memory as
// well as against etcd (the testscript tests in cmd/torusctl use a real
// embedded etcd and the real binary).
//
// Commands: init, status (peers, volumes by health, ring, healing
// progress), peer list|add|remove, ring get|set-replication, volume
// create|list|delete|resize|set|unlock|default-export, snapshot
// create|list|delete. Volume health and space come from the statuses the
// daemons publish (torus.Metadata.VolumeStatuses). peer remove drains
// gracefully: it marks the peers draining and waits until each reports no
// data in a heartbeat sent after the drain began (two fresh heartbeats,
// since the first may predate it), then writes a ring without them and
// deletes their records; --force skips the drain for dead peers.
//
// Pure helpers (ResolvePeers, AddToRing, RemoveFromRing, Bar)
// are exported and unit-tested; progress bars are drawn only when
// Deps.IsTerminal says stdout is a terminal.
//
// Output is a table (text/tabwriter) by default and JSON with -o json.
// Errors are printed as "torusctl: <message>" on stderr with exit status 1.
package cli
