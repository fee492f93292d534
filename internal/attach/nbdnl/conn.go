package nbdnl

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torus-storage/torus"
)

// ErrNoFamily: the kernel has no "nbd" generic-netlink family (the nbd
// module is not loaded, or it predates netlink). It matches
// torus.ErrUnavailable.
var ErrNoFamily error = &classified{
	msg:   "kernel NBD netlink family not available: load the nbd module or use torusblk fuse",
	class: torus.ErrUnavailable,
}

type classified struct {
	msg   string
	class error
}

func (e *classified) Error() string { return e.msg }
func (e *classified) Unwrap() error { return e.class }

// DefaultTimeout bounds a call when its ctx has no deadline.
const DefaultTimeout = 10 * time.Second

// Conn is a generic-netlink socket bound to the nbd family. Its methods
// are safe for concurrent use (they are serialized). Close is idempotent.
type Conn struct {
	mu     sync.Mutex
	fd     int // -1 once closed
	family uint16
	seq    uint32
}

// Open opens a generic-netlink socket and resolves the nbd family.
// Errors: ErrNoFamily without the kernel module; an error wrapping
// torus.ErrUnavailable when netlink sockets cannot be opened.
func Open(ctx context.Context) (*Conn, error) { return openFamily(ctx, FamilyName) }

// openFamily opens a Conn to the generic-netlink family name (the tests
// resolve the controller's own family, "nlctrl", which every kernel has).
func openFamily(ctx context.Context, name string) (*Conn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_GENERIC)
	if err != nil {
		return nil, fmt.Errorf("nbdnl: %w: generic-netlink socket: %w", torus.ErrUnavailable, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("nbdnl: %w: bind: %w", torus.ErrUnavailable, err)
	}
	// Connected to the kernel (port 0): plain write and read from here on,
	// which is also what lets the tests put a datagram socketpair in its
	// place (newConn).
	if err := unix.Connect(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("nbdnl: %w: connect: %w", torus.ErrUnavailable, err)
	}
	c := newConn(fd)
	msgs, err := c.do(ctx, getFamily{Name: name}, unix.GENL_ID_CTRL)
	if errors.Is(err, unix.ENOENT) && name == FamilyName {
		c.Close()
		return nil, ErrNoFamily
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("nbdnl: resolving the %q family: %w", name, err)
	}
	for _, m := range msgs {
		if c.family, err = decodeFamilyID(m); err == nil {
			return c, nil
		}
	}
	c.Close()
	if err == nil {
		err = fmt.Errorf("nbdnl: %w: no reply to CTRL_CMD_GETFAMILY", torus.ErrCorrupt)
	}
	return nil, err
}

// newConn wraps a connected datagram socket speaking netlink.
func newConn(fd int) *Conn { return &Conn{fd: fd} }

// Connect configures and starts a device (Connect's doc) and returns its
// index. Errors: torus.ErrInUse when the device is configured already
// (EBUSY), torus.ErrPermission without CAP_SYS_ADMIN, the kernel's errno
// otherwise (its log, dmesg, says why).
func (c *Conn) Connect(ctx context.Context, r Connect) (uint32, error) {
	msgs, err := c.call(ctx, r, "NBD_CMD_CONNECT")
	if err != nil {
		return 0, err
	}
	for _, m := range msgs {
		return DecodeConnect(m)
	}
	if r.Index >= 0 {
		return uint32(r.Index), nil // an old kernel, without the reply
	}
	return 0, fmt.Errorf("nbdnl: %w: NBD_CMD_CONNECT without a reply naming the device", torus.ErrCorrupt)
}

// Reconfigure hands a configured device new sockets and/or a new size
// (Reconfigure's doc). Errors: the kernel's errno (EINVAL for a device that
// is not configured or a backend that does not match).
func (c *Conn) Reconfigure(ctx context.Context, r Reconfigure) error {
	_, err := c.call(ctx, r, "NBD_CMD_RECONFIGURE")
	return err
}

// Disconnect disconnects device index.
func (c *Conn) Disconnect(ctx context.Context, index uint32) error {
	_, err := c.call(ctx, Disconnect{Index: index}, "NBD_CMD_DISCONNECT")
	return err
}

// Status lists the devices (index -1) or one device; a device that does
// not exist is not listed.
func (c *Conn) Status(ctx context.Context, index int) ([]Device, error) {
	msgs, err := c.call(ctx, Status{Index: index}, "NBD_CMD_STATUS")
	if err != nil {
		return nil, err
	}
	devs := []Device{}
	for _, m := range msgs {
		d, err := DecodeStatus(m)
		if err != nil {
			return nil, err
		}
		devs = append(devs, d...)
	}
	return devs, nil
}

// Close closes the socket.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd < 0 {
		return nil
	}
	err := unix.Close(c.fd)
	c.fd = -1
	return err
}

func (c *Conn) call(ctx context.Context, r Request, name string) ([]Message, error) {
	msgs, err := c.do(ctx, r, c.family)
	if err == nil {
		return msgs, nil
	}
	switch {
	case errors.Is(err, unix.EBUSY):
		err = fmt.Errorf("%w: %w", torus.ErrInUse, err)
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		err = fmt.Errorf("%w: %w (needs CAP_SYS_ADMIN)", torus.ErrPermission, err)
	}
	return nil, fmt.Errorf("nbdnl: %s: %w", name, err)
}

// do sends r to the kernel and collects the replies with its sequence
// number up to the acknowledgement. A negative acknowledgement is returned
// as its errno.
func (c *Conn) do(ctx context.Context, r Request, family uint16) ([]Message, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd < 0 {
		return nil, fmt.Errorf("nbdnl: %w", torus.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(DefaultTimeout)
	}
	c.seq++
	seq := c.seq
	if _, err := unix.Write(c.fd, r.Marshal(family, seq)); err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	var out []Message
	buf := make([]byte, 1<<16)
	for {
		wait := time.Until(deadline)
		if wait <= 0 {
			return nil, fmt.Errorf("%w: no acknowledgement from the kernel: %w", torus.ErrUnavailable, context.DeadlineExceeded)
		}
		tv := unix.NsecToTimeval(wait.Nanoseconds())
		if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return nil, fmt.Errorf("SO_RCVTIMEO: %w", err)
		}
		n, err := unix.Read(c.fd, buf)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue // the deadline check above ends a timed-out wait
		}
		if err != nil {
			return nil, fmt.Errorf("receive: %w", err)
		}
		// A copy: the messages kept in out must outlive the next receive.
		msgs, err := ParseMessages(append([]byte(nil), buf[:n]...))
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			if m.Seq != seq {
				continue // a late reply to an earlier call
			}
			switch m.Type {
			case unix.NLMSG_ERROR:
				if m.Errno != 0 {
					return nil, m.Errno
				}
				return out, nil
			case unix.NLMSG_DONE:
				return out, nil
			default:
				out = append(out, m)
			}
		}
	}
}
