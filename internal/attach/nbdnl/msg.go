// Package nbdnl speaks the Linux kernel NBD client's generic-netlink
// interface (family "nbd", include/uapi/linux/nbd-netlink.h): connect a
// /dev/nbdN to sockets this process serves, hand a configured device new
// sockets after the process that served it died (reconfigure), resize,
// disconnect, and list the devices (status).
//
// The messages are built and parsed by pure functions (this file: a
// request struct to bytes, bytes to a reply), pinned by golden files in
// testdata; Conn (conn.go) is the socket at the edge. Netlink integers are
// in host byte order; the golden files are little-endian, the order of
// every platform Torus is built for.
//
// Without the nbd module the family does not resolve and Open fails with
// ErrNoFamily (which matches torus.ErrUnavailable).
package nbdnl

import (
	"encoding/binary"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torus-storage/torus"
)

// FamilyName and Version are the kernel's NBD_GENL_FAMILY_NAME and
// NBD_GENL_VERSION.
const (
	FamilyName = "nbd"
	Version    = 1
)

// Commands (enum NBD_CMD_*).
const (
	cmdConnect     = 1
	cmdDisconnect  = 2
	cmdReconfigure = 3
	cmdLinkDead    = 4
	cmdStatus      = 5
)

// Attributes (enum NBD_ATTR_*).
const (
	attrIndex           = 1  // u32
	attrSizeBytes       = 2  // u64
	attrBlockSizeBytes  = 3  // u64
	attrTimeout         = 4  // u64, seconds
	attrServerFlags     = 5  // u64, the NBD transmission flags
	attrClientFlags     = 6  // u64, NBD_CFLAG_*
	attrSockets         = 7  // nested: sockItem { sockFD }
	attrDeadConnTimeout = 8  // u64, seconds
	attrDeviceList      = 9  // nested: deviceItem { deviceIndex, deviceConnected }
	attrBackend         = 10 // string, NBD_ATTR_BACKEND_IDENTIFIER (Linux 5.14)

	sockItem = 1 // NBD_SOCK_ITEM
	sockFD   = 1 // NBD_SOCK_FD, u32

	deviceItem      = 1 // NBD_DEVICE_ITEM
	deviceIndex     = 1 // NBD_DEVICE_INDEX, u32
	deviceConnected = 2 // NBD_DEVICE_CONNECTED, u8
)

// Client flags (nbd.h NBD_CFLAG_*). Torus sets neither: the device must
// outlive the process that attached it, and a closed device stays
// connected.
const (
	CFlagDestroyOnDisconnect = 1 << 0
	CFlagDisconnectOnClose   = 1 << 1
)

// Request is a message to the kernel. Marshal returns the whole netlink
// message (nlmsghdr, genlmsghdr, attributes) with NLM_F_REQUEST|NLM_F_ACK,
// addressed to the family id and carrying seq.
type Request interface {
	Marshal(family uint16, seq uint32) []byte
}

// Connect is NBD_CMD_CONNECT: configure a device and start it on Sockets
// (the client ends of connections already negotiated: the kernel speaks
// only the transmission phase). The reply names the device's index.
type Connect struct {
	// Index is the device (/dev/nbdIndex); -1 lets the kernel pick a free
	// one (or create one).
	Index int
	// Sockets are file descriptors of connected stream sockets; the
	// kernel takes its own reference, so the caller may close them once
	// the call returns.
	Sockets []int
	// SizeBytes is the device's size; BlockSizeBytes its logical block
	// size (512 to the page size, a power of two).
	SizeBytes, BlockSizeBytes uint64
	// ServerFlags are the export's transmission flags from the handshake
	// (NBD_FLAG_*).
	ServerFlags uint64
	// ClientFlags are NBD_CFLAG_* (CFlagDestroyOnDisconnect, ...).
	ClientFlags uint64
	// Timeout is the per-request timeout; 0 disables it (a slow cluster
	// then stalls I/O instead of killing a live connection). It is always
	// sent. Whole seconds.
	Timeout time.Duration
	// DeadConnTimeout is how long the kernel holds I/O when every
	// connection is dead, waiting for a Reconfigure with new sockets,
	// before it fails the I/O. Whole seconds; always sent.
	DeadConnTimeout time.Duration
	// Backend is NBD_ATTR_BACKEND_IDENTIFIER ("" omits it): shown in
	// /sys/block/nbdN/backend, and a Reconfigure must then name it too.
	Backend string
}

// Marshal implements Request.
func (r Connect) Marshal(family uint16, seq uint32) []byte {
	var e encoder
	e.header(family, seq, cmdConnect)
	if r.Index >= 0 {
		e.u32(attrIndex, uint32(r.Index))
	}
	e.u64(attrSizeBytes, r.SizeBytes)
	e.u64(attrBlockSizeBytes, r.BlockSizeBytes)
	e.u64(attrServerFlags, r.ServerFlags)
	e.u64(attrClientFlags, r.ClientFlags)
	e.u64(attrTimeout, seconds(r.Timeout))
	e.u64(attrDeadConnTimeout, seconds(r.DeadConnTimeout))
	if r.Backend != "" {
		e.str(attrBackend, r.Backend)
	}
	e.sockets(r.Sockets)
	return e.finish()
}

// Reconfigure is NBD_CMD_RECONFIGURE of a configured device: Sockets
// replace dead connections (a live one is not replaced, and the kernel
// reports no error for a socket it had no dead slot for), SizeBytes
// resizes.
type Reconfigure struct {
	Index   uint32
	Sockets []int
	// SizeBytes is the new size; 0 leaves it.
	SizeBytes uint64
	// Backend must be the one given to Connect, if any.
	Backend string
}

// Marshal implements Request.
func (r Reconfigure) Marshal(family uint16, seq uint32) []byte {
	var e encoder
	e.header(family, seq, cmdReconfigure)
	e.u32(attrIndex, r.Index)
	if r.SizeBytes != 0 {
		e.u64(attrSizeBytes, r.SizeBytes)
	}
	if r.Backend != "" {
		e.str(attrBackend, r.Backend)
	}
	if len(r.Sockets) > 0 {
		e.sockets(r.Sockets)
	}
	return e.finish()
}

// Disconnect is NBD_CMD_DISCONNECT: the kernel sends NBD_CMD_DISC on the
// connections, fails what is queued and unconfigures the device.
type Disconnect struct{ Index uint32 }

// Marshal implements Request.
func (r Disconnect) Marshal(family uint16, seq uint32) []byte {
	var e encoder
	e.header(family, seq, cmdDisconnect)
	e.u32(attrIndex, r.Index)
	return e.finish()
}

// Status is NBD_CMD_STATUS: which devices exist and whether each is
// connected (configured). Index -1 asks for every device.
type Status struct{ Index int }

// Marshal implements Request.
func (r Status) Marshal(family uint16, seq uint32) []byte {
	var e encoder
	e.header(family, seq, cmdStatus)
	if r.Index >= 0 {
		e.u32(attrIndex, uint32(r.Index))
	}
	return e.finish()
}

// getFamily is CTRL_CMD_GETFAMILY to the generic-netlink controller: the
// id of a family by name.
type getFamily struct{ Name string }

func (r getFamily) Marshal(_ uint16, seq uint32) []byte {
	var e encoder
	e.b = append(e.b, make([]byte, unix.SizeofNlMsghdr)...)
	e.genl(unix.GENL_ID_CTRL, seq, unix.CTRL_CMD_GETFAMILY, 2)
	e.str(unix.CTRL_ATTR_FAMILY_NAME, r.Name)
	return e.finish()
}

func seconds(d time.Duration) uint64 {
	if d <= 0 {
		return 0
	}
	return uint64((d + time.Second - 1) / time.Second)
}

// encoder appends a netlink message.
type encoder struct {
	b    []byte
	nest []int // offsets of open nested attributes
}

var ne = binary.NativeEndian

const genlHdrLen = 4 // struct genlmsghdr: cmd, version, reserved u16

func (e *encoder) header(family uint16, seq uint32, cmd uint8) {
	e.b = append(e.b, make([]byte, unix.SizeofNlMsghdr)...)
	e.genl(family, seq, cmd, Version)
}

func (e *encoder) genl(family uint16, seq uint32, cmd, version uint8) {
	ne.PutUint16(e.b[4:], family)
	ne.PutUint16(e.b[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	ne.PutUint32(e.b[8:], seq)
	// nlmsg_pid 0: the kernel.
	e.b = append(e.b, cmd, version, 0, 0) // genlmsghdr
}

func (e *encoder) attr(typ uint16, payload []byte) {
	l := unix.SizeofNlAttr + len(payload)
	e.b = ne.AppendUint16(e.b, uint16(l))
	e.b = ne.AppendUint16(e.b, typ)
	e.b = append(e.b, payload...)
	e.pad()
}

func (e *encoder) pad() {
	for len(e.b)%unix.NLA_ALIGNTO != 0 {
		e.b = append(e.b, 0)
	}
}

func (e *encoder) u32(typ uint16, v uint32) { e.attr(typ, ne.AppendUint32(nil, v)) }
func (e *encoder) u64(typ uint16, v uint64) { e.attr(typ, ne.AppendUint64(nil, v)) }
func (e *encoder) str(typ uint16, s string) { e.attr(typ, append([]byte(s), 0)) }

func (e *encoder) begin(typ uint16) {
	e.nest = append(e.nest, len(e.b))
	e.b = ne.AppendUint16(e.b, 0)
	e.b = ne.AppendUint16(e.b, typ|unix.NLA_F_NESTED)
}

func (e *encoder) end() {
	off := e.nest[len(e.nest)-1]
	e.nest = e.nest[:len(e.nest)-1]
	ne.PutUint16(e.b[off:], uint16(len(e.b)-off))
}

func (e *encoder) sockets(fds []int) {
	e.begin(attrSockets)
	for _, fd := range fds {
		e.begin(sockItem)
		e.u32(sockFD, uint32(fd))
		e.end()
	}
	e.end()
}

func (e *encoder) finish() []byte {
	ne.PutUint32(e.b[0:], uint32(len(e.b)))
	return e.b
}

// Message is one parsed netlink message of a reply.
type Message struct {
	Type  uint16 // the family id, or NLMSG_ERROR / NLMSG_DONE
	Flags uint16
	Seq   uint32
	// Cmd and Attrs are the generic-netlink command and attributes (not
	// set for NLMSG_ERROR and NLMSG_DONE).
	Cmd   uint8
	Attrs []byte
	// Errno is NLMSG_ERROR's error: 0 is the acknowledgement.
	Errno unix.Errno
}

// ParseMessages splits a datagram from the kernel into its messages.
// Errors wrap torus.ErrCorrupt.
func ParseMessages(b []byte) ([]Message, error) {
	var out []Message
	for len(b) > 0 {
		if len(b) < unix.SizeofNlMsghdr {
			return nil, fmt.Errorf("nbdnl: %w: %d trailing bytes, short of a header", torus.ErrCorrupt, len(b))
		}
		l := int(ne.Uint32(b[0:]))
		if l < unix.SizeofNlMsghdr || l > len(b) {
			return nil, fmt.Errorf("nbdnl: %w: message length %d of %d bytes", torus.ErrCorrupt, l, len(b))
		}
		m := Message{Type: ne.Uint16(b[4:]), Flags: ne.Uint16(b[6:]), Seq: ne.Uint32(b[8:])}
		body := b[unix.SizeofNlMsghdr:l]
		switch m.Type {
		case unix.NLMSG_ERROR:
			if len(body) < 4 {
				return nil, fmt.Errorf("nbdnl: %w: short NLMSG_ERROR", torus.ErrCorrupt)
			}
			m.Errno = unix.Errno(-int32(ne.Uint32(body)))
		case unix.NLMSG_DONE, unix.NLMSG_NOOP:
		default:
			if len(body) < genlHdrLen {
				return nil, fmt.Errorf("nbdnl: %w: message without a generic-netlink header", torus.ErrCorrupt)
			}
			m.Cmd = body[0]
			m.Attrs = body[genlHdrLen:]
		}
		out = append(out, m)
		al := (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
		if al > len(b) {
			al = len(b)
		}
		b = b[al:]
	}
	return out, nil
}

// attribute is one netlink attribute (flags masked off the type).
type attribute struct {
	typ     uint16
	nested  bool
	payload []byte
}

// parseAttrs splits a run of attributes. Errors wrap torus.ErrCorrupt.
func parseAttrs(b []byte) ([]attribute, error) {
	var out []attribute
	for len(b) > 0 {
		if len(b) < unix.SizeofNlAttr {
			return nil, fmt.Errorf("nbdnl: %w: %d trailing attribute bytes", torus.ErrCorrupt, len(b))
		}
		l := int(ne.Uint16(b[0:]))
		if l < unix.SizeofNlAttr || l > len(b) {
			return nil, fmt.Errorf("nbdnl: %w: attribute length %d of %d bytes", torus.ErrCorrupt, l, len(b))
		}
		t := ne.Uint16(b[2:])
		out = append(out, attribute{typ: t &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER), nested: t&unix.NLA_F_NESTED != 0, payload: b[unix.SizeofNlAttr:l]})
		al := (l + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if al > len(b) {
			al = len(b)
		}
		b = b[al:]
	}
	return out, nil
}

func (a attribute) u32() (uint32, error) {
	if len(a.payload) != 4 {
		return 0, fmt.Errorf("nbdnl: %w: attribute %d: %d bytes, want a u32", torus.ErrCorrupt, a.typ, len(a.payload))
	}
	return ne.Uint32(a.payload), nil
}

// Device is one device of a Status reply.
type Device struct {
	Index     uint32
	Connected bool // configured: connected, or waiting for a reconnect
}

// Name is the device's path, /dev/nbdIndex.
func (d Device) Name() string { return fmt.Sprintf("/dev/nbd%d", d.Index) }

// DecodeStatus reads the devices of an NBD_CMD_STATUS reply:
// NBD_ATTR_DEVICE_LIST { NBD_DEVICE_ITEM { NBD_DEVICE_INDEX u32,
// NBD_DEVICE_CONNECTED u8 } ... }. Errors wrap torus.ErrCorrupt.
func DecodeStatus(m Message) ([]Device, error) {
	if m.Cmd != cmdStatus {
		return nil, fmt.Errorf("nbdnl: %w: status reply has command %d", torus.ErrCorrupt, m.Cmd)
	}
	top, err := parseAttrs(m.Attrs)
	if err != nil {
		return nil, err
	}
	devs := []Device{}
	for _, a := range top {
		if a.typ != attrDeviceList {
			continue
		}
		items, err := parseAttrs(a.payload)
		if err != nil {
			return nil, err
		}
		for _, it := range items {
			if it.typ != deviceItem {
				continue
			}
			fields, err := parseAttrs(it.payload)
			if err != nil {
				return nil, err
			}
			var d Device
			var haveIndex bool
			for _, f := range fields {
				switch f.typ {
				case deviceIndex:
					if d.Index, err = f.u32(); err != nil {
						return nil, err
					}
					haveIndex = true
				case deviceConnected:
					if len(f.payload) < 1 {
						return nil, fmt.Errorf("nbdnl: %w: empty NBD_DEVICE_CONNECTED", torus.ErrCorrupt)
					}
					d.Connected = f.payload[0] != 0
				}
			}
			if !haveIndex {
				return nil, fmt.Errorf("nbdnl: %w: device item without an index", torus.ErrCorrupt)
			}
			devs = append(devs, d)
		}
	}
	return devs, nil
}

// DecodeConnect reads the device index of an NBD_CMD_CONNECT reply.
func DecodeConnect(m Message) (uint32, error) {
	if m.Cmd != cmdConnect {
		return 0, fmt.Errorf("nbdnl: %w: connect reply has command %d", torus.ErrCorrupt, m.Cmd)
	}
	return findU32(m.Attrs, attrIndex, "NBD_ATTR_INDEX")
}

// decodeFamilyID reads CTRL_ATTR_FAMILY_ID of a CTRL_CMD_GETFAMILY reply.
func decodeFamilyID(m Message) (uint16, error) {
	attrs, err := parseAttrs(m.Attrs)
	if err != nil {
		return 0, err
	}
	for _, a := range attrs {
		if a.typ == unix.CTRL_ATTR_FAMILY_ID {
			if len(a.payload) != 2 {
				return 0, fmt.Errorf("nbdnl: %w: CTRL_ATTR_FAMILY_ID of %d bytes", torus.ErrCorrupt, len(a.payload))
			}
			return ne.Uint16(a.payload), nil
		}
	}
	return 0, fmt.Errorf("nbdnl: %w: family reply without CTRL_ATTR_FAMILY_ID", torus.ErrCorrupt)
}

func findU32(b []byte, typ uint16, name string) (uint32, error) {
	attrs, err := parseAttrs(b)
	if err != nil {
		return 0, err
	}
	for _, a := range attrs {
		if a.typ == typ {
			return a.u32()
		}
	}
	return 0, fmt.Errorf("nbdnl: %w: reply without %s", torus.ErrCorrupt, name)
}
