// Package tests holds Torus's integration suites: in-process clusters
// (internal/testcluster: embedded etcd and several daemons in one process)
// and process-level tests that start real torusd binaries and Debian's
// etcd, kill them with SIGKILL and cut them off, and drive I/O through real
// NBD clients.
package tests
