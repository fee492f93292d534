// Package nbd serves torus.Devices over the Network Block Device protocol
// (the NBD project's doc/proto.md), to qemu, libnbd tools (nbdinfo,
// nbdcopy, nbdfuse), fio's nbd engine and the Linux kernel client.
//
// A Server is built from a Config, an Exports provider (which names,
// lists and opens devices) and a logger:
//
//	srv := nbd.NewServer(nbd.Config{}, exports, logger)
//	go srv.Serve(ln)
//	...
//	srv.Shutdown(ctx) // in-flight requests complete; devices flushed and closed
//
// The server speaks the fixed newstyle handshake with NBD_OPT_GO, structured
// replies, the base:allocation metadata context and STARTTLS. Each export
// name is opened once per server and shared by all its connections
// (refcounted), so the connections share the volume's writer lease and a
// flush on any of them covers writes completed on all: the server advertises
// NBD_FLAG_CAN_MULTI_CONN. Requests of one connection run concurrently and are
// answered as they complete; memory per connection is bounded by
// Config.MaxInflightBytes.
//
// ClientHandshake is the client side of the handshake (tests and tools).
// The kernel's NBD client is attached by internal/attach (torusblk nbd,
// through the netlink interface).
//
// See docs/design/nbd.md for the supported protocol subset, limits and the
// error mapping.
package nbd
