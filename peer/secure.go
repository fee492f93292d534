package peer

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/torus-storage/torus"
)

// tlsRecordHandshake is the first byte of a TLS ClientHello record; a
// plain frame starts with the low byte of Magic.
const tlsRecordHandshake = 0x16

// errPlainRefused answers a plain request sent to a TLS daemon.
var errPlainRefused = fmt.Errorf("%w: peer: this daemon requires mutual TLS on its peer port: "+
	"plain connection refused (give the client --peer-cert, --peer-key and --peer-ca)", torus.ErrPermission)

// errHandshake is wrapped by the error of a failed TLS handshake.
var errHandshake = errors.New("peer: TLS handshake")

// secure runs the server side of TLS on a new connection: it tells a plain
// client that TLS is required (answering its first request), or completes
// the handshake, verifying the client's certificate, and takes the
// caller's identity from it. On success sc.c is the TLS connection.
func (sc *serverConn) secure() error {
	cfg := sc.s.cfg
	deadline := time.Now().Add(cfg.HandshakeTimeout)
	sc.raw.SetDeadline(deadline)
	var first [1]byte
	if _, err := io.ReadFull(sc.raw, first[:]); err != nil {
		return fmt.Errorf("peer: reading the first byte: %w", err)
	}
	switch first[0] {
	case tlsRecordHandshake:
	case byte(Magic & 0xff):
		sc.refusePlain(first[0])
		return errors.New("peer: plain connection to a TLS daemon")
	default:
		return fmt.Errorf("peer: connection starts with byte %#x: neither TLS nor the peer protocol", first[0])
	}
	tc := tls.Server(&prefixConn{Conn: sc.raw, prefix: first[:]}, cfg.TLS)
	ctx, cancel := context.WithDeadline(sc.ctx, deadline)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("%w: %w", errHandshake, err)
	}
	sc.raw.SetDeadline(time.Time{})
	st := tc.ConnectionState()
	if len(st.PeerCertificates) == 0 {
		// A config that does not require client certificates: the
		// caller has no identity and may do nothing.
		sc.id = Identity{}
	} else {
		sc.id = IdentityOf(st.PeerCertificates[0])
	}
	sc.log = sc.log.With("identity", sc.id.Name, "role", sc.id.Role.RoleLabel())
	sc.c = tc
	return nil
}

// refusePlain reads the rest of a plain frame's header and answers that
// request with errPlainRefused, so that the client's error names TLS.
func (sc *serverConn) refusePlain(first byte) {
	hdr := make([]byte, HeaderSize)
	hdr[0] = first
	if _, err := io.ReadFull(sc.raw, hdr[1:]); err != nil {
		return
	}
	h, err := ParseHeader(hdr, MaxBody)
	if err != nil || h.Response() {
		return
	}
	sc.log.Warn("peer request refused: plain connection to a TLS daemon", "op", h.Op)
	if f := sc.s.cfg.Refused; f != nil {
		f(Identity{}, "plain", h.Op.String())
	}
	body := AppendResponse(nil, h.Op, Response{Status: StatusOf(errPlainRefused), Msg: errPlainRefused.Error()})
	sc.raw.SetWriteDeadline(time.Now().Add(sc.s.cfg.WriteTimeout))
	if err := writeFrame(sc.raw, h.Op, FlagResponse, h.ID, body); err != nil {
		return
	}
	if tc, ok := sc.raw.(interface{ CloseWrite() error }); ok {
		tc.CloseWrite()
	}
	sc.raw.SetReadDeadline(time.Now().Add(time.Second))
	io.CopyN(io.Discard, sc.raw, int64(h.Length)+MaxBody)
}

// authorize checks a request of a TLS connection against the caller's
// role, logging and counting a refusal. Plain servers trust every caller.
func (sc *serverConn) authorize(ctx context.Context, r Request) error {
	if sc.s.cfg.TLS == nil {
		return nil
	}
	err := Authorize(sc.id, r)
	if check := sc.s.cfg.WriterCheck; err == nil && check != nil && sc.id.Role == RoleClient {
		switch r.Op {
		case OpAppend, OpSync:
			err = check(ctx, sc.id, r.Seg.Volume, r.Epoch)
		case OpFence:
			err = check(ctx, sc.id, r.Volume, r.Epoch)
		}
	}
	if err != nil {
		sc.log.Warn("peer request refused", "op", r.Op, "seg", r.Seg.String(), "volume", r.Volume, "epoch", r.Epoch, "err", err)
		if f := sc.s.cfg.Refused; f != nil {
			f(sc.id, sc.id.Role.RoleLabel(), r.Op.String())
		}
	}
	return err
}

// prefixConn replays bytes already read from Conn before reading more.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
