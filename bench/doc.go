// Command bench measures Torus against baselines on one machine and writes
// the results as a table, JSON and a PNG chart. It is what `make bench`
// runs:
//
//	go run ./bench [-quick] [-out bench/results]
//
// Targets, all on 127.0.0.1 with free ports:
//
//   - disk: fio on a plain file on the same disk (libaio, O_DIRECT), the
//     disk's ceiling;
//   - nbdkit: the same file served by nbdkit's file plugin;
//   - qemu-nbd: the same file served by qemu-nbd;
//   - torus-1d-r1, torus-3d-r2, torus-3d-r3: etcd, N torusd and torusblk
//     nbdserve from ./bin, with replication 1, 2 and 3. They are reported as
//     skipped when a binary is missing;
//   - torus-3d-r2-tls: torus-3d-r2 with mutual TLS on the peer protocol
//     (certificates from `torusctl certs`), run right after it; the report's
//     tls_cost gives TLS / plain per job (TLSCosts), the cost of TLS on the
//     peer protocol measured in the same run.
//
// Every target runs the same fio jobs (Jobs), NBD targets through fio's nbd
// engine. Ratios are to nbdkit. The Torus targets also report peak RSS and
// CPU time of every process and CPU use while idle; the replication-2
// cluster then measures healing after a SIGKILL of one daemon.
//
// The program's pure parts (job definitions and fio arguments, fio JSON
// parsing, ratios, aims, table, /proc and torusctl parsing) are plain
// functions with unit tests; process management lives in proc.go: every
// child runs in its own process group, is stopped with SIGTERM then SIGKILL,
// is always reaped, and dies with the benchmark (Pdeathsig). Scratch data
// lives in one temporary directory removed at the end (-keep keeps it).
//
// Exit status: 0 when every baseline ran (Torus targets may be skipped or,
// without -strict, fail), 1 when a baseline failed, 2 for bad flags.
//
// See docs/benchmarks.md for how to read the results and the aims.
package main
