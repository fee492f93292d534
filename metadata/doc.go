// Package metadata holds the in-memory implementation of torus.Metadata,
// [Memory], used by the unit tests of other packages (volume, server, ...).
// The production implementation, backed by etcd, is in metadata/etcd; both
// pass the conformance suite in metadata/metadatatest, so code tested
// against Memory behaves the same against etcd.
//
// Memory adds hooks that etcd cannot offer in a unit test:
//
//   - [Memory.ExpireSession] ends a session as if its lease had expired:
//     its Done channel closes and every key written under it (volume locks,
//     peer liveness) disappears.
//   - [Memory.SetFailure] makes every call fail with a given error, as if
//     etcd were unreachable; sessions then expire after their TTL, as they
//     would when keepalives fail.
//
// The key layout, the transactions and their compares are documented in
// docs/design/metadata.md.
package metadata
