// Package life holds Torus's process-level fault tests (issue "Cluster
// life"): real etcd, torusd and torusblk processes (internal/proccluster),
// driven through the NBD server by a small NBD client, with replicas,
// writers and etcd killed, hosts partitioned (internal/netns), peers added
// and removed, and a seeded randomized robustness run. Every flushed byte is
// checked against a model (model_test.go) that says, for each 4 KiB block,
// which writes may legitimately be there and, on a mismatch, exactly which
// write was found instead.
//
// The durability tests of issue 8 run real clients under the default
// policy (min-replicas = replication): ext4 on nbdfuse + loop with dd
// conv=fsync through a replica SIGKILL and a rolling restart
// (ext4_test.go), a FLUSH-latency client and fio --verify through a rolling
// restart (rolling_test.go), a daemon's power loss with torn tails and
// flipped record headers on one replica (powerloss_test.go), and double
// faults (double_test.go). The ext4 tests need root, /dev/fuse and loop
// devices; under TORUS_REQUIRE_TOOLS=1 their absence fails the test.
//
// Replica-side network faults (netfault_test.go), under the same policy,
// with a client writing 64 KiB and FLUSHing every 8 writes plus a FLUSH
// probe on a second connection, FLUSH latency p50/p99/max logged as
// FIGURE lines: every link into one replica blackholed for 35 s, slowed by
// 200 ms each way, or reset (RST) over and over (the daemons advertise a
// proxy as their peer address, proccluster.Options.Links); the writer cut
// from one replica that still reaches etcd and the daemons (torusblk in a
// network namespace); a daemon cut from etcd that still serves its peers;
// etcd replies to the writer arriving after its request timeout, then
// dropped (ambiguous head commits), followed by a writer crash; and
// nbdcopy --connections=4 through a replica SIGKILL and restart.
//
// Security (issue 12): mutual TLS on the peer port (secure_test.go); a
// 3-member etcd with TLS between members and for clients, its leader
// SIGKILLed between nbdcopy writes, and etcd authentication with a role
// limited to /torus/ (etcdsec_test.go).
//
// The CSI driver's process test (csi_test.go) runs torus-csi controller
// and node processes: publish refusals naming the holder survive a SIGKILL
// of the controller (the attachment lives in etcd), a node refuses to stage
// a volume published elsewhere, and etcd down is Unavailable naming it.
//
// The package has only tests. Run with `go test ./tests/life` (part of
// `make test`); `-short` skips it. The robustness test runs briefly by
// default; TORUS_ROBUSTNESS=long (`make robustness`) runs it long, and
// TORUS_SEED=N replays a run.
package life
