package life

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/torus-storage/torus/nbd"
)

// NBD simple-reply protocol constants (doc/proto.md of the NBD project).
const (
	nbdRequestMagic = 0x25609513
	nbdReplyMagic   = 0x67446698
	nbdCmdRead      = 0
	nbdCmdWrite     = 1
	nbdCmdDisc      = 2
	nbdCmdFlush     = 3
	nbdFlagFUA      = 1
)

var nbdCmdNames = map[uint16]string{nbdCmdRead: "READ", nbdCmdWrite: "WRITE", nbdCmdDisc: "DISC", nbdCmdFlush: "FLUSH"}

// nbdError is an error reply from the server: the request reached it and
// failed there (as opposed to a broken connection or a timeout).
type nbdError struct {
	Cmd    string
	Offset int64
	Length int
	Errno  uint32
}

func (e *nbdError) Error() string {
	return fmt.Sprintf("nbd %s off=%d len=%d: server error %d (%s)", e.Cmd, e.Offset, e.Length, e.Errno, errnoName(e.Errno))
}

func errnoName(n uint32) string {
	switch n {
	case 1:
		return "EPERM"
	case 5:
		return "EIO"
	case 12:
		return "ENOMEM"
	case 22:
		return "EINVAL"
	case 28:
		return "ENOSPC"
	case 75:
		return "EOVERFLOW"
	case 95:
		return "ENOTSUP"
	case 108:
		return "ESHUTDOWN"
	}
	return "?"
}

// nbdClient is a minimal NBD client for tests: one request at a time,
// simple replies, every request bounded by a timeout.
type nbdClient struct {
	conn    net.Conn
	export  string
	size    int64
	handle  uint64
	timeout time.Duration
	broken  error
}

// dialNBD connects with dial and negotiates export.
func dialNBD(ctx context.Context, dial func() (net.Conn, error), export string, timeout time.Duration) (*nbdClient, error) {
	conn, err := dial()
	if err != nil {
		return nil, fmt.Errorf("nbd dial: %w", err)
	}
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	e, err := nbd.ClientHandshake(hctx, conn, export)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return &nbdClient{conn: conn, export: export, size: e.Size, timeout: timeout}, nil
}

func (c *nbdClient) do(cmd, flags uint16, off int64, length int, data []byte, out []byte) error {
	if c.broken != nil {
		return fmt.Errorf("nbd connection broken earlier: %w", c.broken)
	}
	c.handle++
	h := c.handle
	req := make([]byte, 28, 28+len(data))
	binary.BigEndian.PutUint32(req[0:], nbdRequestMagic)
	binary.BigEndian.PutUint16(req[4:], flags)
	binary.BigEndian.PutUint16(req[6:], cmd)
	binary.BigEndian.PutUint64(req[8:], h)
	binary.BigEndian.PutUint64(req[16:], uint64(off))
	binary.BigEndian.PutUint32(req[24:], uint32(length))
	req = append(req, data...)
	c.conn.SetDeadline(time.Now().Add(c.timeout))
	fail := func(err error) error {
		c.broken = err
		return fmt.Errorf("nbd %s off=%d len=%d: %w", nbdCmdNames[cmd], off, length, err)
	}
	if _, err := c.conn.Write(req); err != nil {
		return fail(err)
	}
	if cmd == nbdCmdDisc {
		return nil
	}
	var rep [16]byte
	if _, err := io.ReadFull(c.conn, rep[:]); err != nil {
		return fail(err)
	}
	if m := binary.BigEndian.Uint32(rep[0:]); m != nbdReplyMagic {
		return fail(fmt.Errorf("bad reply magic %#x", m))
	}
	if got := binary.BigEndian.Uint64(rep[8:]); got != h {
		return fail(fmt.Errorf("reply handle %d, want %d", got, h))
	}
	if errno := binary.BigEndian.Uint32(rep[4:]); errno != 0 {
		return &nbdError{Cmd: nbdCmdNames[cmd], Offset: off, Length: length, Errno: errno}
	}
	if out != nil {
		if _, err := io.ReadFull(c.conn, out); err != nil {
			return fail(err)
		}
	}
	return nil
}

// ReadAt reads len(p) bytes at off.
func (c *nbdClient) ReadAt(p []byte, off int64) error {
	return c.do(nbdCmdRead, 0, off, len(p), nil, p)
}

// WriteAt writes p at off, with FUA if fua.
func (c *nbdClient) WriteAt(p []byte, off int64, fua bool) error {
	var f uint16
	if fua {
		f = nbdFlagFUA
	}
	return c.do(nbdCmdWrite, f, off, len(p), p, nil)
}

// Flush sends NBD_CMD_FLUSH.
func (c *nbdClient) Flush() error { return c.do(nbdCmdFlush, 0, 0, 0, nil, nil) }

// Close disconnects politely (NBD_CMD_DISC) and closes the socket.
func (c *nbdClient) Close() error {
	if c.broken == nil {
		c.do(nbdCmdDisc, 0, 0, 0, nil, nil)
	}
	return c.conn.Close()
}

// Abort closes the socket without NBD_CMD_DISC.
func (c *nbdClient) Abort() { c.conn.Close() }
