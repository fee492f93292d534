package nbd

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/torus-storage/torus"
)

// ClientExport is what a client learns about an export from NBD_OPT_GO.
type ClientExport struct {
	Size  int64
	Flags uint16 // transmission flags
	// Block size constraints (zero when the server sent none).
	MinBlock, PreferredBlock, MaxBlock uint32
}

// ReadOnly reports whether the server marked the export read-only.
func (e ClientExport) ReadOnly() bool { return e.Flags&tflagReadOnly != 0 }

// ClientHandshake negotiates export as an NBD client over conn: fixed
// newstyle, then NBD_OPT_GO asking for the block size, without structured
// replies (the Linux kernel client speaks only simple replies). On success
// conn is in the transmission phase. It fails with an error wrapping
// torus.ErrNotExist when the server does not know the export.
func ClientHandshake(ctx context.Context, conn net.Conn, export string) (ClientExport, error) {
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
		defer conn.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	e, err := clientHandshake(conn, export)
	if err != nil && ctx.Err() != nil {
		return e, fmt.Errorf("nbd: handshake: %w", ctx.Err())
	}
	return e, err
}

func clientHandshake(rw io.ReadWriter, export string) (ClientExport, error) {
	var e ClientExport
	var h [18]byte
	if _, err := io.ReadFull(rw, h[:]); err != nil {
		return e, fmt.Errorf("nbd: handshake: %w", err)
	}
	if binary.BigEndian.Uint64(h[0:8]) != magicInit || binary.BigEndian.Uint64(h[8:16]) != magicOpt {
		return e, fmt.Errorf("nbd: handshake: %w: not a newstyle NBD server", errBadMagic)
	}
	sflags := binary.BigEndian.Uint16(h[16:18])
	if sflags&flagFixedNewstyle == 0 {
		return e, fmt.Errorf("nbd: handshake: server does not support fixed newstyle")
	}
	cflags := uint32(flagCFixedNewstyle)
	if sflags&flagNoZeroes != 0 {
		cflags |= flagCNoZeroes
	}
	msg := binary.BigEndian.AppendUint32(nil, cflags)
	msg = appendOption(msg, optGo, appendInfoRequest(nil, infoRequest{name: export, infos: []uint16{infoBlockSize}}))
	if _, err := rw.Write(msg); err != nil {
		return e, fmt.Errorf("nbd: handshake: %w", err)
	}
	gotExport := false
	for {
		var rh [20]byte
		if _, err := io.ReadFull(rw, rh[:]); err != nil {
			return e, fmt.Errorf("nbd: handshake: %w", err)
		}
		if binary.BigEndian.Uint64(rh[0:8]) != magicOptReply {
			return e, fmt.Errorf("nbd: handshake: %w: option reply", errBadMagic)
		}
		typ := binary.BigEndian.Uint32(rh[12:16])
		n := binary.BigEndian.Uint32(rh[16:20])
		if n > maxOptionLen {
			return e, fmt.Errorf("nbd: handshake: option reply of %d bytes", n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(rw, data); err != nil {
			return e, fmt.Errorf("nbd: handshake: %w", err)
		}
		switch {
		case typ == repAck:
			if !gotExport {
				return e, fmt.Errorf("nbd: handshake: server sent no export information")
			}
			return e, nil
		case typ == repInfo && len(data) >= 2:
			switch binary.BigEndian.Uint16(data) {
			case infoExport:
				if len(data) != 12 {
					return e, fmt.Errorf("nbd: handshake: bad NBD_INFO_EXPORT")
				}
				e.Size = int64(binary.BigEndian.Uint64(data[2:10]))
				e.Flags = binary.BigEndian.Uint16(data[10:12])
				gotExport = true
			case infoBlockSize:
				if len(data) == 14 {
					e.MinBlock = binary.BigEndian.Uint32(data[2:6])
					e.PreferredBlock = binary.BigEndian.Uint32(data[6:10])
					e.MaxBlock = binary.BigEndian.Uint32(data[10:14])
				}
			}
		case typ&repFlagError != 0:
			err := fmt.Errorf("nbd: export %q: server refused (reply %#x): %s", export, typ, data)
			if typ == repErrUnknown {
				err = fmt.Errorf("%w: %w", torus.ErrNotExist, err)
			}
			return e, err
		}
	}
}
