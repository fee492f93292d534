// Package peer carries torus.PeerService between processes: the protocol a
// writer, reader or healer uses to reach a storage daemon, and the daemon's
// side of fencing.
//
// The pieces, as siblings in the upspin manner:
//
//   - wire.go: pure encoding and decoding of frames, requests and responses
//     (no I/O; fuzzed).
//   - Server: serves any torus.PeerService over a net.Listener.
//   - Client: a torus.PeerService reached over TCP, many calls multiplexed on
//     one connection, reconnecting after a failure.
//   - Pool: a torus.PeerPool that maps peer IDs to cached Clients.
//   - Local: the daemon's own torus.PeerService, a torus.Store behind the
//     per-volume epoch fence.
//
// A daemon wires them as
//
//	local := peer.NewLocal(store, logger)
//	srv := peer.NewServer(local, peer.ServerConfig{}, logger)
//	go srv.Serve(ln)
//	...
//	srv.Close()
//
// and a writer reaches other daemons through
//
//	pool := peer.NewPool(resolve, peer.ClientConfig{}, logger)
//	svc, err := pool.Peer(ctx, id)
//	err = svc.Append(ctx, epoch, seg, off, p)
//
// Errors cross the wire by class: every torus sentinel (and io.EOF from
// ReadAt) returned by the served service is matched by errors.Is on the
// client. A connection failure fails the calls pending on it with an error
// wrapping torus.ErrUnavailable that names the peer's address; the next call
// dials again.
//
// Ordering: on one connection, Append, Sync, Fence and Delete execute in the
// order they were sent; reads run concurrently. The frame layout, limits and
// handling of malformed input are in docs/design/peer-protocol.md.
//
// Security: with ServerConfig.TLS the server requires mutual TLS 1.3 and
// checks every request against the role in the caller's certificate
// (auth.go: Authorize, RoleOf); ClientConfig.TLS makes a client speak TLS.
// Refusals wrap torus.ErrPermission on both sides. See docs/security.md.
//
// Logging: Warn for a lost connection or a protocol error from a remote
// party, Info for fences and listener start, Debug for per-request failures
// that belong to a known class and for connection open/close.
package peer
