package peer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/torus-storage/torus"
)

// Wire constants; see docs/design/peer-protocol.md.
const (
	// Magic opens every frame: "TRSP" read as a little-endian u32.
	Magic uint32 = 0x50535254
	// Version is the newest protocol version this package speaks.
	// Version 2: a Sync response carries the segment's durable length.
	// Version 3: op ReadV (several ranges in one request). A frame
	// carries the version that introduced its op (Op.Version), so ops 1-8
	// are still sent as version 2 and a version-2 daemon serves them.
	Version uint8 = 3
	// MinVersion is the oldest version accepted: a server answers each
	// frame with the version of its request.
	MinVersion uint8 = 2
	// HeaderSize is the size of a frame header in bytes.
	HeaderSize = 24
	// MaxData is the largest Append payload or ReadAt length.
	MaxData = 16 << 20
	// MaxBody is the largest frame body accepted: MaxData and room for a
	// request's fixed fields or a response's status and message.
	MaxBody = MaxData + 2048
	// MaxMessage is the longest error message carried by a response;
	// longer messages are truncated.
	MaxMessage = 1024

	// FlagResponse marks a response frame.
	FlagResponse uint16 = 1

	segIDSize   = 25
	segInfoSize = segIDSize + 16
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Op is a frame's operation: one per torus.PeerService method.
type Op uint8

// Operations.
const (
	OpAppend Op = 1
	OpSync   Op = 2
	OpReadAt Op = 3
	OpStat   Op = 4
	OpList   Op = 5
	OpDelete Op = 6
	OpFence  Op = 7
	OpUsage  Op = 8
	// OpReadV reads several ranges in one request (version 3).
	OpReadV Op = 9
)

var opNames = [...]string{"", "append", "sync", "readat", "stat", "list", "delete", "fence", "usage", "readv"}

// Valid reports whether o is a known op.
func (o Op) Valid() bool { return o >= OpAppend && o <= OpReadV }

// Version is the protocol version that introduced o: the version byte of
// the frames that carry it.
func (o Op) Version() uint8 {
	if o == OpReadV {
		return 3
	}
	return 2
}

// validIn reports whether o is a known op in frames of version v: each op
// travels in frames of exactly the version that introduced it.
func (o Op) validIn(v uint8) bool { return o.Valid() && o.Version() == v }

// String names the op.
func (o Op) String() string {
	if o.Valid() {
		return opNames[o]
	}
	return fmt.Sprintf("op%d", uint8(o))
}

// ordered reports whether requests of this op execute in arrival order on
// one connection (the mutating ops).
func (o Op) ordered() bool {
	return o == OpAppend || o == OpSync || o == OpDelete || o == OpFence
}

// Header is a decoded frame header.
type Header struct {
	Version uint8
	Op      Op
	Flags   uint16
	ID      uint64
	Length  uint32 // body length
	CRC     uint32 // CRC32C of the body
}

// Response reports whether the frame is a response.
func (h Header) Response() bool { return h.Flags&FlagResponse != 0 }

// Protocol errors. They wrap torus.ErrInvalid or torus.ErrCorrupt.
var (
	errBadMagic = fmt.Errorf("%w: peer: bad frame magic", torus.ErrInvalid)
	errBadFlags = fmt.Errorf("%w: peer: unknown frame flags", torus.ErrInvalid)
	errBadCRC   = fmt.Errorf("%w: peer: frame body checksum mismatch", torus.ErrCorrupt)
)

// fatalHeaderError reports whether a header error leaves the stream
// unreadable, so that the request cannot even be answered.
func fatalHeaderError(err error) bool {
	return errors.Is(err, errBadMagic) || errors.Is(err, errBadFlags)
}

// PutHeader encodes h into b[:HeaderSize].
func PutHeader(b []byte, h Header) {
	_ = b[HeaderSize-1]
	binary.LittleEndian.PutUint32(b[0:], Magic)
	b[4] = h.Version
	b[5] = byte(h.Op)
	binary.LittleEndian.PutUint16(b[6:], h.Flags)
	binary.LittleEndian.PutUint64(b[8:], h.ID)
	binary.LittleEndian.PutUint32(b[16:], h.Length)
	binary.LittleEndian.PutUint32(b[20:], h.CRC)
}

// ParseHeader decodes a header from b (at least HeaderSize bytes) and checks
// it: magic, flags, then version, op and length against maxBody. When the
// error is about version, op or length, the returned Header is still filled
// in so the request can be answered by ID.
func ParseHeader(b []byte, maxBody uint32) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("%w: peer: short frame header (%d bytes)", torus.ErrInvalid, len(b))
	}
	if binary.LittleEndian.Uint32(b[0:]) != Magic {
		return Header{}, errBadMagic
	}
	h := Header{
		Version: b[4],
		Op:      Op(b[5]),
		Flags:   binary.LittleEndian.Uint16(b[6:]),
		ID:      binary.LittleEndian.Uint64(b[8:]),
		Length:  binary.LittleEndian.Uint32(b[16:]),
		CRC:     binary.LittleEndian.Uint32(b[20:]),
	}
	if h.Flags&^FlagResponse != 0 {
		return Header{}, errBadFlags
	}
	switch {
	case h.Version < MinVersion || h.Version > Version:
		return h, fmt.Errorf("%w: peer: unsupported protocol version %d (want %d to %d)", torus.ErrInvalid, h.Version, MinVersion, Version)
	case !h.Op.validIn(h.Version):
		return h, fmt.Errorf("%w: peer: unknown op %d in a version %d frame", torus.ErrInvalid, uint8(h.Op), h.Version)
	case h.Length > maxBody:
		return h, fmt.Errorf("%w: peer: frame body of %d bytes exceeds the limit of %d", torus.ErrInvalid, h.Length, maxBody)
	}
	return h, nil
}

// DecodeFrame decodes one whole frame from the start of b and checks its
// CRC. It returns the header, the body (a sub-slice of b) and the bytes
// after the frame. It needs the whole frame in b (io.ErrUnexpectedEOF
// otherwise).
func DecodeFrame(b []byte, maxBody uint32) (h Header, body, rest []byte, err error) {
	h, err = ParseHeader(b, maxBody)
	if err != nil {
		return h, nil, nil, err
	}
	if uint64(len(b)-HeaderSize) < uint64(h.Length) {
		return h, nil, nil, fmt.Errorf("%w: peer: frame truncated: %w", torus.ErrInvalid, io.ErrUnexpectedEOF)
	}
	body = b[HeaderSize : HeaderSize+int(h.Length)]
	if crc32.Checksum(body, castagnoli) != h.CRC {
		return h, nil, nil, errBadCRC
	}
	return h, body, b[HeaderSize+int(h.Length):], nil
}

// ReadFrame reads one frame from r into a newly allocated body of exactly
// the declared length (never more than maxBody). hdr is scratch space of at
// least HeaderSize bytes. Errors from r are returned as they are (io.EOF at
// a clean frame boundary); a header that parses but fails a check is
// returned with its Header filled in.
func ReadFrame(r io.Reader, hdr []byte, maxBody uint32) (Header, []byte, error) {
	if _, err := io.ReadFull(r, hdr[:HeaderSize]); err != nil {
		return Header{}, nil, err
	}
	h, err := ParseHeader(hdr, maxBody)
	if err != nil {
		return h, nil, err
	}
	body := make([]byte, h.Length)
	crc, err := readBody(r, body)
	if err != nil {
		return h, nil, err
	}
	if crc != h.CRC {
		return h, nil, errBadCRC
	}
	return h, body, nil
}

// Request is a decoded request body. Which fields are used depends on Op.
type Request struct {
	Op     Op
	Epoch  uint64          // Append, Sync, Fence
	Seg    torus.SegmentID // Append, Sync, ReadAt, Stat, Delete
	Off    int64           // Append, ReadAt
	Length uint32          // ReadAt
	Volume uint64          // List, Fence
	Data   []byte          // Append; aliases the decoded body
	// List pages: entries after After (in SegmentID order; the zero ID
	// means from the start), at most Limit of them (0: MaxListPage).
	After torus.SegmentID
	Limit uint32
	// ReadV: the ranges, at most MaxReadVRanges of them and at most
	// MaxData bytes in all.
	Ranges []Range
}

// Range is one range of a ReadV request.
type Range struct {
	Seg    torus.SegmentID
	Off    int64
	Length uint32
}

// ReadV limits: a request names at most MaxReadVRanges ranges of at most
// MaxData bytes in all, so that its response fits in MaxBody. Client.ReadV
// splits longer vectors into several requests.
const MaxReadVRanges = 256

// rangeSize is a ReadV request's bytes per range; rangeStatusSize a
// response's.
const (
	rangeSize       = segIDSize + 12
	rangeStatusSize = 5
)

// MaxListPage is the most entries one List response carries (~2.6 MiB);
// Client.List fetches pages until the daemon says there are no more.
const MaxListPage = 64 << 10

func putSeg(b []byte, s torus.SegmentID) []byte {
	b = binary.LittleEndian.AppendUint64(b, s.Volume)
	b = binary.LittleEndian.AppendUint64(b, s.Epoch)
	b = binary.LittleEndian.AppendUint64(b, s.Seq)
	return append(b, byte(s.Kind))
}

func getSeg(b []byte) torus.SegmentID {
	return torus.SegmentID{
		Volume: binary.LittleEndian.Uint64(b[0:]),
		Epoch:  binary.LittleEndian.Uint64(b[8:]),
		Seq:    binary.LittleEndian.Uint64(b[16:]),
		Kind:   torus.SegmentKind(b[24]),
	}
}

func putInfo(b []byte, si torus.SegmentInfo) []byte {
	b = putSeg(b, si.ID)
	b = binary.LittleEndian.AppendUint64(b, uint64(si.Length))
	return binary.LittleEndian.AppendUint64(b, uint64(si.Synced))
}

func getInfo(b []byte) torus.SegmentInfo {
	return torus.SegmentInfo{
		ID:     getSeg(b),
		Length: int64(binary.LittleEndian.Uint64(b[segIDSize:])),
		Synced: int64(binary.LittleEndian.Uint64(b[segIDSize+8:])),
	}
}

// AppendRequestFixed appends the fixed part of r's body to b. For Append the
// data (r.Data) follows it in the body and is not appended, so callers can
// send it without copying; for every other op the result is the whole body.
func AppendRequestFixed(b []byte, r Request) []byte {
	switch r.Op {
	case OpAppend:
		b = binary.LittleEndian.AppendUint64(b, r.Epoch)
		b = putSeg(b, r.Seg)
		b = binary.LittleEndian.AppendUint64(b, uint64(r.Off))
	case OpSync:
		b = binary.LittleEndian.AppendUint64(b, r.Epoch)
		b = putSeg(b, r.Seg)
	case OpReadAt:
		b = putSeg(b, r.Seg)
		b = binary.LittleEndian.AppendUint64(b, uint64(r.Off))
		b = binary.LittleEndian.AppendUint32(b, r.Length)
	case OpStat, OpDelete:
		b = putSeg(b, r.Seg)
	case OpList:
		b = binary.LittleEndian.AppendUint64(b, r.Volume)
		b = putSeg(b, r.After)
		b = binary.LittleEndian.AppendUint32(b, r.Limit)
	case OpFence:
		b = binary.LittleEndian.AppendUint64(b, r.Volume)
		b = binary.LittleEndian.AppendUint64(b, r.Epoch)
	case OpUsage:
	case OpReadV:
		b = binary.LittleEndian.AppendUint32(b, uint32(len(r.Ranges)))
		for _, g := range r.Ranges {
			b = putSeg(b, g.Seg)
			b = binary.LittleEndian.AppendUint64(b, uint64(g.Off))
			b = binary.LittleEndian.AppendUint32(b, g.Length)
		}
	}
	return b
}

// EncodeRequest returns the whole body of r (for Append, with a copy of
// r.Data).
func EncodeRequest(r Request) []byte {
	b := AppendRequestFixed(nil, r)
	if r.Op == OpAppend {
		b = append(b, r.Data...)
	}
	return b
}

func malformed(op Op, format string, args ...any) error {
	return fmt.Errorf("%w: peer: malformed %s body: %s", torus.ErrInvalid, op, fmt.Sprintf(format, args...))
}

// DecodeRequest decodes the body of a request of the given op. Append's
// Data aliases body. Errors wrap torus.ErrInvalid.
func DecodeRequest(op Op, body []byte) (Request, error) {
	r := Request{Op: op}
	want := -1 // exact body length; -1 for Append
	switch op {
	case OpAppend:
		if len(body) < 8+segIDSize+8 {
			return Request{}, malformed(op, "%d bytes, want at least %d", len(body), 8+segIDSize+8)
		}
		if len(body)-(8+segIDSize+8) > MaxData {
			return Request{}, malformed(op, "%d data bytes exceed %d", len(body)-(8+segIDSize+8), MaxData)
		}
	case OpSync:
		want = 8 + segIDSize
	case OpReadAt:
		want = segIDSize + 12
	case OpStat, OpDelete:
		want = segIDSize
	case OpList:
		want = 8 + segIDSize + 4
	case OpFence:
		want = 16
	case OpUsage:
		want = 0
	case OpReadV:
		if len(body) < 4 {
			return Request{}, malformed(op, "%d bytes, want at least 4", len(body))
		}
		count := binary.LittleEndian.Uint32(body)
		if count > MaxReadVRanges {
			return Request{}, malformed(op, "%d ranges exceed the limit of %d", count, MaxReadVRanges)
		}
		want = 4 + int(count)*rangeSize
	default:
		return Request{}, fmt.Errorf("%w: peer: unknown op %d", torus.ErrInvalid, uint8(op))
	}
	if want >= 0 && len(body) != want {
		return Request{}, malformed(op, "%d bytes, want %d", len(body), want)
	}
	switch op {
	case OpAppend:
		r.Epoch = binary.LittleEndian.Uint64(body)
		r.Seg = getSeg(body[8:])
		r.Off = int64(binary.LittleEndian.Uint64(body[8+segIDSize:]))
		r.Data = body[8+segIDSize+8:]
	case OpSync:
		r.Epoch = binary.LittleEndian.Uint64(body)
		r.Seg = getSeg(body[8:])
	case OpReadAt:
		r.Seg = getSeg(body)
		r.Off = int64(binary.LittleEndian.Uint64(body[segIDSize:]))
		r.Length = binary.LittleEndian.Uint32(body[segIDSize+8:])
		if r.Length > MaxData {
			return Request{}, malformed(op, "length %d exceeds %d", r.Length, MaxData)
		}
	case OpStat, OpDelete:
		r.Seg = getSeg(body)
	case OpList:
		r.Volume = binary.LittleEndian.Uint64(body)
		r.After = getSeg(body[8:])
		r.Limit = binary.LittleEndian.Uint32(body[8+segIDSize:])
		if r.Limit > MaxListPage {
			return Request{}, malformed(op, "page of %d entries exceeds %d", r.Limit, MaxListPage)
		}
	case OpFence:
		r.Volume = binary.LittleEndian.Uint64(body)
		r.Epoch = binary.LittleEndian.Uint64(body[8:])
	case OpReadV:
		r.Ranges = make([]Range, binary.LittleEndian.Uint32(body))
		var total uint64
		for i := range r.Ranges {
			b := body[4+i*rangeSize:]
			g := Range{Seg: getSeg(b), Off: int64(binary.LittleEndian.Uint64(b[segIDSize:])),
				Length: binary.LittleEndian.Uint32(b[segIDSize+8:])}
			if g.Off < 0 {
				return Request{}, malformed(op, "range %d: negative offset %d", i, g.Off)
			}
			if total += uint64(g.Length); total > MaxData {
				return Request{}, malformed(op, "ranges of more than %d bytes in all", MaxData)
			}
			r.Ranges[i] = g
		}
	}
	if r.Off < 0 {
		return Request{}, malformed(op, "negative offset %d", r.Off)
	}
	return r, nil
}

// Status is a response's outcome; each maps to one torus sentinel.
type Status uint8

// Status codes (docs/design/peer-protocol.md).
const (
	StatusOK          Status = 0
	StatusEOF         Status = 1
	StatusFenced      Status = 2
	StatusNoSpace     Status = 3
	StatusNotExist    Status = 4
	StatusConflict    Status = 5
	StatusCorrupt     Status = 6
	StatusInvalid     Status = 7
	StatusClosed      Status = 8
	StatusUnavailable Status = 9
	StatusExist       Status = 10
	StatusOutOfRange  Status = 11
	StatusReadOnly    Status = 12
	StatusLocked      Status = 13
	StatusInUse       Status = 14
	StatusPermission  Status = 15
	StatusGeneric     Status = 255
)

// ErrRemote is wrapped by remote errors that fall in no torus class.
var ErrRemote = errors.New("peer: remote error")

// statusSentinels lists, in order of precedence, which sentinel each status
// stands for.
var statusSentinels = []struct {
	s   Status
	err error
}{
	{StatusEOF, io.EOF},
	{StatusFenced, torus.ErrFenced},
	{StatusNoSpace, torus.ErrNoSpace},
	{StatusNotExist, torus.ErrNotExist},
	{StatusConflict, torus.ErrConflict},
	{StatusCorrupt, torus.ErrCorrupt},
	{StatusInvalid, torus.ErrInvalid},
	{StatusClosed, torus.ErrClosed},
	{StatusUnavailable, torus.ErrUnavailable},
	{StatusExist, torus.ErrExist},
	{StatusOutOfRange, torus.ErrOutOfRange},
	{StatusReadOnly, torus.ErrReadOnly},
	{StatusLocked, torus.ErrLocked},
	{StatusInUse, torus.ErrInUse},
	{StatusPermission, torus.ErrPermission},
	{StatusUnavailable, context.Canceled},
	{StatusUnavailable, context.DeadlineExceeded},
}

// numStatuses is the number of statusSentinels entries that name a status
// of their own (the rest map other errors onto those statuses).
const numStatuses = 15

// StatusOf classifies err for the wire.
func StatusOf(err error) Status {
	if err == nil {
		return StatusOK
	}
	for _, e := range statusSentinels {
		if errors.Is(err, e.err) {
			return e.s
		}
	}
	return StatusGeneric
}

// Err returns the sentinel the status stands for: nil for StatusOK, io.EOF,
// a torus sentinel, or ErrRemote for StatusGeneric and unknown codes.
func (s Status) Err() error {
	if s == StatusOK {
		return nil
	}
	for _, e := range statusSentinels[:numStatuses] {
		if e.s == s {
			return e.err
		}
	}
	return ErrRemote
}

// Response is a decoded response body. Which fields are used depends on the
// op and the status.
type Response struct {
	Status Status
	Msg    string
	Data   []byte              // ReadAt: the bytes read; aliases the body
	Info   torus.SegmentInfo   // Stat
	List   []torus.SegmentInfo // List
	Usage  torus.Usage         // Usage
	Synced int64               // Sync: the segment's durable length
	More   bool                // List: entries after the last one remain
	// ReadV (status OK): one entry per requested range, in order; Data
	// holds their bytes one after another.
	Ranges []RangeStatus
}

// RangeStatus is one range's outcome in a ReadV response: its status (as
// a ReadAt's: StatusEOF with N below the range's length when the segment
// is shorter) and the bytes read. StatusOK means N is the whole length.
type RangeStatus struct {
	Status Status
	N      uint32
}

// AppendResponse appends the body of r, the response to an op, to b.
func AppendResponse(b []byte, op Op, r Response) []byte {
	msg := r.Msg
	if len(msg) > MaxMessage {
		msg = msg[:MaxMessage]
	}
	b = append(b, byte(r.Status))
	b = binary.LittleEndian.AppendUint16(b, uint16(len(msg)))
	b = append(b, msg...)
	if op == OpReadAt {
		return append(b, r.Data...)
	}
	if r.Status != StatusOK {
		return b
	}
	if op == OpReadV {
		return append(appendReadVTable(b, r.Ranges), r.Data...)
	}
	switch op {
	case OpStat:
		b = putInfo(b, r.Info)
	case OpList:
		b = binary.LittleEndian.AppendUint32(b, uint32(len(r.List)))
		for _, si := range r.List {
			b = putInfo(b, si)
		}
		more := byte(0)
		if r.More {
			more = 1
		}
		b = append(b, more)
	case OpUsage:
		b = binary.LittleEndian.AppendUint64(b, uint64(r.Usage.Used))
		b = binary.LittleEndian.AppendUint64(b, uint64(r.Usage.Capacity))
	case OpSync:
		b = binary.LittleEndian.AppendUint64(b, uint64(r.Synced))
	}
	return b
}

// DecodeResponse decodes the body of a response to op. Data aliases body.
// Errors wrap torus.ErrInvalid.
func DecodeResponse(op Op, body []byte) (Response, error) {
	if !op.Valid() {
		return Response{}, fmt.Errorf("%w: peer: unknown op %d", torus.ErrInvalid, uint8(op))
	}
	if len(body) < 3 {
		return Response{}, malformed(op, "response of %d bytes", len(body))
	}
	r := Response{Status: Status(body[0])}
	n := int(binary.LittleEndian.Uint16(body[1:]))
	if n > MaxMessage || 3+n > len(body) {
		return Response{}, malformed(op, "message of %d bytes", n)
	}
	r.Msg = string(body[3 : 3+n])
	p := body[3+n:]
	if op == OpReadAt {
		if len(p) > MaxData {
			return Response{}, malformed(op, "%d data bytes", len(p))
		}
		r.Data = p
		return r, nil
	}
	if op == OpReadV && r.Status == StatusOK {
		ranges, n, total, err := decodeReadVTable(p)
		if err != nil {
			return Response{}, err
		}
		if uint64(len(p)-n) != total {
			return Response{}, malformed(op, "%d data bytes for ranges of %d", len(p)-n, total)
		}
		r.Ranges, r.Data = ranges, p[n:]
		return r, nil
	}
	want := 0
	if r.Status == StatusOK {
		switch op {
		case OpStat:
			want = segInfoSize
		case OpUsage:
			want = 16
		case OpSync:
			want = 8
		case OpList:
			if len(p) < 4 {
				return Response{}, malformed(op, "short list payload")
			}
			count := binary.LittleEndian.Uint32(p)
			if count > MaxListPage || uint64(len(p)-4) != uint64(count)*segInfoSize+1 {
				return Response{}, malformed(op, "list of %d entries in %d bytes", count, len(p)-4)
			}
			switch p[len(p)-1] {
			case 0:
			case 1:
				r.More = true
			default:
				return Response{}, malformed(op, "list more flag %d", p[len(p)-1])
			}
			r.List = make([]torus.SegmentInfo, count)
			for i := range r.List {
				r.List[i] = getInfo(p[4+i*segInfoSize:])
			}
			return r, nil
		}
	}
	if len(p) != want {
		return Response{}, malformed(op, "payload of %d bytes, want %d", len(p), want)
	}
	switch {
	case r.Status != StatusOK:
	case op == OpStat:
		r.Info = getInfo(p)
	case op == OpUsage:
		r.Usage = torus.Usage{
			Used:     int64(binary.LittleEndian.Uint64(p)),
			Capacity: int64(binary.LittleEndian.Uint64(p[8:])),
		}
	case op == OpSync:
		r.Synced = int64(binary.LittleEndian.Uint64(p))
		if r.Synced < 0 {
			return Response{}, malformed(op, "negative durable length %d", r.Synced)
		}
	}
	return r, nil
}

// appendReadVTable appends a ReadV response's range table to b.
func appendReadVTable(b []byte, ranges []RangeStatus) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(ranges)))
	for _, g := range ranges {
		b = append(b, byte(g.Status))
		b = binary.LittleEndian.AppendUint32(b, g.N)
	}
	return b
}

// decodeReadVTable decodes the range table at the start of a successful
// ReadV response's payload p: the entries, the table's size in bytes and
// the data bytes it announces. It checks what it can without the request
// (at most MaxReadVRanges entries, at most MaxData bytes in all); the
// client matches the entries with the ranges it asked.
func decodeReadVTable(p []byte) ([]RangeStatus, int, uint64, error) {
	if len(p) < 4 {
		return nil, 0, 0, malformed(OpReadV, "short range table")
	}
	count := binary.LittleEndian.Uint32(p)
	if count > MaxReadVRanges {
		return nil, 0, 0, malformed(OpReadV, "%d ranges exceed the limit of %d", count, MaxReadVRanges)
	}
	n := 4 + int(count)*rangeStatusSize
	if len(p) < n {
		return nil, 0, 0, malformed(OpReadV, "table of %d ranges in %d bytes", count, len(p)-4)
	}
	out := make([]RangeStatus, count)
	var total uint64
	for i := range out {
		b := p[4+i*rangeStatusSize:]
		out[i] = RangeStatus{Status: Status(b[0]), N: binary.LittleEndian.Uint32(b[1:])}
		if total += uint64(out[i].N); total > MaxData {
			return nil, 0, 0, malformed(OpReadV, "ranges of more than %d bytes in all", MaxData)
		}
	}
	return out, n, total, nil
}

// frame builds a whole frame (header and body) for a response or request.
func frame(op Op, flags uint16, id uint64, body []byte) []byte {
	b := make([]byte, HeaderSize, HeaderSize+len(body))
	PutHeader(b, Header{Version: op.Version(), Op: op, Flags: flags, ID: id,
		Length: uint32(len(body)), CRC: crc32.Checksum(body, castagnoli)})
	return append(b, body...)
}
