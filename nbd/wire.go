package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// Magic numbers (doc/proto.md).
const (
	magicInit          = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpt           = 0x49484156454F5054 // "IHAVEOPT"
	magicOptReply      = 0x3e889045565a9
	magicRequest       = 0x25609513
	magicSimpleReply   = 0x67446698
	magicStructReply   = 0x668e33ef
	handshakeZeroesLen = 124
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle  = 1 << 0
	flagNoZeroes       = 1 << 1
	flagCFixedNewstyle = 1 << 0
	flagCNoZeroes      = 1 << 1
)

// Transmission flags.
const (
	tflagHasFlags        = 1 << 0
	tflagReadOnly        = 1 << 1
	tflagSendFlush       = 1 << 2
	tflagSendFUA         = 1 << 3
	tflagRotational      = 1 << 4
	tflagSendTrim        = 1 << 5
	tflagSendWriteZeroes = 1 << 6
	tflagSendDF          = 1 << 7
	tflagCanMultiConn    = 1 << 8
	tflagSendResize      = 1 << 9
	tflagSendCache       = 1 << 10
	tflagSendFastZero    = 1 << 11
)

// Options.
const (
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optPeekExport      = 4
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10
	optExtendedHeaders = 11
)

// Option replies.
const (
	repAck           = 1
	repServer        = 2
	repInfo          = 3
	repMetaContext   = 4
	repFlagError     = 1 << 31
	repErrUnsup      = repFlagError | 1
	repErrPolicy     = repFlagError | 2
	repErrInvalid    = repFlagError | 3
	repErrPlatform   = repFlagError | 4
	repErrTLSReqd    = repFlagError | 5
	repErrUnknown    = repFlagError | 6
	repErrShutdown   = repFlagError | 7
	repErrBlockSize  = repFlagError | 8
	repErrTooBig     = repFlagError | 9
	repErrExtHdrReqd = repFlagError | 10
)

// Info types for NBD_OPT_INFO / NBD_OPT_GO.
const (
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3
)

// Commands.
const (
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7
)

// Command flags.
const (
	cmdFlagFUA      = 1 << 0
	cmdFlagNoHole   = 1 << 1
	cmdFlagDF       = 1 << 2
	cmdFlagReqOne   = 1 << 3
	cmdFlagFastZero = 1 << 4
)

// Structured reply flags and types.
const (
	replyFlagDone        = 1 << 0
	replyTypeNone        = 0
	replyTypeOffsetData  = 1
	replyTypeOffsetHole  = 2
	replyTypeBlockStatus = 5
	replyTypeError       = 1<<15 | 1
	replyTypeErrorOffset = 1<<15 | 2
)

// NBD error values.
const (
	errPerm      = 1
	errIO        = 5
	errNoMem     = 12
	errInval     = 22
	errNoSpc     = 28
	errOverflow  = 75
	errNotSup    = 95
	errShutdown  = 108
	stateHole    = 1 << 0
	stateZero    = 1 << 1
	metaAllocID  = 1
	metaAllocCtx = "base:allocation"
)

// Limits.
const (
	// MaxRequestSize is the largest READ or WRITE served (and the maximum
	// block size advertised): 32 MiB.
	MaxRequestSize = 32 << 20
	// PreferredBlockSize is the advertised preferred block size.
	PreferredBlockSize = 4096
	// maxOptionLen is the largest option payload parsed; longer ones are
	// discarded and refused.
	maxOptionLen = 64 << 10
	// maxOptionDiscard is the largest option payload discarded before the
	// server gives up on the client and hangs up.
	maxOptionDiscard = 16 << 20
	// maxString is the protocol's limit for names and messages.
	maxString = 4096
	// maxMetaQueries bounds the queries of one meta-context option.
	maxMetaQueries = 128
	// maxDescriptors bounds the extents in one BLOCK_STATUS reply.
	maxDescriptors = 16384
)

// errBadMagic reports a request or option that does not start with the
// expected magic: the stream cannot be decoded further.
var errBadMagic = errors.New("nbd: bad magic")

// errMalformed reports a syntactically invalid option payload.
var errMalformed = errors.New("nbd: malformed option")

// request is a decoded transmission request header (28 bytes).
type request struct {
	flags  uint16
	typ    uint16
	handle uint64
	offset uint64
	length uint32
}

const requestLen = 28

// decodeRequest decodes a request header.
func decodeRequest(b []byte) (request, error) {
	if len(b) < requestLen {
		return request{}, io.ErrUnexpectedEOF
	}
	if binary.BigEndian.Uint32(b[0:4]) != magicRequest {
		return request{}, fmt.Errorf("%w: request magic %#x", errBadMagic, binary.BigEndian.Uint32(b[0:4]))
	}
	return request{
		flags:  binary.BigEndian.Uint16(b[4:6]),
		typ:    binary.BigEndian.Uint16(b[6:8]),
		handle: binary.BigEndian.Uint64(b[8:16]),
		offset: binary.BigEndian.Uint64(b[16:24]),
		length: binary.BigEndian.Uint32(b[24:28]),
	}, nil
}

// encode appends the wire form of r to b.
func (r request) encode(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, magicRequest)
	b = binary.BigEndian.AppendUint16(b, r.flags)
	b = binary.BigEndian.AppendUint16(b, r.typ)
	b = binary.BigEndian.AppendUint64(b, r.handle)
	b = binary.BigEndian.AppendUint64(b, r.offset)
	return binary.BigEndian.AppendUint32(b, r.length)
}

// option is one option request of the handshake.
type option struct {
	code uint32
	data []byte
	// tooLong: the payload exceeded maxOptionLen and was discarded; data
	// is nil.
	tooLong bool
}

const optionHeaderLen = 16

// readOption reads one option. Payloads longer than maxOptionLen (up to
// maxOptionDiscard) are read and discarded, leaving tooLong set; longer
// ones, or a bad magic, are an error that ends the session.
func readOption(r io.Reader) (option, error) {
	var h [optionHeaderLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return option{}, err
	}
	if m := binary.BigEndian.Uint64(h[0:8]); m != magicOpt {
		return option{}, fmt.Errorf("%w: option magic %#x", errBadMagic, m)
	}
	o := option{code: binary.BigEndian.Uint32(h[8:12])}
	n := binary.BigEndian.Uint32(h[12:16])
	if n > maxOptionLen {
		if n > maxOptionDiscard {
			return option{}, fmt.Errorf("nbd: option %d payload of %d bytes is too long", o.code, n)
		}
		if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
			return option{}, err
		}
		o.tooLong = true
		return o, nil
	}
	o.data = make([]byte, n)
	if _, err := io.ReadFull(r, o.data); err != nil {
		return option{}, err
	}
	return o, nil
}

// appendOption appends an option request (client side).
func appendOption(b []byte, code uint32, data []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, magicOpt)
	b = binary.BigEndian.AppendUint32(b, code)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// appendOptReply appends an option reply.
func appendOptReply(b []byte, code, typ uint32, data []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, magicOptReply)
	b = binary.BigEndian.AppendUint32(b, code)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// reader walks an option payload.
type reader struct {
	b   []byte
	err error
}

func (r *reader) u16() uint16 {
	if r.err != nil || len(r.b) < 2 {
		r.err = errMalformed
		return 0
	}
	v := binary.BigEndian.Uint16(r.b)
	r.b = r.b[2:]
	return v
}

func (r *reader) u32() uint32 {
	if r.err != nil || len(r.b) < 4 {
		r.err = errMalformed
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

// str reads a string of n bytes, which must be valid UTF-8 without NUL
// and at most maxString bytes.
func (r *reader) str(n uint32) string {
	if r.err != nil || n > maxString || uint64(len(r.b)) < uint64(n) {
		r.err = errMalformed
		return ""
	}
	s := r.b[:n]
	r.b = r.b[n:]
	if !validString(s) {
		r.err = errMalformed
		return ""
	}
	return string(s)
}

func validString(s []byte) bool {
	if !utf8.Valid(s) {
		return false
	}
	for _, c := range s {
		if c == 0 {
			return false
		}
	}
	return true
}

// infoRequest is the payload of NBD_OPT_INFO and NBD_OPT_GO.
type infoRequest struct {
	name  string
	infos []uint16
}

// parseInfoRequest decodes an INFO/GO payload.
func parseInfoRequest(data []byte) (infoRequest, error) {
	r := reader{b: data}
	var q infoRequest
	q.name = r.str(r.u32())
	n := r.u16()
	if r.err == nil && len(r.b) != 2*int(n) {
		return infoRequest{}, errMalformed
	}
	for i := 0; i < int(n) && r.err == nil; i++ {
		q.infos = append(q.infos, r.u16())
	}
	if r.err != nil {
		return infoRequest{}, r.err
	}
	return q, nil
}

// appendInfoRequest encodes an INFO/GO payload (client side).
func appendInfoRequest(b []byte, q infoRequest) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(q.name)))
	b = append(b, q.name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(q.infos)))
	for _, i := range q.infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

// metaRequest is the payload of NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT.
type metaRequest struct {
	name    string
	queries []string
}

// parseMetaRequest decodes a meta-context payload.
func parseMetaRequest(data []byte) (metaRequest, error) {
	r := reader{b: data}
	var q metaRequest
	q.name = r.str(r.u32())
	n := r.u32()
	if r.err == nil && n > maxMetaQueries {
		return metaRequest{}, fmt.Errorf("%w: %d queries", errMalformed, n)
	}
	for i := uint32(0); i < n && r.err == nil; i++ {
		q.queries = append(q.queries, r.str(r.u32()))
	}
	if r.err == nil && len(r.b) != 0 {
		r.err = errMalformed
	}
	if r.err != nil {
		return metaRequest{}, r.err
	}
	return q, nil
}

// appendMetaRequest encodes a meta-context payload (client side).
func appendMetaRequest(b []byte, q metaRequest) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(q.name)))
	b = append(b, q.name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(q.queries)))
	for _, s := range q.queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	return b
}

// appendSimpleReply appends a simple reply header.
func appendSimpleReply(b []byte, errno uint32, handle uint64) []byte {
	b = binary.BigEndian.AppendUint32(b, magicSimpleReply)
	b = binary.BigEndian.AppendUint32(b, errno)
	return binary.BigEndian.AppendUint64(b, handle)
}

// appendChunk appends a structured reply chunk header for a payload of n
// bytes.
func appendChunk(b []byte, flags, typ uint16, handle uint64, n uint32) []byte {
	b = binary.BigEndian.AppendUint32(b, magicStructReply)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, handle)
	return binary.BigEndian.AppendUint32(b, n)
}

// appendErrorChunk appends a final NBD_REPLY_TYPE_ERROR chunk with msg.
func appendErrorChunk(b []byte, handle uint64, errno uint32, msg string) []byte {
	if len(msg) > maxString {
		msg = msg[:maxString]
	}
	for !utf8.ValidString(msg) { // cut inside a rune: trim the tail
		msg = msg[:len(msg)-1]
	}
	b = appendChunk(b, replyFlagDone, replyTypeError, handle, uint32(6+len(msg)))
	b = binary.BigEndian.AppendUint32(b, errno)
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...)
}

func binaryAppendU32(b []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(b, v) }
func binaryAppendU64(b []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(b, v) }
