package nbdnl

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torus-storage/torus"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the golden files in testdata")

// littleEndian fails the test on a big-endian host: the golden files hold
// little-endian integers (netlink uses host order).
func littleEndian(t *testing.T) {
	t.Helper()
	if ne.Uint16([]byte{1, 0}) != 1 {
		t.Fatal("the golden files are little-endian; this host is not")
	}
}

const testFamily = 0x2a // what the kernel might assign to "nbd"

// TestMessagesGolden pins every request Torus sends (testdata/*.txt: the
// message decoded field by field, then its bytes). Review a change with
// -rewrite and git diff.
func TestMessagesGolden(t *testing.T) {
	littleEndian(t)
	for _, tc := range []struct {
		name string
		req  Request
	}{
		{"getfamily", getFamily{Name: FamilyName}},
		{"connect", Connect{Index: 3, Sockets: []int{7}, SizeBytes: 1 << 30, BlockSizeBytes: 4096,
			ServerFlags: 0x1 | 0x4 | 0x20 | 0x100, DeadConnTimeout: 2 * time.Minute, Backend: "torus:pv1"}},
		{"connect-any-device", Connect{Index: -1, Sockets: []int{7, 8}, SizeBytes: 64 << 20, BlockSizeBytes: 512,
			ServerFlags: 0x3, Timeout: 1500 * time.Millisecond}},
		{"reconfigure", Reconfigure{Index: 3, Sockets: []int{9}, Backend: "torus:pv1"}},
		{"resize", Reconfigure{Index: 3, SizeBytes: 2 << 30, Backend: "torus:pv1"}},
		{"disconnect", Disconnect{Index: 3}},
		{"status", Status{Index: 3}},
		{"status-all", Status{Index: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fam := uint16(testFamily)
			if _, ok := tc.req.(getFamily); ok {
				fam = unix.GENL_ID_CTRL
			}
			b := tc.req.Marshal(fam, 1)
			got := dump(t, b)
			golden := filepath.Join("testdata", tc.name+".txt")
			if *rewrite {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Fatalf("%s differs (run with -rewrite and review the diff):\n%s", golden, got)
			}
		})
	}
}

// dump renders a request: header fields, the attribute tree with the
// kernel's names, then the bytes. It re-parses b with the package's own
// decoder, so the golden file also checks that lengths and padding add up.
func dump(t *testing.T, b []byte) string {
	t.Helper()
	msgs, err := ParseMessages(b)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("ParseMessages: %d messages, %v", len(msgs), err)
	}
	m := msgs[0]
	var w strings.Builder
	fmt.Fprintf(&w, "nlmsghdr len=%d type=%#x flags=%#x seq=%d pid=0\n", len(b), m.Type, m.Flags, m.Seq)
	names := nbdAttrNames
	cmd := nbdCmdNames[m.Cmd]
	if m.Type == unix.GENL_ID_CTRL {
		names = map[uint16]string{unix.CTRL_ATTR_FAMILY_NAME: "CTRL_ATTR_FAMILY_NAME"}
		cmd = "CTRL_CMD_GETFAMILY"
	}
	fmt.Fprintf(&w, "genlmsghdr cmd=%d (%s) version=%d\n", m.Cmd, cmd, b[unix.SizeofNlMsghdr+1])
	dumpAttrs(t, &w, m.Attrs, names, 1)
	w.WriteString("bytes:\n")
	w.WriteString(hex.Dump(b))
	return w.String()
}

var nbdCmdNames = map[uint8]string{cmdConnect: "NBD_CMD_CONNECT", cmdDisconnect: "NBD_CMD_DISCONNECT",
	cmdReconfigure: "NBD_CMD_RECONFIGURE", cmdLinkDead: "NBD_CMD_LINK_DEAD", cmdStatus: "NBD_CMD_STATUS"}

var nbdAttrNames = map[uint16]string{attrIndex: "NBD_ATTR_INDEX", attrSizeBytes: "NBD_ATTR_SIZE_BYTES",
	attrBlockSizeBytes: "NBD_ATTR_BLOCK_SIZE_BYTES", attrTimeout: "NBD_ATTR_TIMEOUT",
	attrServerFlags: "NBD_ATTR_SERVER_FLAGS", attrClientFlags: "NBD_ATTR_CLIENT_FLAGS",
	attrSockets: "NBD_ATTR_SOCKETS", attrDeadConnTimeout: "NBD_ATTR_DEAD_CONN_TIMEOUT",
	attrDeviceList: "NBD_ATTR_DEVICE_LIST", attrBackend: "NBD_ATTR_BACKEND_IDENTIFIER"}

// Inside NBD_ATTR_SOCKETS: NBD_SOCK_ITEM { NBD_SOCK_FD }.
var sockNames = map[uint16]string{sockItem: "NBD_SOCK_ITEM"}
var sockItemNames = map[uint16]string{sockFD: "NBD_SOCK_FD"}

func dumpAttrs(t *testing.T, w *strings.Builder, b []byte, names map[uint16]string, depth int) {
	attrs, err := parseAttrs(b)
	if err != nil {
		t.Fatal(err)
	}
	ind := strings.Repeat("  ", depth)
	for _, a := range attrs {
		name := names[a.typ]
		if name == "" {
			name = "?"
		}
		switch {
		case a.nested:
			fmt.Fprintf(w, "%s%s(%d) nested\n", ind, name, a.typ)
			sub := sockNames
			if a.typ == sockItem && depth > 1 {
				sub = sockItemNames
			}
			dumpAttrs(t, w, a.payload, sub, depth+1)
		case strings.HasSuffix(name, "_NAME") || strings.HasSuffix(name, "_IDENTIFIER"):
			fmt.Fprintf(w, "%s%s(%d) string %q\n", ind, name, a.typ, a.payload)
		case len(a.payload) == 4:
			fmt.Fprintf(w, "%s%s(%d) u32 %d\n", ind, name, a.typ, ne.Uint32(a.payload))
		case len(a.payload) == 8:
			fmt.Fprintf(w, "%s%s(%d) u64 %d\n", ind, name, a.typ, ne.Uint64(a.payload))
		default:
			fmt.Fprintf(w, "%s%s(%d) %x\n", ind, name, a.typ, a.payload)
		}
	}
}

// statusReply is an NBD_CMD_STATUS reply as the kernel's nbd_genl_status
// builds it (genlmsg_put_reply, nla_nest_start_noflag(NBD_ATTR_DEVICE_LIST),
// per device populate_nbd_status: nla_nest_start_noflag(NBD_DEVICE_ITEM),
// nla_put_u32(NBD_DEVICE_INDEX), nla_put_u8(NBD_DEVICE_CONNECTED)), written
// out by hand, byte by byte, for devices 0 (free) and 3 (connected),
// followed in the same datagram by the acknowledgement.
var statusReply = []byte{
	// nlmsghdr: len 64, type 0x2a (the family), flags 0, seq 1, pid 0
	64, 0, 0, 0, 0x2a, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,
	// genlmsghdr: cmd NBD_CMD_STATUS, version 1
	5, 1, 0, 0,
	// NBD_ATTR_DEVICE_LIST (9), len 44, no NLA_F_NESTED (noflag)
	44, 0, 9, 0,
	// NBD_DEVICE_ITEM (1), len 20
	20, 0, 1, 0,
	8, 0, 1, 0, 0, 0, 0, 0, // NBD_DEVICE_INDEX u32 0
	5, 0, 2, 0, 0, 0, 0, 0, // NBD_DEVICE_CONNECTED u8 0, padded
	// NBD_DEVICE_ITEM (1), len 20
	20, 0, 1, 0,
	8, 0, 1, 0, 3, 0, 0, 0, // NBD_DEVICE_INDEX u32 3
	5, 0, 2, 0, 1, 0, 0, 0, // NBD_DEVICE_CONNECTED u8 1, padded
	// nlmsghdr: len 36, NLMSG_ERROR (2), seq 1; error 0 (ack), then the
	// request's header
	36, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,
	0, 0, 0, 0,
	20, 0, 0, 0, 0x2a, 0, 5, 0, 1, 0, 0, 0, 0, 0, 0, 0,
}

func TestDecodeStatusReply(t *testing.T) {
	littleEndian(t)
	msgs, err := ParseMessages(statusReply)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 2 || msgs[1].Type != unix.NLMSG_ERROR || msgs[1].Errno != 0 || msgs[1].Seq != 1 {
		t.Fatalf("messages %+v, want the reply then the ack", msgs)
	}
	devs, err := DecodeStatus(msgs[0])
	if err != nil {
		t.Fatal(err)
	}
	want := []Device{{Index: 0}, {Index: 3, Connected: true}}
	if fmt.Sprint(devs) != fmt.Sprint(want) {
		t.Fatalf("devices %+v, want %+v", devs, want)
	}
	if devs[1].Name() != "/dev/nbd3" {
		t.Fatalf("name %s", devs[1].Name())
	}
	// An empty list (Status of a device that does not exist).
	empty := append([]byte(nil), statusReply[:20]...)
	empty = append(empty, 4, 0, 9, 0)
	ne.PutUint32(empty, 24)
	msgs, err = ParseMessages(empty)
	if err != nil {
		t.Fatal(err)
	}
	if devs, err := DecodeStatus(msgs[0]); err != nil || len(devs) != 0 {
		t.Fatalf("empty list: %v, %v", devs, err)
	}
}

// TestDecodeErrors: a negative acknowledgement carries the errno;
// truncated and inconsistent messages are ErrCorrupt, never a panic.
func TestDecodeErrors(t *testing.T) {
	littleEndian(t)
	nack := []byte{36, 0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0,
		0xf0, 0xff, 0xff, 0xff, // -16: EBUSY
		20, 0, 0, 0, 0x2a, 0, 5, 0, 7, 0, 0, 0, 0, 0, 0, 0}
	msgs, err := ParseMessages(nack)
	if err != nil || len(msgs) != 1 || msgs[0].Errno != unix.EBUSY {
		t.Fatalf("nack: %+v, %v", msgs, err)
	}
	for i := 1; i < len(statusReply); i++ {
		msgs, err := ParseMessages(statusReply[:i])
		if err != nil {
			if !errors.Is(err, torus.ErrCorrupt) {
				t.Fatalf("prefix %d: %v, want ErrCorrupt", i, err)
			}
			continue
		}
		for _, m := range msgs {
			if m.Cmd == cmdStatus {
				if _, err := DecodeStatus(m); err != nil && !errors.Is(err, torus.ErrCorrupt) {
					t.Fatalf("prefix %d: %v", i, err)
				}
			}
		}
	}
	bad := append([]byte(nil), statusReply[:64]...)
	bad[24+4] = 9 // NBD_DEVICE_INDEX claims 9 bytes
	msgs, _ = ParseMessages(bad)
	if _, err := DecodeStatus(msgs[0]); !errors.Is(err, torus.ErrCorrupt) {
		t.Fatalf("bad index length: %v", err)
	}
}

func TestDecodeConnectReply(t *testing.T) {
	littleEndian(t)
	// nbd_connect_reply: genlmsg_put_reply(NBD_CMD_CONNECT), nla_put_u32(NBD_ATTR_INDEX).
	reply := []byte{28, 0, 0, 0, 0x2a, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0,
		1, 1, 0, 0,
		8, 0, 1, 0, 5, 0, 0, 0}
	msgs, err := ParseMessages(reply)
	if err != nil {
		t.Fatal(err)
	}
	if idx, err := DecodeConnect(msgs[0]); err != nil || idx != 5 {
		t.Fatalf("index %d, %v", idx, err)
	}
}

// TestOpenHere runs against this machine's kernel. Resolving the
// controller's own family proves the framing of CTRL_CMD_GETFAMILY to a
// real kernel; "nbd" resolves only where the module is loaded, and where
// it is not, Open must say so, classified.
func TestOpenHere(t *testing.T) {
	ctx := context.Background()
	c, err := openFamily(ctx, "nlctrl")
	if err != nil {
		t.Fatalf("resolving nlctrl: %v", err)
	}
	if c.family != unix.GENL_ID_CTRL {
		t.Fatalf("nlctrl has id %#x, want %#x", c.family, unix.GENL_ID_CTRL)
	}
	c.Close()
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := c.Status(ctx, -1); !errors.Is(err, torus.ErrClosed) {
		t.Fatalf("Status after Close: %v", err)
	}
	if _, err := openFamily(ctx, "torusnofamily"); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("unknown family: %v, want ENOENT", err)
	}
	c, err = Open(ctx)
	if _, statErr := os.Stat("/sys/module/nbd"); statErr != nil {
		if !errors.Is(err, ErrNoFamily) || !errors.Is(err, torus.ErrUnavailable) {
			t.Fatalf("Open without the nbd module: %v, want ErrNoFamily", err)
		}
		if err.Error() != "kernel NBD netlink family not available: load the nbd module or use torusblk fuse" {
			t.Fatalf("message %q", err)
		}
		return
	}
	if err != nil {
		t.Fatalf("Open with the nbd module loaded: %v", err)
	}
	defer c.Close()
	if _, err := c.Status(ctx, -1); err != nil {
		t.Fatalf("Status: %v", err)
	}
}

func TestSeconds(t *testing.T) {
	for d, want := range map[time.Duration]uint64{0: 0, -time.Second: 0, time.Millisecond: 1, time.Second: 1, 2 * time.Minute: 120} {
		if got := seconds(d); got != want {
			t.Errorf("seconds(%v) = %d, want %d", d, got, want)
		}
	}
}

// FuzzDecode: nothing the kernel (or anything on the socket) sends makes
// the decoders panic; every error is ErrCorrupt.
func FuzzDecode(f *testing.F) {
	f.Add(statusReply)
	f.Add(Connect{Index: 1, Sockets: []int{3}, SizeBytes: 4096}.Marshal(testFamily, 1))
	f.Fuzz(func(t *testing.T, b []byte) {
		msgs, err := ParseMessages(b)
		if err != nil {
			if !errors.Is(err, torus.ErrCorrupt) {
				t.Fatal(err)
			}
			return
		}
		for _, m := range msgs {
			for _, err := range []error{
				func() error { _, err := DecodeStatus(m); return err }(),
				func() error { _, err := DecodeConnect(m); return err }(),
				func() error { _, err := decodeFamilyID(m); return err }(),
			} {
				if err != nil && !errors.Is(err, torus.ErrCorrupt) {
					t.Fatal(err)
				}
			}
		}
	})
}

// fakeSocket is the kernel's end of a Conn: a datagram socketpair; serve
// answers each request it reads with the datagrams reply returns.
func fakeSocket(t *testing.T, reply func(req []byte) [][]byte) *Conn {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1<<16)
		for {
			n, err := unix.Read(fds[1], buf)
			if err != nil || n == 0 {
				return
			}
			for _, d := range reply(append([]byte(nil), buf[:n]...)) {
				if _, err := unix.Write(fds[1], d); err != nil {
					return
				}
			}
		}
	}()
	c := newConn(fds[0])
	c.family = testFamily
	t.Cleanup(func() {
		c.Close()
		unix.Shutdown(fds[1], unix.SHUT_RDWR)
		<-done
		unix.Close(fds[1])
	})
	return c
}

// ack is the kernel's NLMSG_ERROR for req with errno (0: the ack).
func ack(req []byte, errno unix.Errno) []byte {
	b := make([]byte, 16, 36)
	ne.PutUint32(b[0:], 36)
	ne.PutUint16(b[4:], unix.NLMSG_ERROR)
	copy(b[8:12], req[8:12]) // seq
	b = ne.AppendUint32(b, uint32(-int32(errno)))
	return append(b, req[:16]...)
}

// reply is a genl message answering req with cmd and attrs.
func reply(req []byte, cmd uint8, attrs []byte) []byte {
	b := make([]byte, 16)
	ne.PutUint32(b[0:], uint32(16+4+len(attrs)))
	ne.PutUint16(b[4:], testFamily)
	copy(b[8:12], req[8:12])
	b = append(b, cmd, 1, 0, 0)
	return append(b, attrs...)
}

// TestConnCalls runs Conn's calls against a fake kernel socket: the reply
// and the ack in separate datagrams, a stale reply of an earlier sequence
// number ignored, errnos classified, no answer bounded by ctx.
func TestConnCalls(t *testing.T) {
	littleEndian(t)
	ctx := context.Background()
	var mode string
	c := fakeSocket(t, func(req []byte) [][]byte {
		m, _ := ParseMessages(req)
		switch mode {
		case "connect":
			old := append([]byte(nil), req...)
			ne.PutUint32(old[8:], m[0].Seq-1) // a late answer to an earlier call
			idx := []byte{8, 0, attrIndex, 0, 6, 0, 0, 0}
			return [][]byte{reply(old, cmdConnect, []byte{8, 0, attrIndex, 0, 9, 0, 0, 0}), reply(req, cmdConnect, idx), ack(req, 0)}
		case "status":
			r := append([]byte(nil), statusReply[:64]...)
			copy(r[8:12], req[8:12])
			return [][]byte{append(r, ack(req, 0)...)} // one datagram
		case "busy":
			return [][]byte{ack(req, unix.EBUSY)}
		case "perm":
			return [][]byte{ack(req, unix.EPERM)}
		case "silent":
			return nil
		}
		return [][]byte{ack(req, 0)}
	})
	mode = "connect"
	if idx, err := c.Connect(ctx, Connect{Index: -1, Sockets: []int{3}, SizeBytes: 4096}); err != nil || idx != 6 {
		t.Fatalf("Connect: %d, %v; want 6", idx, err)
	}
	mode = "status"
	if devs, err := c.Status(ctx, -1); err != nil || len(devs) != 2 || !devs[1].Connected {
		t.Fatalf("Status: %+v, %v", devs, err)
	}
	mode = "ack"
	if err := c.Reconfigure(ctx, Reconfigure{Index: 3, SizeBytes: 8192}); err != nil {
		t.Fatalf("Reconfigure: %v", err)
	}
	if err := c.Disconnect(ctx, 3); err != nil {
		t.Fatalf("Disconnect: %v", err)
	}
	mode = "busy"
	if _, err := c.Connect(ctx, Connect{Index: 3, Sockets: []int{3}}); !errors.Is(err, torus.ErrInUse) || !errors.Is(err, unix.EBUSY) {
		t.Fatalf("EBUSY: %v, want ErrInUse", err)
	}
	mode = "perm"
	if err := c.Disconnect(ctx, 3); !errors.Is(err, torus.ErrPermission) {
		t.Fatalf("EPERM: %v, want ErrPermission", err)
	}
	mode = "silent"
	tctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := c.Status(tctx, -1); !errors.Is(err, torus.ErrUnavailable) || time.Since(start) > 5*time.Second {
		t.Fatalf("no answer: %v after %v, want ErrUnavailable at the deadline", err, time.Since(start))
	}
}
