// Package etcd implements torus.Metadata on etcd v3 (go.etcd.io/etcd/client/v3).
// It is the only package of Torus that imports the etcd client.
//
// [New] connects and probes the cluster; an unreachable etcd yields, within
// Config.DialTimeout, an error wrapping torus.ErrUnavailable that names the
// endpoints. Every later request runs under Config.RequestTimeout.
//
// All keys live under Config.Prefix (default "/torus/"). Every state change
// that must be atomic is one etcd transaction with compares: taking a volume
// lock (lock key absent → lock under the writer's lease and epoch+1),
// committing a head (epoch unchanged and lock present, else
// torus.ErrFenced), allocating volume IDs from a counter, moving the ring
// version. The key layout and each transaction are described in
// docs/design/metadata.md.
//
// Sessions are etcd leases kept alive by the client. A session's Done
// channel closes when the keepalive stream ends (lease revoked or expired)
// or when no keepalive has succeeded for longer than the lease's TTL, so a
// writer cut off from etcd stops by itself.
//
// [StartEmbedded] runs an etcd server inside the process, for `torusd --dev`
// and for tests (see internal/etcdtest).
package etcd
